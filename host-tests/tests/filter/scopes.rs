//! Scopes and shadow token budgets through the compiled module: a user and a teammate spend
//! one team limit and one team token budget together and are refused together while another
//! team is not; a request without its team is refused with 400; the record names each scope by
//! its hash; a shadow token budget lets a spent caller through, counted `would_deny`.

use std::time::Duration;

use host_tests::{Harness, Request, Response};

use crate::support::{json, number, tollgate_with};

/// Each user 10 requests a minute and 1000 tokens a day; each team (`x-team-id`) 3 requests
/// a minute and 300 tokens a day.
const POLICY: &str = r#"{"hash_secret":"s","tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":10,"per":"minute","name":"user"},
              {"requests":3,"per":"minute","name":"team","scope":{"header":"x-team-id"}}],
    "tokens":[{"tokens":1000,"per":"day","name":"user-tokens"},
              {"tokens":300,"per":"day","name":"team-tokens","scope":{"header":"x-team-id"}}]}],
    "llm":{"default_max_tokens":50}}"#;

fn get(h: &Harness, user: &str, team: Option<&str>) -> host_tests::Outcome {
    let mut headers = vec![(":method", "GET"), (":path", "/api"), ("x-user-id", user)];
    if let Some(t) = team {
        headers.push(("x-team-id", t));
    }
    h.request(0, &headers).unwrap()
}

fn counter(h: &Harness, tier: &str, name: &str) -> i64 {
    h.advance(Duration::from_secs(1)).unwrap();
    h.metrics()
        .value(&format!("tollgate.{tier}.{name}"))
        .unwrap_or(0)
}

#[test]
fn teammates_spend_one_team_limit_together_and_another_team_is_not_refused() {
    let h = tollgate_with(2, POLICY);
    assert!(get(&h, "alice", Some("red")).is_continue());
    assert!(get(&h, "alice", Some("red")).is_continue());
    let last = get(&h, "bob", Some("red"));
    assert!(last.is_continue());
    assert_eq!(
        number(&last, "x-ratelimit-remaining-requests"),
        0,
        "{last:?}"
    );
    for user in ["alice", "bob"] {
        let out = get(&h, user, Some("red"));
        assert_eq!(out.status(), 429, "{out:?}");
        // The team limit decides, and the headers show it.
        assert_eq!(number(&out, "x-ratelimit-limit-requests"), 3);
        assert!(out.header("retry-after").is_some());
    }
    let carol = get(&h, "carol", Some("blue"));
    assert!(carol.is_continue(), "{carol:?}");
    // Bob's own limit lost nothing to his refusals: 10 - 1 (his one admitted) - 1 (this one).
    let bob = get(&h, "bob", Some("blue"));
    assert!(bob.is_continue());
    assert!(bob
        .header("ratelimit")
        .is_some_and(|v| v.contains(r#""user";r=8"#)));
}

#[test]
fn a_request_without_its_team_is_refused_with_the_reason() {
    let h = tollgate_with(1, POLICY);
    let out = get(&h, "alice", None);
    assert_eq!(out.status(), 400, "{out:?}");
    let body = json(&out);
    assert_eq!(body["error"], "missing_scope");
    assert_eq!(
        body["message"],
        "this request must carry header x-team-id (a limit of its tier counts against it)"
    );
    assert_eq!(counter(&h, "users", "missing_scope"), 1);
    assert_eq!(counter(&h, "users", "denied"), 0);
}

#[test]
fn the_record_names_each_scope_by_its_hash_never_its_identity() {
    let h = tollgate_with(1, POLICY);
    let mut s = h.stream(0).unwrap();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/"),
            ("x-user-id", "alice"),
            ("x-team-id", "alice"),
        ],
        true,
    )
    .unwrap();
    let props = s.record().unwrap().properties;
    let line = String::from_utf8(props.get(&["tollgate"]).unwrap().to_vec()).unwrap();
    let field = |name: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            .to_owned()
    };
    let (user, team) = (field("scope="), field("scope.x-team-id="));
    assert_eq!((user.len(), team.len()), (16, 16), "{line}");
    assert_ne!(user, team, "a team called alice is not the user alice");
    assert!(!line.contains("alice"), "{line}");
}

/// A chat call by `user` of `team` asking `max_tokens`, answered with `used` tokens in all.
fn chat(h: &Harness, user: &str, team: &str, max_tokens: u64, used: u64) -> host_tests::Outcome {
    let body = format!(r#"{{"model":"m","max_tokens":{max_tokens}}}"#);
    let answer =
        format!(r#"{{"choices":[],"usage":{{"prompt_tokens":0,"completion_tokens":{used}}}}}"#);
    let call = Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", user)
        .header("x-team-id", team)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(&body)
        .respond_with(
            Response::ok()
                .header("content-type", "application/json")
                .body_chunk(&answer),
        );
    h.send(0, &call).unwrap()
}

#[test]
fn teammates_spend_one_team_token_budget_together() {
    let h = tollgate_with(1, POLICY);
    // 120 + 120 of red's 300 tokens: each holds 100 + 8 and is charged 120.
    assert!(chat(&h, "alice", "red", 100, 120).is_continue());
    h.advance(Duration::from_secs(60)).unwrap(); // the request limits refill; tokens barely
    assert!(chat(&h, "bob", "red", 100, 120).is_continue());
    h.advance(Duration::from_secs(60)).unwrap();
    for user in ["alice", "bob"] {
        let out = chat(&h, user, "red", 100, 1);
        assert_eq!(out.status(), 429, "{user}: {out:?}");
        h.advance(Duration::from_secs(20)).unwrap();
    }
    let carol = chat(&h, "carol", "blue", 100, 1);
    assert!(carol.is_continue(), "{carol:?}");
}

#[test]
fn a_shadow_token_budget_lets_a_spent_caller_through_counted_would_deny() {
    let policy = r#"{"tiers":[{"name":"watch","mode":"shadow","identity":{"header":"x-user-id"},
        "tokens":[{"tokens":300,"per":"day"}]}],"llm":{"default_max_tokens":50}}"#;
    let h = tollgate_with(1, policy);
    for i in 0..5 {
        let out = chat(&h, "alice", "red", 100, 150);
        assert!(out.is_continue(), "call {i}: {out:?}");
        assert_eq!(out.status(), 200);
        assert!(
            out.header("x-ratelimit-remaining-tokens").is_none(),
            "{out:?}"
        );
    }
    // 150 + 150 charged of 300: the last three would have been refused, and took nothing.
    assert_eq!(counter(&h, "watch", "allowed"), 2);
    assert_eq!(counter(&h, "watch", "would_deny"), 3);
    assert_eq!(counter(&h, "watch", "denied"), 0);
    assert_eq!(counter(&h, "watch", "tokens_charged"), 300);
}

#[test]
fn a_shadow_tier_lets_a_request_without_its_scope_through_counted() {
    // Shadow mode refuses nothing, a missing scope included: the request goes on, counted
    // `missing_scope` and `would_deny`.
    let policy = r#"{"mode":"shadow","tiers":[{"name":"users","identity":{"header":"x-user-id"},
        "limits":[{"requests":3,"per":"minute","name":"team","scope":{"header":"x-team-id"}}]}]}"#;
    let h = tollgate_with(1, policy);
    let out = get(&h, "alice", None);
    assert!(out.is_continue(), "{out:?}");
    assert_eq!(counter(&h, "users", "missing_scope"), 1);
    assert_eq!(counter(&h, "users", "would_deny"), 1);
    assert_eq!(counter(&h, "users", "denied"), 0);
}
