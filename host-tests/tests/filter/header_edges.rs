//! Identity headers as clients really send them: repeated, mixed case, huge, not UTF-8. None may
//! trap the VM, and none may let a caller escape the limit.

use host_tests::{Harness, Request};

use crate::support::{json, tollgate_with, users_policy, TASK_API};

/// How many of `n` requests built by `request` get through worker `i % 2`.
fn admitted(h: &Harness, n: usize, request: impl Fn(usize) -> Request) -> usize {
    (0..n)
        .filter(|i| h.send(i % 2, &request(*i)).unwrap().is_continue())
        .count()
}

/// Counted against the tier whose identity was ambiguous (the second of three), with the
/// error's own text as the message.
#[test]
fn an_ambiguous_identity_is_counted_against_its_own_tier() {
    let h = tollgate_with(1, TASK_API);
    let out = h
        .request(0, &[("x-user-id", "alice"), ("x-user-id", "bob")])
        .unwrap();
    assert_eq!(
        json(&out)["message"],
        "identity header x-user-id must appear exactly once"
    );
    h.advance(std::time::Duration::from_secs(1)).unwrap();
    let counter = |tier: &str| {
        h.metrics()
            .value(&format!("tollgate.{tier}.ambiguous_identity"))
    };
    assert_eq!(counter("authenticated"), Some(1));
    assert_eq!(counter("premium"), Some(0));
    assert_eq!(counter("anonymous"), Some(0));
}

#[test]
fn a_repeated_identity_header_is_refused_as_ambiguous() {
    let h = tollgate_with(2, TASK_API);
    let out = h
        .request(0, &[("x-user-id", "alice"), ("x-user-id", "bob")])
        .unwrap();
    assert_eq!(out.status(), 400);
    assert_eq!(json(&out)["error"], "ambiguous_identity");
    let same = h
        .request(1, &[("x-user-id", "alice"), ("X-User-Id", "alice")])
        .unwrap();
    assert_eq!(same.status(), 400);
    // Refusals are not charged.
    let n = admitted(&h, 100, |_| Request::get("/").header("x-user-id", "alice"));
    assert_eq!(n, 100);
}

#[test]
fn header_names_are_case_insensitive_and_identities_fold_ascii_case() {
    let h = tollgate_with(2, TASK_API);
    let spellings = ["x-user-id", "X-User-Id", "X-USER-ID"];
    let values = ["Alice", "alice", "ALICE"];
    let n = admitted(&h, 120, |i| {
        Request::get("/").header(spellings[i % 3], values[i / 3 % 3])
    });
    assert_eq!(n, 100);
}

#[test]
fn case_sensitive_identities_are_separate_buckets() {
    let policy = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id","case_sensitive":true},
        "limits":[{"requests":10,"per":"minute"}]}]}"#;
    let h = tollgate_with(2, policy);
    let n = admitted(&h, 40, |i| {
        Request::get("/").header("x-user-id", if i % 2 == 0 { "Alice" } else { "alice" })
    });
    assert_eq!(n, 20);
}

#[test]
fn a_64_kib_identity_is_limited_like_any_other() {
    let h = tollgate_with(2, &users_policy(10, "minute", ""));
    let long = "a".repeat(64 * 1024);
    let mut other = long.clone();
    other.pop();
    other.push('b');
    assert_eq!(
        admitted(&h, 15, |_| Request::get("/").header("x-user-id", &long)),
        10
    );
    assert_eq!(
        admitted(&h, 15, |_| Request::get("/").header("x-user-id", &other)),
        10
    );
}

#[test]
fn non_utf8_identities_neither_trap_nor_escape_the_limit() {
    let h = tollgate_with(2, TASK_API);
    let raw: &[u8] = b"\xff\xfe-user-\xc3";
    assert_eq!(
        admitted(&h, 110, |_| Request::get("/").header("x-user-id", raw)),
        100
    );
    // A non-UTF-8 API key is judged by its bytes: not premium, so the next tier applies.
    let key: &[u8] = b"premium\xff";
    let n = admitted(&h, 12, |_| Request::get("/").header("x-api-key", key));
    assert_eq!(n, 10, "anonymous tier");
}

#[test]
fn an_empty_identity_header_falls_through_to_the_next_tier() {
    let h = tollgate_with(2, TASK_API);
    let n = admitted(&h, 12, |_| Request::get("/").header("x-user-id", ""));
    assert_eq!(n, 10, "anonymous tier");
}

#[test]
fn jwt_subjects_from_dynamic_metadata_are_limited_per_subject() {
    let policy = r#"{"tiers":[
        {"name":"jwt","identity":{"metadata":{"filter":"envoy.filters.http.jwt_authn","path":["payload","sub"]}},
         "limits":[{"requests":3,"per":"minute"}]},
        {"name":"anonymous","identity":"shared","limits":[{"requests":1,"per":"minute"}]}]}"#;
    let h = tollgate_with(2, policy);
    let sub = [
        "metadata",
        "filter_metadata",
        "envoy.filters.http.jwt_authn",
        "payload",
        "sub",
    ];
    let as_subject = |who: &'static str| move |_| Request::get("/").property(&sub, who);
    assert_eq!(admitted(&h, 5, as_subject("user-1")), 3);
    assert_eq!(admitted(&h, 5, as_subject("user-2")), 3);
    // Without a token, the anonymous tier applies.
    assert_eq!(admitted(&h, 3, |_| Request::get("/")), 1);
}

#[test]
fn client_addresses_are_limited_per_ip_whatever_the_port() {
    let policy = r#"{"tiers":[{"name":"ip","identity":"client_address",
        "limits":[{"requests":4,"per":"minute"}]}]}"#;
    let h = tollgate_with(2, policy);
    let from = |ip: &'static str| {
        move |i: usize| {
            Request::get("/").property(&["source", "address"], format!("{ip}:{}", 40000 + i))
        }
    };
    assert_eq!(admitted(&h, 6, from("203.0.113.7")), 4);
    assert_eq!(admitted(&h, 6, from("[2001:db8::1]")), 4);
}
