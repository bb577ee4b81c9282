//! Shadow mode on token budgets: a call a budget would refuse goes on, holding and charged
//! nothing, counted `would_deny`; the budgets end as an enforcing twin's.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use alloc::format;
use alloc::vec::Vec;

#[cfg(not(target_arch = "wasm32"))]
use proptest::prelude::*;

use super::*;
use crate::policy::TokenOutcome;
use crate::store::MemoryStore;

const T0: Nanos = Nanos(1_700_000_000_000_000_000);
#[cfg(not(target_arch = "wasm32"))]
const SEC: u64 = 1_000_000_000;

/// One tier with a budget of 1000 tokens a minute; `tier` is spliced into the tier.
fn policy(tier: &str) -> (Policy, MemoryStore) {
    let json = format!(
        r#"{{"max_keys":64,"tiers":[{{"name":"llm","identity":{{"header":"x-user-id"}},
            "tokens":[{{"tokens":1000,"per":"minute"}}]{tier}}}]}}"#
    );
    let p = Policy::from_json(json.as_bytes()).unwrap();
    let mut s = MemoryStore::new();
    p.init_store(&mut s).unwrap();
    (p, s)
}

/// What one call did: the verdicts seen, what was counted, what it was charged.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    refused: bool,
    counts: Vec<Count>,
    settled: Option<Settlement>,
    fields: Vec<&'static str>,
}

/// One chat call asking `max_tokens`, answered (JSON) with `used` output tokens, at `now`.
fn one_call(p: &Policy, s: &mut MemoryStore, max_tokens: u64, used: u64, now: Nanos) -> Seen {
    let body = format!(
        r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let answer = format!(
        r#"{{"choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":{used},"total_tokens":{}}}}}"#,
        used + 5
    );
    let clock = || now;
    let mut env = Env {
        policy: p,
        store: s,
        now: &clock,
    };
    let mut c = LlmCall::new(
        0,
        b"alice".to_vec(),
        ApiKind::OpenAiChat,
        Decision::from_limits(Vec::new()),
    );
    let mut seen = Seen {
        refused: false,
        counts: Vec::new(),
        settled: None,
        fields: Vec::new(),
    };
    let note = |step: RequestStep, seen: &mut Seen| {
        seen.counts.extend(step.count);
        seen.refused |= matches!(step.verdict, Verdict::Refuse(_));
    };
    let step = c.on_request_headers(&mut env, Some(body.len() as u64), false);
    note(step, &mut seen);
    if !seen.refused {
        let step = c.on_request_body(&mut env, body.len(), true, || body.clone().into_bytes());
        note(step, &mut seen);
    }
    if !seen.refused {
        let head = ResponseHead {
            status: Some(b"200"),
            content_type: Some(b"application/json"),
            content_length: Some(answer.len() as u64),
            ..ResponseHead::default()
        };
        let step = c.on_response_headers(&mut env, &head);
        let decorate = step.decorate;
        let step2 =
            c.on_response_body(&mut env, answer.len(), true, || answer.clone().into_bytes());
        seen.settled = step
            .settled
            .or(step2.settled)
            .or_else(|| c.on_log(&mut env));
        if decorate || step2.decorate {
            if let (Some(tier), Some(llm)) = (p.tiers().first(), p.llm()) {
                seen.fields = c
                    .fields(tier, llm, || now)
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
            }
        }
    }
    seen
}

fn left(p: &Policy, s: &mut MemoryStore, now: Nanos) -> u64 {
    match p.admit_tokens(
        &p.tiers()[0],
        b"alice",
        None,
        crate::budget::Amount::ZERO,
        now,
        s,
    ) {
        TokenOutcome::Admitted { decision, .. } | TokenOutcome::Denied { decision } => {
            decision.limits[0].remaining
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_shadow_budget_lets_a_spent_caller_through_counted_would_deny() {
    let (p, mut s) = policy(r#","mode":"shadow""#);
    // 600 + 5 held, 300 + 5 charged: 695 left.
    let first = one_call(&p, &mut s, 600, 300, T0);
    assert_eq!(
        (first.refused, &first.counts[..]),
        (false, &[Count::Allowed][..])
    );
    assert_eq!(first.settled.map(|x| x.charged), Some(305));
    assert!(first.fields.is_empty(), "no headers without shadow_headers");
    // 900 asked, 695 left: enforcing would refuse. It goes on, holds and is charged nothing.
    let second = one_call(&p, &mut s, 900, 900, T0);
    assert_eq!(
        (second.refused, &second.counts[..]),
        (false, &[Count::WouldDeny][..])
    );
    assert_eq!(second.settled, None);
    assert_eq!(left(&p, &mut s, T0), 695);
}

#[test]
fn shadow_headers_show_the_budget_but_never_a_wait() {
    let (p, mut s) = policy(r#","mode":"shadow","shadow_headers":true"#);
    assert!(!one_call(&p, &mut s, 600, 300, T0).fields.is_empty());
    let seen = one_call(&p, &mut s, 900, 10, T0);
    assert_eq!(seen.counts, [Count::WouldDeny]);
    assert!(
        seen.fields.contains(&"x-ratelimit-remaining-tokens"),
        "{:?}",
        seen.fields
    );
    assert!(
        !seen.fields.iter().any(|f| f.starts_with("retry-after")),
        "{:?}",
        seen.fields
    );
    // Enforcing, the same call is refused.
    let (p, mut s) = policy("");
    assert!(!one_call(&p, &mut s, 600, 300, T0).refused);
    assert!(one_call(&p, &mut s, 900, 10, T0).refused);
}

#[cfg(not(target_arch = "wasm32"))]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Over any traffic a shadow budget refuses nothing, and counts `would_deny` exactly the
    /// calls its enforcing twin refuses; both budgets end every call in the same state, so the
    /// shadow numbers are what enforcing would have seen.
    #[test]
    fn shadow_never_refuses_and_would_deny_is_what_enforcing_refuses(
        calls in proptest::collection::vec((1u64..1500, 0u64..1500, 0u64..20), 1..40),
    ) {
        let (shadow, mut ss) = policy(r#","mode":"shadow""#);
        let (enforce, mut es) = policy("");
        let mut now = T0;
        for (max_tokens, used, wait) in calls {
            now = Nanos(now.0 + wait * SEC);
            let sh = one_call(&shadow, &mut ss, max_tokens, used, now);
            let en = one_call(&enforce, &mut es, max_tokens, used, now);
            prop_assert!(!sh.refused, "{sh:?}");
            prop_assert!(!sh.counts.contains(&Count::Denied));
            prop_assert_eq!(sh.counts.contains(&Count::WouldDeny), en.refused, "{:?} {:?}", sh, en);
            prop_assert_eq!(sh.settled, en.settled);
            prop_assert_eq!(left(&shadow, &mut ss, now), left(&enforce, &mut es, now));
        }
    }
}
