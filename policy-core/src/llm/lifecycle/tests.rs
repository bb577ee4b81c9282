//! The lifecycle driven event by event, natively: each phase, each way a stream ends, exactly
//! one settlement, and a refused call whose body never goes upstream.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use super::*;
use crate::decision::LimitStatus;
use crate::policy::TokenOutcome;
use crate::store::{Cas, MemoryStore, StoreError, Versioned};

const T0: Nanos = Nanos(1_700_000_000_000_000_000);
const USER: &[u8] = b"alice";
const CHAT: &[u8] = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A store that can refuse: `conflicts` CAS writes lose their race, then every call fails
/// while `down`.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    conflicts: u32,
    down: bool,
    /// Calls made (each a host call in Envoy).
    gets: u32,
    sets: u32,
}

impl Store for Flaky {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.gets += 1;
        if self.down {
            return Err(StoreError::Unavailable);
        }
        self.inner.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.sets += 1;
        if self.down {
            return Err(StoreError::Unavailable);
        }
        if self.conflicts > 0 {
            self.conflicts -= 1;
            return Err(StoreError::CasMismatch);
        }
        self.inner.set(key, value, cas)
    }
}

/// One tier with one budget of `tokens` per minute (a small table: quick to create); `llm` is
/// spliced into the `llm` object.
fn policy(tokens: u64, llm: &str) -> (Policy, Flaky) {
    let json = format!(
        r#"{{"max_keys":64,"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
            "tokens":[{{"tokens":{tokens},"per":"minute"}}]}}],
            "llm":{{"mode":"reserve"{llm}}}}}"#
    );
    let policy = Policy::from_json(json.as_bytes()).unwrap();
    let mut store = Flaky::default();
    policy.init_store(&mut store.inner).unwrap();
    (policy, store)
}

fn call(api: ApiKind) -> LlmCall {
    LlmCall::new(0, USER.to_vec(), api, Decision::from_limits(Vec::new()))
}

fn chat() -> LlmCall {
    call(ApiKind::OpenAiChat)
}

fn len(body: &[u8]) -> Option<u64> {
    Some(body.len() as u64)
}

/// What the caller's budget has left now (an admission of nothing, which holds nothing; a
/// budget in debt has nothing left and refuses even that).
fn left(policy: &Policy, store: &mut Flaky) -> u64 {
    let tier = &policy.tiers()[0];
    match policy.admit_tokens(tier, USER, None, Amount::tokens(0), T0, &mut store.inner) {
        TokenOutcome::Admitted { decision, .. } | TokenOutcome::Denied { decision } => {
            decision.limits[0].remaining
        }
        other => panic!("{other:?}"),
    }
}

/// Feeds the events of one call through `env`.
struct Drive<'a> {
    policy: &'a Policy,
    store: Flaky,
    /// How many times the host's bytes were read.
    reads: Cell<usize>,
}

impl<'a> Drive<'a> {
    fn new(policy: &'a Policy, store: Flaky) -> Drive<'a> {
        Drive {
            policy,
            store,
            reads: Cell::new(0),
        }
    }

    fn headers(&mut self, c: &mut LlmCall, length: Option<u64>, end: bool) -> RequestStep {
        let now = || T0;
        let mut env = Env {
            policy: self.policy,
            store: &mut self.store,
            now: &now,
        };
        c.on_request_headers(&mut env, length, end)
    }

    /// A request body event offering `bytes` (the whole buffered body while held).
    fn body(&mut self, c: &mut LlmCall, bytes: &[u8], end: bool) -> RequestStep {
        let now = || T0;
        let mut env = Env {
            policy: self.policy,
            store: &mut self.store,
            now: &now,
        };
        let reads = &self.reads;
        c.on_request_body(&mut env, bytes.len(), end, || {
            reads.set(reads.get() + 1);
            bytes.to_vec()
        })
    }

    fn response(&mut self, c: &mut LlmCall, head: ResponseHead<'_>) -> ResponseStep {
        let now = || T0;
        let mut env = Env {
            policy: self.policy,
            store: &mut self.store,
            now: &now,
        };
        c.on_response_headers(&mut env, &head)
    }

    fn chunk(&mut self, c: &mut LlmCall, bytes: &[u8], end: bool) -> ResponseStep {
        let now = || T0;
        let mut env = Env {
            policy: self.policy,
            store: &mut self.store,
            now: &now,
        };
        c.on_response_body(&mut env, bytes.len(), end, || bytes.to_vec())
    }

    fn log(&mut self, c: &mut LlmCall) -> Option<Settlement> {
        let now = || T0;
        let mut env = Env {
            policy: self.policy,
            store: &mut self.store,
            now: &now,
        };
        c.on_log(&mut env)
    }

    /// What the caller's budget has left now.
    fn left(&mut self) -> u64 {
        left(self.policy, &mut self.store)
    }

    /// Holds `n` of the caller's tokens for another call that never ends (an admission asks
    /// at most a budget's burst, so room is taken away this way).
    fn spend(&mut self, n: u64) {
        let tier = &self.policy.tiers()[0];
        let outcome = self.policy.admit_tokens(
            tier,
            USER,
            None,
            Amount::tokens(n),
            T0,
            &mut self.store.inner,
        );
        assert!(
            matches!(outcome, TokenOutcome::Admitted { .. }),
            "{outcome:?}"
        );
    }

    /// Sends a small chat request, held whole, and checks it is admitted.
    fn admitted(&mut self, c: &mut LlmCall, body: &[u8]) {
        let step = self.headers(c, len(body), false);
        assert_eq!(step.verdict, Verdict::Continue);
        let step = self.body(c, body, true);
        assert_eq!(
            (step.verdict, step.count),
            (Verdict::Continue, Some(Count::Allowed))
        );
        assert!(c.awaits_response());
    }
}

fn sse<'a>(end: bool) -> ResponseHead<'a> {
    ResponseHead {
        status: Some(b"200"),
        content_type: Some(b"text/event-stream"),
        end_of_stream: end,
        ..ResponseHead::default()
    }
}

fn json_head<'a>(length: Option<u64>) -> ResponseHead<'a> {
    ResponseHead {
        status: Some(b"200"),
        content_type: Some(b"application/json"),
        content_length: length,
        ..ResponseHead::default()
    }
}

const ID: &str = r#""id":"c","object":"chat.completion.chunk","created":1,"model":"m""#;

/// An OpenAI chat stream with `include_usage`: 9 + 4 tokens.
fn chat_stream(usage: bool) -> String {
    let null = if usage { r#","usage":null"# } else { "" };
    let mut s = String::new();
    for delta in [r#"{"content":"Hello"}"#, r#"{"content":" world"}"#] {
        s += &format!("data: {{{ID},\"choices\":[{{\"index\":0,\"delta\":{delta}}}]{null}}}\n\n");
    }
    if usage {
        s += &format!(
            "data: {{{ID},\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}}}\n\n"
        );
    }
    s + "data: [DONE]\n\n"
}

const JSON_ANSWER: &[u8] =
    br#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42}}"#;

#[test]
fn a_small_body_is_held_until_its_end_then_rewritten_and_admitted() {
    let (p, s) = policy(100_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let step = d.headers(&mut c, len(CHAT), false);
    // The headers leave now, announcing the length the rewrite will produce.
    assert_eq!(step.verdict, Verdict::Continue);
    assert_eq!(step.content_length, Some(CHAT.len() as u64 + REWRITE_ROOM));
    assert!(matches!(
        c.phase(),
        Phase::ReadingRequest { holding: true, .. }
    ));
    // Envoy buffers it: nothing is read until the end.
    let step = d.body(&mut c, &CHAT[..10], false);
    assert_eq!(step.verdict, Verdict::Hold);
    assert_eq!(d.reads.get(), 0);
    let step = d.body(&mut c, CHAT, true);
    assert_eq!(d.reads.get(), 1);
    assert_eq!(
        (&step.verdict, step.count),
        (&Verdict::Continue, Some(Count::Allowed))
    );
    let body = step.replace.expect("rewritten");
    assert_eq!(body.len() as u64, CHAT.len() as u64 + REWRITE_ROOM);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(r#""stream_options":{"include_usage":true}"#),
        "{text}"
    );
    assert_eq!(
        step.content_length, None,
        "announced at the headers already"
    );
    assert!(c.awaits_response());
    assert_eq!(c.model(), Some("m"));
    // Held: the prompt estimate plus the default cap.
    let estimate = c.estimate();
    assert_eq!(
        estimate,
        crate::llm::estimate_tokens(CHAT.len() as u64).max(1) + 100
    );
    assert_eq!(d.left(), 100_000 - estimate);
}

#[test]
fn held_headers_get_the_exact_rewritten_length_once_the_body_is_read() {
    let asked_not: &[u8] =
        br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
    let (p, s) = policy(100_000, r#","hold_headers":true"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let step = d.headers(&mut c, len(asked_not), false);
    assert_eq!((step.verdict, step.content_length), (Verdict::Hold, None));
    let step = d.body(&mut c, asked_not, true);
    let body = step.replace.expect("rewritten");
    // `false` became `true`, one byte shorter, and nothing pads it.
    assert_eq!(body.len(), asked_not.len() - 1);
    assert_eq!(step.content_length, Some(body.len() as u64));
}

#[test]
fn a_body_too_large_to_hold_is_followed_and_refused_on_its_first_chunk_before_it_goes_upstream() {
    // 15,000 tokens left: room for the least the call can cost (10,001), not for its
    // estimate (10,000 + 20,000, capped at the burst of 20,000).
    let (p, s) = policy(20_000, r#","default_max_tokens":20000"#);
    let mut d = Drive::new(&p, s);
    d.spend(5_000);
    let mut c = chat();
    let length = 40_000;
    let step = d.headers(&mut c, Some(length), false);
    assert_eq!(step.verdict, Verdict::Continue);
    assert!(matches!(
        c.phase(),
        Phase::ReadingRequest { holding: false, .. }
    ));
    let step = d.body(&mut c, &[b' '; 1000], false);
    assert_eq!(step.verdict, Verdict::Refuse(Refusal::Denied));
    assert_eq!(step.count, Some(Count::Denied));
    assert_eq!(
        step.replace, None,
        "the refused chunk is not replaced: it never leaves"
    );
    assert!(c.tokens().is_some_and(|t| !t.allowed));
    // Later events do nothing, nothing is held, nothing is settled.
    let later = d.body(&mut c, &[b' '; 1000], true);
    assert_eq!((later.verdict, later.count), (Verdict::Continue, None));
    assert_eq!(d.log(&mut c), None);
    assert_eq!(d.left(), 15_000);
}

#[test]
fn a_followed_body_is_admitted_early_and_completed_at_its_end_keeping_its_last_byte_back() {
    let (p, s) = policy(
        1_000_000,
        r#","default_max_tokens":100,"buffer_limit_bytes":64"#,
    );
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    assert_eq!(
        d.headers(&mut c, len(CHAT), false).verdict,
        Verdict::Continue
    );
    let (head, tail) = CHAT.split_at(30);
    let step = d.body(&mut c, head, false);
    // Admitted early on the content-length; the first chunk leaves one byte short.
    assert_eq!((&step.verdict, step.count), (&Verdict::Continue, None));
    assert_eq!(step.replace.as_deref(), Some(&head[..29]));
    let early = 1_000_000 - d.left();
    assert_eq!(early, crate::llm::estimate_tokens(CHAT.len() as u64) + 100);
    let step = d.body(&mut c, tail, true);
    assert_eq!(
        (&step.verdict, step.count),
        (&Verdict::Continue, Some(Count::Allowed))
    );
    let mut sent = head[..29].to_vec();
    sent.extend_from_slice(&step.replace.expect("rewritten"));
    assert_eq!(sent.len() as u64, CHAT.len() as u64 + REWRITE_ROOM);
    assert!(String::from_utf8(sent)
        .unwrap()
        .contains(r#""include_usage":true"#));
    assert_eq!(c.model(), Some("m"));
    assert!(c.awaits_response());
}

#[test]
fn a_body_without_content_length_is_topped_up_as_it_grows_and_refused_when_it_no_longer_fits() {
    let (p, s) = policy(
        1_000,
        r#","default_max_tokens":100,"buffer_limit_bytes":64"#,
    );
    let mut d = Drive::new(&p, s);
    d.spend(100);
    let mut c = chat();
    assert_eq!(d.headers(&mut c, None, false).verdict, Verdict::Continue);
    let chunk = [b' '; 1000]; // 250 tokens each
    let mut held = Vec::new();
    let mut refused_at = None;
    for i in 1..=5 {
        let step = d.body(&mut c, &chunk, false);
        if step.verdict != Verdict::Continue {
            assert_eq!(step.verdict, Verdict::Refuse(Refusal::Denied));
            refused_at = Some(i);
            break;
        }
        held.push(900 - d.left());
    }
    // 350, 600, 850 held; 1,100 (capped at the burst, 1,000) does not fit in the 900 left:
    // refused before the fourth chunk leaves.
    assert_eq!(held, vec![350, 600, 850]);
    assert_eq!(refused_at, Some(4));
    assert_eq!(d.left(), 900, "everything held is given back");
    assert_eq!(d.log(&mut c), None);
}

#[test]
fn a_caller_with_no_room_is_refused_at_the_headers_and_its_body_is_never_read() {
    let (p, s) = policy(10, "");
    let mut d = Drive::new(&p, s);
    d.spend(10);
    let mut c = chat();
    let step = d.headers(&mut c, Some(1_000), false);
    assert_eq!(step.verdict, Verdict::Refuse(Refusal::Denied));
    assert_eq!(step.count, Some(Count::Denied));
    assert!(c.tokens().is_some_and(|t| !t.allowed));
    assert!(c.retry_after().is_some());
    assert_eq!(d.body(&mut c, CHAT, true).verdict, Verdict::Continue);
    assert_eq!(d.reads.get(), 0);
    assert_eq!(d.log(&mut c), None);
    assert_eq!(d.left(), 0);
}

#[test]
fn a_request_without_a_body_is_admitted_at_its_headers() {
    let (p, s) = policy(1_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let step = d.headers(&mut c, None, true);
    assert_eq!(
        (step.verdict, step.count),
        (Verdict::Continue, Some(Count::Allowed))
    );
    assert!(c.awaits_response());
    assert_eq!(d.left(), 900);
}

#[test]
fn a_body_whose_rewrite_cannot_fit_its_announced_length_is_refused() {
    let (p, s) = policy(1_000_000, "");
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let body = br#"{"model":"m","stream":true,"stream_options":{},"stream_options":{},"stream_options":{},"stream_options":{}}"#;
    assert_eq!(
        d.headers(&mut c, len(body), false).verdict,
        Verdict::Continue
    );
    let step = d.body(&mut c, body, true);
    assert!(
        matches!(step.verdict, Verdict::Refuse(Refusal::BadBody(_))),
        "{step:?}"
    );
    assert_eq!(step.replace, None);
    assert_eq!(d.log(&mut c), None);
    assert_eq!(d.left(), 1_000_000);
}

#[test]
fn a_stream_is_cleaned_of_the_added_usage_and_settled_once_at_its_end() {
    let (p, s) = policy(100_000, "");
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, CHAT);
    let step = d.response(&mut c, sse(false));
    assert!(!step.hold && step.decorate && step.drop_content_length);
    assert_eq!(step.settled, None);
    let upstream = chat_stream(true);
    let mut client = Vec::new();
    let chunks: Vec<&[u8]> = upstream.as_bytes().chunks(7).collect();
    let mut settlements = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let step = d.chunk(&mut c, chunk, i + 1 == chunks.len());
        client.extend_from_slice(step.replace.as_deref().unwrap_or(chunk));
        settlements.extend(step.settled);
    }
    assert_eq!(String::from_utf8(client).unwrap(), chat_stream(false));
    assert_eq!(settlements.len(), 1);
    assert_eq!(settlements[0].charged, 13);
    assert_eq!(settlements[0].reserved, c.estimate());
    // Exactly once: nothing more at on_log, nor for a stray chunk.
    assert_eq!(d.chunk(&mut c, b"", true).settled, None);
    assert_eq!(d.log(&mut c), None);
    assert_eq!(d.left(), 100_000 - 13);
}

#[test]
fn a_stream_cut_short_is_settled_at_on_log_with_what_was_received() {
    for (rule, charged) in [("received", None), ("reservation", Some(()))] {
        let (p, s) = policy(100_000, &format!(r#","on_incomplete":"{rule}""#));
        let mut d = Drive::new(&p, s);
        let mut c = chat();
        d.admitted(&mut c, CHAT);
        let _ = d.response(&mut c, sse(false));
        let text = "abcd".repeat(100); // 100 tokens of text
        let part = format!(
            "data: {{{ID},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        );
        assert_eq!(d.chunk(&mut c, part.as_bytes(), false).settled, None);
        let settled = d.log(&mut c).expect("settled at on_log");
        let want = match charged {
            None => crate::llm::estimate_tokens(CHAT.len() as u64) + 100,
            Some(()) => c.estimate(),
        };
        assert_eq!(settled.charged, want, "{rule}");
        assert_eq!(d.log(&mut c), None, "once");
        assert_eq!(d.left(), 100_000 - want);
    }
}

#[test]
fn a_response_is_charged_by_how_it_ended() {
    let enc = ResponseHead {
        encoded: true,
        ..json_head(None)
    };
    let empty = ResponseHead {
        end_of_stream: true,
        ..json_head(None)
    };
    let error = ResponseHead {
        status: Some(b"500"),
        ..json_head(None)
    };
    for (case, head, body, estimate) in [
        ("error status", error, &b"{}"[..], false),
        ("encoded", enc, &b"\x1f\x8b"[..], true),
        ("no body", empty, &b""[..], true),
        ("not json", json_head(None), &b"<html>"[..], true),
    ] {
        let (p, s) = policy(100_000, "");
        let mut d = Drive::new(&p, s);
        let mut c = chat();
        d.admitted(&mut c, CHAT);
        let step = d.response(&mut c, head);
        let settled = match step.settled {
            Some(settled) => settled,
            None => d.chunk(&mut c, body, true).settled.expect(case),
        };
        let want = if estimate { c.estimate() } else { 0 };
        assert_eq!(settled.charged, want, "{case}");
        assert_eq!(d.log(&mut c), None, "{case}");
    }
}

#[test]
fn a_json_answer_is_held_with_its_headers_and_decorated_once_charged() {
    let (p, s) = policy(100_000, r#","hold_headers":true"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let step = d.headers(&mut c, len(CHAT), false);
    assert_eq!(step.verdict, Verdict::Hold);
    let step = d.body(&mut c, CHAT, true);
    assert_eq!(step.verdict, Verdict::Continue);
    let step = d.response(&mut c, json_head(len(JSON_ANSWER)));
    assert!(step.hold && !step.decorate);
    let step = d.chunk(&mut c, &JSON_ANSWER[..20], false);
    assert!(step.hold && step.settled.is_none());
    let step = d.chunk(&mut c, JSON_ANSWER, true);
    assert!(!step.hold && step.decorate);
    assert_eq!(step.settled.map(|s| s.charged), Some(42));
    // The fields now show the charge.
    assert_eq!(c.tokens().unwrap().limits[0].remaining, 100_000 - 42);
}

#[test]
fn a_json_answer_that_passes_is_charged_from_its_copy() {
    let (p, s) = policy(100_000, "");
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, CHAT);
    let step = d.response(&mut c, json_head(len(JSON_ANSWER)));
    assert!(!step.hold && step.decorate);
    let (a, b) = JSON_ANSWER.split_at(17);
    let first = d.chunk(&mut c, a, false);
    assert!(!first.hold && !first.decorate && first.settled.is_none());
    assert_eq!(
        d.chunk(&mut c, b, true).settled.map(|s| s.charged),
        Some(42)
    );
    // Cut before its end instead: the reservation stands.
    let mut c = chat();
    d.admitted(&mut c, CHAT);
    let _ = d.response(&mut c, json_head(None));
    let _ = d.chunk(&mut c, a, false);
    assert_eq!(d.log(&mut c).map(|s| s.charged), Some(c.estimate()));
}

#[test]
fn a_call_admitted_early_whose_body_never_ends_is_settled_at_nothing() {
    let (p, s) = policy(1_000_000, r#","buffer_limit_bytes":64"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    assert_eq!(
        d.headers(&mut c, Some(10_000), false).verdict,
        Verdict::Continue
    );
    let step = d.body(&mut c, &[b' '; 100], false);
    assert_eq!(step.verdict, Verdict::Continue);
    assert!(d.left() < 1_000_000);
    assert_eq!(d.log(&mut c).map(|s| s.charged), Some(0));
    assert_eq!(d.left(), 1_000_000);
}

#[test]
fn a_failing_store_at_admission_fails_open_or_closed_as_the_policy_says() {
    for (top, verdict) in [
        ("", Verdict::Continue),
        (
            r#","on_store_failure":"deny""#,
            Verdict::Refuse(Refusal::Unavailable),
        ),
    ] {
        let json = format!(
            r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":1000,"per":"minute"}}]}}]{top}}}"#
        );
        let p = Policy::from_json(json.as_bytes()).unwrap();
        let mut s = Flaky::default();
        p.init_store(&mut s.inner).unwrap();
        s.down = true;
        let mut d = Drive::new(&p, s);
        let mut c = chat();
        // The read-only check at the headers leaves a failing store to admission.
        assert_eq!(
            d.headers(&mut c, len(CHAT), false).verdict,
            Verdict::Continue
        );
        let step = d.body(&mut c, CHAT, true);
        assert_eq!(
            (step.verdict, step.count),
            (verdict, Some(Count::StoreFailure))
        );
        assert!(!c.awaits_response());
        assert_eq!(d.log(&mut c), None, "nothing held, nothing settled");
    }
}

#[test]
fn lost_races_at_admission_are_retried_then_refused_as_contended() {
    let (p, mut s) = policy(100_000, "");
    s.conflicts = 3; // below the retry bound: admitted
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, CHAT);
    let held = c.estimate();
    d.store.conflicts = 1_000; // beyond it
    let mut c2 = chat();
    assert_eq!(
        d.headers(&mut c2, len(CHAT), false).verdict,
        Verdict::Continue
    );
    let step = d.body(&mut c2, CHAT, true);
    assert_eq!(step.verdict, Verdict::Refuse(Refusal::Contended));
    assert_eq!(step.count, Some(Count::Contended));
    d.store.conflicts = 0;
    assert_eq!(d.left(), 100_000 - held);
}

#[test]
fn a_settlement_that_loses_its_races_or_its_store_still_ends_the_call_once() {
    for (conflicts, down, refunded) in [(3, false, true), (1_000, false, false), (0, true, false)] {
        let (p, s) = policy(100_000, "");
        let mut d = Drive::new(&p, s);
        let mut c = chat();
        d.admitted(&mut c, CHAT);
        let held = c.estimate();
        let shown = c.tokens().unwrap().limits[0].remaining;
        let _ = d.response(&mut c, json_head(None));
        d.store.conflicts = conflicts;
        d.store.down = down;
        let settled = d.chunk(&mut c, JSON_ANSWER, true).settled;
        assert_eq!(
            settled,
            Some(Settlement {
                reserved: held,
                charged: 42,
                spent: 0,
                landed: refunded,
            })
        );
        assert_eq!(d.log(&mut c), None, "never settled twice");
        d.store.conflicts = 0;
        d.store.down = false;
        if refunded {
            assert_eq!(d.left(), 100_000 - 42);
            assert_eq!(c.tokens().unwrap().limits[0].remaining, 100_000 - 42);
        } else {
            // The hold stays until it refills; the fields keep admission's state.
            assert_eq!(d.left(), 100_000 - held);
            assert_eq!(c.tokens().unwrap().limits[0].remaining, shown);
        }
    }
}

#[test]
fn a_store_failing_on_a_passing_body_lets_the_rest_through_rewritten_and_charges_nothing() {
    let (p, s) = policy(100_000, r#","buffer_limit_bytes":64"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let step = d.headers(&mut c, len(CHAT), false);
    let announced = step.content_length.expect("announced");
    d.store.down = true;
    let (head, tail) = CHAT.split_at(30);
    let first = d.body(&mut c, head, false);
    assert_eq!(
        (&first.verdict, first.count),
        (&Verdict::Continue, Some(Count::StoreFailure))
    );
    assert!(matches!(c.phase(), Phase::Unmetered));
    let last = d.body(&mut c, tail, true);
    assert_eq!((&last.verdict, last.count), (&Verdict::Continue, None));
    // Every byte reaches the upstream, rewritten, as long as announced.
    let mut sent = first.replace.expect("the first chunk, less its last byte");
    sent.extend_from_slice(&last.replace.expect("the rest, rewritten"));
    assert_eq!(sent.len() as u64, announced);
    assert!(String::from_utf8(sent)
        .unwrap()
        .contains(r#""include_usage":true"#));
    assert!(!c.awaits_response());
    assert_eq!(d.log(&mut c), None);
    d.store.down = false;
    assert_eq!(d.left(), 100_000);
}

#[test]
fn a_passing_body_refused_for_its_rewrite_after_an_early_admission_gets_its_hold_back() {
    let (p, s) = policy(100_000, r#","buffer_limit_bytes":64"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let mut body = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a long enough prompt"}]"#.to_vec();
    body.extend_from_slice(br#","stream_options":{},"stream_options":{},"stream_options":{}}"#);
    assert_eq!(
        d.headers(&mut c, len(&body), false).verdict,
        Verdict::Continue
    );
    let (head, tail) = body.split_at(70);
    let first = d.body(&mut c, head, false);
    assert_eq!(first.verdict, Verdict::Continue);
    assert!(d.left() < 100_000, "held on the first chunk");
    let step = d.body(&mut c, tail, true);
    assert!(
        matches!(step.verdict, Verdict::Refuse(Refusal::BadBody(_))),
        "{step:?}"
    );
    assert_eq!(d.log(&mut c), None);
    assert_eq!(d.left(), 100_000, "a refused call holds nothing");
}

#[cfg(not(target_arch = "wasm32"))]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Splits `bytes` at `cuts` (any order, any values), as the network might.
    fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut out = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([bytes.len()]) {
            out.push(bytes[from..cut].to_vec());
            from = cut;
        }
        out
    }

    /// One call as the network might play it.
    #[derive(Clone, Debug)]
    struct Play {
        budget: u64,
        small_buffer: bool,
        hold_headers: bool,
        deny_on_store_failure: bool,
        known_length: bool,
        prompt: usize,
        request_cuts: Vec<usize>,
        answer: u8,
        response_cuts: Vec<usize>,
        /// The stream ends (`on_log`) before this event.
        cut_at: Option<usize>,
        /// The store is down from this event to the next `up_at`.
        down_at: Option<usize>,
        up_at: Option<usize>,
        /// Every CAS race from this event on is lost, for this many writes.
        conflicts_at: Option<(usize, u32)>,
    }

    fn plays() -> impl Strategy<Value = Play> {
        (
            (
                prop_oneof![Just(60u64), Just(1_000_000u64)],
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                0usize..400,
            ),
            (
                proptest::collection::vec(0usize..600, 0..4),
                0u8..4,
                proptest::collection::vec(0usize..800, 0..4),
                proptest::option::of(0usize..10),
            ),
        )
            .prop_map(
                |(
                    (budget, small_buffer, hold_headers, deny, known_length, prompt),
                    (request_cuts, answer, response_cuts, cut_at),
                )| Play {
                    budget,
                    small_buffer,
                    hold_headers,
                    deny_on_store_failure: deny,
                    known_length,
                    prompt,
                    request_cuts,
                    answer,
                    response_cuts,
                    cut_at,
                    down_at: None,
                    up_at: None,
                    conflicts_at: None,
                },
            )
    }

    /// What a play did.
    #[derive(Debug)]
    struct Played {
        settled: Vec<Settlement>,
        refused: bool,
        /// The request body went through to its end.
        body_done: bool,
        /// The bytes the upstream received, and the length it was told to expect.
        forwarded: Vec<u8>,
        announced: u64,
        left: u64,
        /// The store failed or lost every race at some point.
        troubled: bool,
    }

    fn play(g: &Play) -> Played {
        let buffer = if g.small_buffer { 64 } else { 32_768 };
        let mut json = format!(
            r#"{{"max_keys":64,"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":{},"per":"minute"}}]}}],
                "llm":{{"buffer_limit_bytes":{buffer},"hold_headers":{},"default_max_tokens":50}}"#,
            g.budget, g.hold_headers
        );
        if g.deny_on_store_failure {
            json += r#","on_store_failure":"deny""#;
        }
        json += "}";
        let p = Policy::from_json(json.as_bytes()).unwrap();
        let mut store = Flaky::default();
        p.init_store(&mut store.inner).unwrap();
        let mut d = Drive::new(&p, store);
        let mut c = chat();
        let stream = g.answer == 0;
        let body = format!(
            r#"{{"model":"m","stream":{stream},"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "p".repeat(g.prompt)
        );
        let sse_body = chat_stream(true);
        let (head, answer_bytes) = match g.answer {
            0 => (sse(false), sse_body.as_bytes()),
            1 => (json_head(len(JSON_ANSWER)), JSON_ANSWER),
            2 => (
                ResponseHead {
                    status: Some(b"429"),
                    ..json_head(None)
                },
                JSON_ANSWER,
            ),
            _ => (
                ResponseHead {
                    encoded: true,
                    ..json_head(None)
                },
                &b"\x1f\x8b\x08"[..],
            ),
        };
        let mut out = Played {
            settled: Vec::new(),
            refused: false,
            body_done: false,
            forwarded: Vec::new(),
            announced: body.len() as u64,
            left: 0,
            troubled: false,
        };
        let mut events = 0;
        // Before each event: the weather at the store; whether the stream ends here.
        let before = |d: &mut Drive<'_>, events: usize, out: &mut Played| {
            if g.down_at == Some(events) {
                d.store.down = true;
                out.troubled = true;
            }
            if g.up_at == Some(events) {
                d.store.down = false;
            }
            if let Some((at, n)) = g.conflicts_at {
                if at == events {
                    d.store.conflicts = n;
                    out.troubled = true;
                }
            }
            g.cut_at == Some(events)
        };
        'call: {
            if before(&mut d, events, &mut out) {
                break 'call;
            }
            events += 1;
            let length = g.known_length.then_some(body.len() as u64);
            let step = d.headers(&mut c, length, false);
            out.refused |= matches!(step.verdict, Verdict::Refuse(_));
            if let Some(n) = step.content_length {
                out.announced = n;
            }
            // Envoy offers a held body whole again with each new chunk.
            let mut buffered = Vec::new();
            let chunks = split(body.as_bytes(), &g.request_cuts);
            for (i, chunk) in chunks.iter().enumerate() {
                if before(&mut d, events, &mut out) {
                    break 'call;
                }
                events += 1;
                buffered.extend_from_slice(chunk);
                let end = i + 1 == chunks.len();
                let step = d.body(&mut c, &buffered, end);
                match step.verdict {
                    Verdict::Hold => continue,
                    Verdict::Refuse(_) => out.refused = true,
                    Verdict::Continue => {
                        let sent = step.replace.as_deref().unwrap_or(&buffered);
                        out.forwarded.extend_from_slice(sent);
                        out.body_done |= end;
                    }
                }
                if let Some(n) = step.content_length {
                    out.announced = n;
                }
                buffered.clear();
            }
            if before(&mut d, events, &mut out) {
                break 'call;
            }
            events += 1;
            out.settled.extend(d.response(&mut c, head).settled);
            let mut buffered = Vec::new();
            let chunks = split(answer_bytes, &g.response_cuts);
            for (i, chunk) in chunks.iter().enumerate() {
                if before(&mut d, events, &mut out) {
                    break 'call;
                }
                events += 1;
                buffered.extend_from_slice(chunk);
                let step = d.chunk(&mut c, &buffered, i + 1 == chunks.len());
                if !step.hold {
                    buffered.clear();
                }
                out.settled.extend(step.settled);
            }
        }
        out.settled.extend(d.log(&mut c));
        out.settled
            .extend(d.chunk(&mut c, b"data: [DONE]\n\n", true).settled);
        out.settled.extend(d.log(&mut c));
        d.store.down = false;
        d.store.conflicts = 0;
        out.left = d.left();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever the framing, the budget, the answer and wherever the stream is cut, a call
        /// settles at most once; afterwards a call that was refused or never admitted holds
        /// nothing, and a settled one holds exactly what it was charged. Events that come after
        /// the end (a stray chunk, a second `on_log`) change nothing. A body that went through
        /// reached the upstream exactly as long as announced.
        #[test]
        fn every_call_settles_at_most_once_and_holds_what_it_was_charged(g in plays()) {
            let out = play(&g);
            prop_assert!(out.settled.len() <= 1, "{out:?}");
            if out.refused {
                prop_assert!(out.settled.is_empty(), "{out:?}");
            }
            match out.settled.first() {
                Some(s) => prop_assert_eq!(out.left, g.budget.saturating_sub(s.charged)),
                None => prop_assert_eq!(out.left, g.budget),
            }
            if out.body_done && !out.refused && g.known_length {
                prop_assert_eq!(out.forwarded.len() as u64, out.announced, "{:?}", out);
            }
        }

        /// The same with the store failing, coming back, or losing every race at any event,
        /// under either `on_store_failure`: still at most one settlement, none for a refused
        /// call, and a body let through reaches the upstream whole and as long as announced.
        #[test]
        fn a_troubled_store_never_settles_twice_nor_cuts_a_body_short(
            g in plays(),
            down_at in proptest::option::of(0usize..10),
            up_at in proptest::option::of(0usize..12),
            conflicts_at in proptest::option::of((0usize..10, 1u32..40)),
        ) {
            let g = Play { down_at, up_at, conflicts_at, ..g };
            let out = play(&g);
            prop_assert!(out.settled.len() <= 1, "{out:?}");
            if out.refused {
                prop_assert!(out.settled.is_empty(), "{out:?}");
            }
            if out.body_done && !out.refused && g.known_length {
                prop_assert_eq!(out.forwarded.len() as u64, out.announced, "{:?}", out);
            }
            if !out.troubled {
                match out.settled.first() {
                    Some(s) => prop_assert_eq!(out.left, g.budget.saturating_sub(s.charged)),
                    None => prop_assert_eq!(out.left, g.budget),
                }
            }
        }
    }
}

/// Gemini's streamed JSON array (no `alt=sse`) and Ollama's NDJSON, fed in small pieces.
const GEMINI_ARRAY: &str = include_str!("../../../../fixtures/llm/gemini-stream.json");
const OLLAMA_NDJSON: &str = include_str!("../../../../fixtures/llm/ollama-chat.ndjson");

#[test]
fn gemini_array_and_ollama_ndjson_streams_are_charged_the_usage_they_report() {
    let gemini_body = br#"{"contents":[{"role":"user","parts":[{"text":"Write about rain"}]}]}"#;
    let ollama_body =
        br#"{"model":"llama3.2","messages":[{"role":"user","content":"Why is the sky blue?"}]}"#;
    for (api, path, content_type, body, stream, model, charged) in [
        (
            ApiKind::GeminiStream,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            &b"application/json; charset=UTF-8"[..],
            &gemini_body[..],
            GEMINI_ARRAY,
            "gemini-2.5-flash",
            9 + 23 + 24, // the last chunk's counts, not their sum over the chunks
        ),
        (
            ApiKind::OllamaChat,
            "/api/chat",
            &b"application/x-ndjson"[..],
            &ollama_body[..],
            OLLAMA_NDJSON,
            "llama3.2",
            26 + 12,
        ),
    ] {
        let (p, s) = policy(100_000, "");
        let mut d = Drive::new(&p, s);
        let mut c = call(api).with_path_model(ApiKind::model_in_path(path));
        d.admitted(&mut c, body);
        assert_eq!(c.model(), Some(model));
        let head = ResponseHead {
            content_type: Some(content_type),
            ..sse(false)
        };
        let _ = d.response(&mut c, head);
        for piece in stream.as_bytes().chunks(7) {
            assert_eq!(d.chunk(&mut c, piece, false).settled, None);
        }
        let settled = d.chunk(&mut c, b"", true).settled.expect("settled");
        assert_eq!(settled.charged, charged, "{api:?}");
        assert_eq!(d.left(), 100_000 - charged, "{api:?}");
    }
}

#[test]
fn a_model_named_only_in_the_path_meets_its_budget_whichever_api_names_it() {
    let json = r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
        "tokens":[{"tokens":100000,"per":"minute"},
                  {"tokens":50,"per":"minute","model":"gemini-2.5-flash","name":"flash"}]}],
        "llm":{"mode":"reserve"}}"#;
    let p = Policy::from_json(json.as_bytes()).unwrap();
    let mut store = Flaky::default();
    p.init_store(&mut store.inner).unwrap();
    let mut d = Drive::new(&p, store);
    // Empties the 50-token budget (a call of unknown model counts against every budget).
    d.spend(50);
    let gemini = br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
    let openai = br#"{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"hi"}]}"#;
    for (api, path, body, refused) in [
        (
            ApiKind::GeminiGenerate,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &gemini[..],
            true,
        ),
        (
            ApiKind::GeminiGenerate,
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent",
            &gemini[..],
            true,
        ),
        // Gemini's OpenAI-compatible endpoint names the model in the body.
        (
            ApiKind::OpenAiChat,
            "/v1beta/openai/chat/completions",
            &openai[..],
            true,
        ),
        // An Azure deployment named like the model is that model.
        (
            ApiKind::OpenAiChat,
            "/openai/deployments/gemini-2.5-flash/chat/completions?api-version=2024-10-21",
            &br#"{"messages":[]}"#[..],
            true,
        ),
        (
            ApiKind::GeminiGenerate,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            &gemini[..],
            false,
        ),
    ] {
        let mut c = call(api).with_path_model(ApiKind::model_in_path(path));
        let _ = d.headers(&mut c, len(body), false);
        let step = d.body(&mut c, body, true);
        assert_eq!(
            step.verdict == Verdict::Refuse(Refusal::Denied),
            refused,
            "{path}: {step:?}"
        );
        if refused {
            let denial = c.denial_body(&p.tiers()[0]);
            let gemini_style = denial.starts_with(r#"{"error":{"code":429,"message":"Rate limit reached for tokens in tier free (policy flash)"#)
                && denial.ends_with(r#","status":"RESOURCE_EXHAUSTED"}}"#);
            assert_eq!(gemini_style, api.is_gemini(), "{path}: {denial}");
        }
    }
}

#[test]
fn a_model_budget_cannot_be_escaped_through_another_apis_path() {
    // One budget per model, each naming the model as the APIs do: aliases, a prefix, a mapped
    // Azure deployment, Vertex AI's `@` snapshots and its OpenAI endpoint's `google/` names.
    let json = r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
        "tokens":[{"tokens":100000,"per":"minute"},
                  {"tokens":50,"per":"minute","name":"gpt4o","model":["gpt-4o","gpt-4o-2024-08-06"]},
                  {"tokens":50,"per":"minute","name":"sonnet","model":{"prefix":"claude-3-5-sonnet"}},
                  {"tokens":50,"per":"minute","name":"pro",
                   "model":["gemini-1.5-pro",{"prefix":"gemini-1.5-pro-0"},"google/gemini-1.5-pro-002"]}]}],
        "llm":{"mode":"reserve","deployments":{"prod-chat":"gpt-4o-2024-08-06"}}}"#;
    let p = Policy::from_json(json.as_bytes()).unwrap();
    let llm = p.llm().unwrap();
    let mut store = Flaky::default();
    p.init_store(&mut store.inner).unwrap();
    let mut d = Drive::new(&p, store);
    // Empties the three 50-token budgets (a call of unknown model counts against every budget).
    d.spend(50);
    let gemini = br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#.to_vec();
    let claude = br#"{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"messages":[]}"#;
    let chat = |model: &str| format!(r#"{{"model":"{model}","messages":[]}}"#).into_bytes();
    let vertex = "/v1/projects/p/locations/us-east5/publishers";
    for (path, body, refused_by) in [
        ("/v1/chat/completions", chat("gpt-4o"), Some("gpt4o")),
        (
            "/v1/chat/completions",
            chat("gpt-4o-2024-11-20"),
            Some("gpt4o"),
        ),
        ("/v1/responses", chat("gpt-4o-2024-08-06"), Some("gpt4o")),
        (
            "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
            br#"{"messages":[]}"#.to_vec(),
            Some("gpt4o"),
        ),
        (
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            br#"{"messages":[]}"#.to_vec(),
            Some("gpt4o"),
        ),
        ("/openai/v1/chat/completions", chat("gpt-4o"), Some("gpt4o")),
        (
            "/v1/messages",
            chat("claude-3-5-sonnet-20241022"),
            Some("sonnet"),
        ),
        (
            &format!("{vertex}/anthropic/models/claude-3-5-sonnet-v2@20241022:rawPredict"),
            claude.to_vec(),
            Some("sonnet"),
        ),
        (
            &format!("{vertex}/anthropic/models/claude-3-5-sonnet@20240620:streamRawPredict"),
            claude.to_vec(),
            Some("sonnet"),
        ),
        (
            "/v1beta/models/gemini-1.5-pro:generateContent",
            gemini.clone(),
            Some("pro"),
        ),
        (
            &format!("{vertex}/google/models/gemini-1.5-pro-002:streamGenerateContent"),
            gemini.clone(),
            Some("pro"),
        ),
        (
            "/v1beta/models/gemini-1.5-pro-001:generateContent",
            gemini.clone(),
            Some("pro"),
        ),
        (
            "/v1/projects/p/locations/l/endpoints/openapi/chat/completions",
            chat("google/gemini-1.5-pro-002"),
            Some("pro"),
        ),
        // Other models still pass.
        ("/v1/chat/completions", chat("gpt-4o-mini"), None),
        ("/v1/messages", chat("claude-3-opus-20240229"), None),
        (
            "/v1beta/models/gemini-1.5-flash-002:generateContent",
            gemini.clone(),
            None,
        ),
    ] {
        let api = llm.api_of(path);
        assert_ne!(api, ApiKind::Unknown, "{path}");
        let mut c = call(api).with_path_model(llm.model_in_path(path));
        let _ = d.headers(&mut c, len(&body), false);
        let step = d.body(&mut c, &body, true);
        match refused_by {
            Some(name) => {
                assert_eq!(step.verdict, Verdict::Refuse(Refusal::Denied), "{path}");
                let denial = c.denial_body(&p.tiers()[0]);
                assert!(
                    denial.contains(&format!("(policy {name})")),
                    "{path}: {denial}"
                );
            }
            None => assert_eq!(step.verdict, Verdict::Continue, "{path}: {step:?}"),
        }
    }
}

// ---- spend budgets -------------------------------------------------------------------------

/// One tier with a spend budget of 0.001 USD (1,000 micro-units) per minute; model `m` costs
/// 10 per million input tokens and 30 per million output tokens (10 and 30 micro-units per
/// token); `unpriced` is the table's `unpriced`.
fn spend_policy(unpriced: &str) -> (Policy, Flaky) {
    let json = format!(
        r#"{{"max_keys":64,"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
            "tokens":[{{"spend":"0.001","per":"minute"}}]}}],
            "prices":{{"currency":"USD","unpriced":{unpriced},
              "models":[{{"model":"m","input":"10","output":"30"}}]}}}}"#
    );
    let policy = Policy::from_json(json.as_bytes()).unwrap();
    let mut store = Flaky::default();
    policy.init_store(&mut store.inner).unwrap();
    (policy, store)
}

const SPEND_CHAT: &[u8] =
    br#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn a_spend_budget_reserves_the_priced_estimate_and_settles_the_priced_usage() {
    let (p, s) = spend_policy(r#""refuse""#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, SPEND_CHAT);
    let input = c.estimate() - 10;
    let reserved = input * 10 + 10 * 30;
    assert_eq!(d.left(), 1_000 - reserved, "the estimate, priced");
    let _ = d.response(&mut c, json_head(None));
    let settled = d.chunk(&mut c, JSON_ANSWER, true).settled.unwrap();
    // 30 input × 10 + 12 output × 30 micro-units.
    assert_eq!((settled.charged, settled.spent), (42, 660));
    assert_eq!(d.left(), 340);
    let tier = &p.tiers()[0];
    let fields = c.fields(tier, p.llm().unwrap(), || T0);
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("x-ratelimit-limit-spend"), Some("0.001000 USD"));
    assert_eq!(get("x-ratelimit-remaining-spend"), Some("0.000340 USD"));
    assert_eq!(get("x-ratelimit-limit-tokens"), None, "no token budget");

    // The next call's estimate (its input and 10 output tokens at 30) no longer fits.
    let mut next = chat();
    let step = d.headers(&mut next, len(SPEND_CHAT), false);
    assert_eq!(
        step.verdict,
        Verdict::Continue,
        "340 left: something is left"
    );
    let step = d.body(&mut next, SPEND_CHAT, true);
    assert_eq!(step.verdict, Verdict::Refuse(Refusal::Denied));
    let body = next.denial_body(tier);
    assert!(body.contains("0.000340 USD left of 0.001000 USD"), "{body}");
    assert!(body.contains("\"code\":\"rate_limit_exceeded\""), "{body}");
    assert_eq!(d.left(), 340, "the refusal held nothing");
}

#[test]
fn an_unpriced_model_is_refused_or_charged_the_default() {
    let body = br#"{"model":"gpt-x","max_tokens":10,"messages":[]}"#;
    let (p, s) = spend_policy(r#""refuse""#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let _ = d.headers(&mut c, len(body), false);
    let step = d.body(&mut c, body, true);
    assert_eq!(
        step.verdict,
        Verdict::Refuse(Refusal::Unpriced("gpt-x".into()))
    );
    assert_eq!(d.left(), 1_000, "nothing held");
    let text = c.unpriced_body("gpt-x");
    assert!(text.contains("Model gpt-x has no price"), "{text}");
    assert!(text.contains("\"code\":\"model_not_priced\""), "{text}");

    let (p, s) = spend_policy(r#"{"input":"1","output":"2"}"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, body);
    let _ = d.response(&mut c, json_head(None));
    let settled = d.chunk(&mut c, JSON_ANSWER, true).settled.unwrap();
    assert_eq!(settled.spent, 30 + 12 * 2, "the default price");
}

#[test]
fn a_stream_is_charged_its_reported_usage_in_money_and_a_cut_one_by_the_token_rules() {
    let (p, s) = spend_policy(r#""refuse""#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let body = br#"{"model":"m","stream":true,"max_tokens":10,"messages":[]}"#;
    let _ = d.headers(&mut c, len(body), false);
    let _ = d.body(&mut c, body, true);
    let _ = d.response(&mut c, sse(false));
    let stream = chat_stream(true);
    let _ = d.chunk(&mut c, stream.as_bytes(), true);
    // Completed with usage 9 + 4: 9 × 10 + 4 × 30.
    assert_eq!(d.left(), 1_000 - 210);

    // Cut before its usage came, under `on_incomplete: "received"`: the input estimate and
    // the streamed text / 4 as output, priced; as the token charge of the same stream is.
    let (p, s) = spend_policy(r#""refuse""#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let _ = d.headers(&mut c, len(body), false);
    let _ = d.body(&mut c, body, true);
    let input = c.estimate() - 10;
    let _ = d.response(&mut c, sse(false));
    let cut = stream.find("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[]").unwrap();
    let _ = d.chunk(&mut c, &stream.as_bytes()[..cut], false);
    let settled = d.log(&mut c).unwrap();
    let output = settled.charged - input;
    assert!(output >= 1, "{settled:?}");
    assert_eq!(settled.spent, input * 10 + output * 30, "{settled:?}");
    assert_eq!(d.left(), 1_000 - settled.spent);
}

#[test]
fn a_call_withdrawn_after_its_admission_gives_its_holds_back_and_is_never_settled() {
    let (p, s) = policy(1_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, CHAT);
    assert_eq!(c.holds().len(), 1);
    let held = c.holds()[0].reserved;
    assert_eq!(d.left(), 1_000 - held);
    // The service refused the reservation: its budget is spent elsewhere, back in 90 s.
    let spent = LimitStatus {
        allowed: false,
        remaining: 0,
        reset_after: Nanos::from_secs(3_600),
        retry_after: Nanos::from_secs(90),
    };
    let global = Decision::from_limits(vec![spent]).with_applied(vec![0]);
    let now = || T0;
    let mut env = Env {
        policy: &p,
        store: &mut d.store,
        now: &now,
    };
    c.withdraw(&mut env, Some(global));
    assert!(!c.awaits_response());
    assert!(c.holds().is_empty());
    assert_eq!(d.left(), 1_000, "the local hold is given back");
    assert_eq!(c.retry_after(), Some(Nanos::from_secs(90)));
    assert!(d.log(&mut c).is_none(), "nothing to settle");
}

#[test]
fn a_call_admitted_globally_shows_the_global_budget() {
    let (p, s) = policy(1_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    d.admitted(&mut c, CHAT);
    let global = LimitStatus {
        allowed: true,
        remaining: 42,
        reset_after: Nanos::from_secs(3_000),
        retry_after: Nanos::ZERO,
    };
    c.admitted_globally(Decision::from_limits(vec![global]).with_applied(vec![0]));
    let shown = c.tokens().unwrap();
    assert_eq!((shown.limits.len(), shown.limits[0].remaining), (1, 42));
    assert!(c.awaits_response());
    assert_eq!(c.holds().len(), 1, "the local hold stays until settlement");
}

/// Bedrock's ConverseStream transcripts: binary event streams.
const BEDROCK_STREAM: &[u8] =
    include_bytes!("../../../../fixtures/llm/bedrock-converse-stream.eventstream");
const BEDROCK_STREAM_BAD_CRC: &[u8] =
    include_bytes!("../../../../fixtures/llm/bedrock-converse-stream-bad-crc.eventstream");

#[test]
fn bedrock_event_streams_are_charged_their_usage_or_as_missing_usage_when_corrupt() {
    let path = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream";
    let body = br#"{"messages":[{"role":"user","content":[{"text":"Say hi"}]}],"inferenceConfig":{"maxTokens":100}}"#;
    for (missing, stream, charged) in [
        ("reservation", BEDROCK_STREAM, Some(1045 + 14)),
        ("nothing", BEDROCK_STREAM, Some(1045 + 14)),
        // Not trusted: the reservation under "reservation", what was received under "nothing"
        // (the prompt estimate and 36 bytes of text / 4).
        ("reservation", BEDROCK_STREAM_BAD_CRC, None),
        (
            "nothing",
            BEDROCK_STREAM_BAD_CRC,
            Some(body.len().div_ceil(4) as u64 + 9),
        ),
    ] {
        let (p, s) = policy(100_000, &format!(r#","on_missing_usage":"{missing}""#));
        let mut d = Drive::new(&p, s);
        let mut c = call(ApiKind::from_path(path)).with_path_model(ApiKind::model_in_path(path));
        d.admitted(&mut c, body);
        assert_eq!(c.model(), Some("claude-3-5-haiku-20241022"));
        let estimate = c.estimate();
        assert_eq!(estimate, body.len().div_ceil(4) as u64 + 100);
        let head = ResponseHead {
            content_type: Some(b"application/vnd.amazon.eventstream"),
            ..sse(false)
        };
        let _ = d.response(&mut c, head);
        for piece in stream.chunks(5) {
            assert_eq!(d.chunk(&mut c, piece, false).settled, None);
        }
        let settled = d.chunk(&mut c, b"", true).settled.expect("settled");
        let charged = charged.unwrap_or(estimate);
        assert_eq!(settled.charged, charged, "{missing}");
        assert_eq!(d.left(), 100_000 - charged, "{missing}");
    }
}

#[test]
fn a_bedrock_model_meets_its_budget_whatever_id_names_it_and_is_refused_the_aws_way() {
    let json = r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
        "tokens":[{"tokens":100000,"per":"minute"},
                  {"tokens":50,"per":"minute","model":"claude-sonnet-4-20250514","name":"sonnet"}]}],
        "llm":{"mode":"reserve"}}"#;
    let p = Policy::from_json(json.as_bytes()).unwrap();
    let mut store = Flaky::default();
    p.init_store(&mut store.inner).unwrap();
    let mut d = Drive::new(&p, store);
    d.spend(50);
    let converse = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    let anthropic = br#"{"model":"claude-sonnet-4-20250514","max_tokens":10,"messages":[]}"#;
    let invoke = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
    for (path, body, refused) in [
        (
            "/model/anthropic.claude-sonnet-4-20250514-v1:0/converse",
            &converse[..],
            true,
        ),
        (
            "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream",
            &converse[..],
            true,
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Feu.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke",
            &invoke[..],
            true,
        ),
        ("/v1/messages", &anthropic[..], true),
        (
            "/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke-with-response-stream",
            &invoke[..],
            false,
        ),
    ] {
        let api = ApiKind::from_path(path);
        let mut c = call(api).with_path_model(ApiKind::model_in_path(path));
        let _ = d.headers(&mut c, len(body), false);
        let step = d.body(&mut c, body, true);
        assert_eq!(
            step.verdict == Verdict::Refuse(Refusal::Denied),
            refused,
            "{path}: {step:?}"
        );
        if refused && api.is_bedrock() {
            let denial = c.denial_body(&p.tiers()[0]);
            assert!(
                denial.starts_with(
                    r#"{"message":"Rate limit reached for tokens in tier free (policy sonnet). Please try again in "#
                ) && denial.ends_with(r#"."}"#),
                "{denial}"
            );
            assert_eq!(
                c.style().headers(),
                &[("x-amzn-errortype", "ThrottlingException")]
            );
        }
    }
}

/// The store calls `run` makes on the drive's store: (gets, sets).
fn store_calls(d: &mut Drive<'_>, run: impl FnOnce(&mut Drive<'_>)) -> (u32, u32) {
    let (gets, sets) = (d.store.gets, d.store.sets);
    run(d);
    (d.store.gets - gets, d.store.sets - sets)
}

#[test]
fn admission_starts_from_the_budgets_the_peek_read() {
    let (p, s) = policy(100_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let peek = store_calls(&mut d, |d| {
        assert_eq!(
            d.headers(&mut c, len(CHAT), false).verdict,
            Verdict::Continue
        );
    });
    assert_eq!(peek, (1, 0), "the peek reads the caller's budgets");
    let admission = store_calls(&mut d, |d| {
        let step = d.body(&mut c, CHAT, true);
        assert_eq!(step.count, Some(Count::Allowed));
    });
    assert_eq!(
        admission,
        (0, 1),
        "one CAS write with the peek's value and CAS"
    );
    let held = c.estimate();
    assert_eq!(d.left(), 100_000 - held);
    assert_eq!(c.tokens().unwrap().limits[0].remaining, 100_000 - held);
}

#[test]
fn budgets_written_between_the_peek_and_admission_are_read_again() {
    let (p, s) = policy(100_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let mut c = chat();
    let _ = d.headers(&mut c, len(CHAT), false);
    d.spend(5_000); // another call of the caller, on another worker
    let admission = store_calls(&mut d, |d| {
        let step = d.body(&mut c, CHAT, true);
        assert_eq!(step.count, Some(Count::Allowed));
    });
    assert_eq!(
        admission,
        (1, 2),
        "the stale write lost its CAS: read again, written"
    );
    let held = c.estimate();
    assert_eq!(d.left(), 100_000 - 5_000 - held, "both calls held");
    assert_eq!(
        c.tokens().unwrap().limits[0].remaining,
        100_000 - 5_000 - held
    );
}

#[test]
fn a_refusal_is_never_decided_on_what_the_peek_read() {
    let (p, s) = policy(2_000, r#","default_max_tokens":100"#);
    let mut d = Drive::new(&p, s);
    let tier = &p.tiers()[0];
    // Another call holds all but 60 tokens: room for the least this call can cost (the peek
    // lets it on), not for its estimate.
    let other = match p.admit_tokens(
        tier,
        USER,
        None,
        Amount::tokens(1_940),
        T0,
        &mut d.store.inner,
    ) {
        TokenOutcome::Admitted { reservation, .. } => reservation,
        outcome => panic!("{outcome:?}"),
    };
    let mut c = chat();
    assert_eq!(
        d.headers(&mut c, len(CHAT), false).verdict,
        Verdict::Continue
    );
    // That call is refused after all and gives its tokens back before this body ends.
    p.release_reservation(tier, &other, T0, &mut d.store.inner);
    let admission = store_calls(&mut d, |d| {
        let step = d.body(&mut c, CHAT, true);
        assert_eq!(
            (step.verdict, step.count),
            (Verdict::Continue, Some(Count::Allowed)),
            "decided on the budget as it is, not as the peek saw it"
        );
    });
    assert_eq!(admission, (1, 1));
    assert_eq!(d.left(), 2_000 - c.estimate());
}

#[test]
fn a_held_body_is_admitted_at_the_instant_its_headers_were_decided() {
    let (p, mut s) = policy(1_000, r#","default_max_tokens":100"#);
    let tier = &p.tiers()[0];
    // All 1,000 spent at T0; half of it back 30 s later, all of it 60 s later.
    let spent = p.admit_tokens(tier, USER, None, Amount::tokens(1_000), T0, &mut s.inner);
    assert!(matches!(spent, TokenOutcome::Admitted { .. }), "{spent:?}");
    let half = Nanos(T0.0 + 30_000_000_000);
    let full = Nanos(T0.0 + 60_000_000_000);
    let mut c = chat();
    let at_headers = || half;
    let mut env = Env {
        policy: &p,
        store: &mut s,
        now: &at_headers,
    };
    assert_eq!(
        c.on_request_headers(&mut env, len(CHAT), false).verdict,
        Verdict::Continue
    );
    // The body's end, 30 s later: the clock there is not read.
    let readings = Cell::new(0);
    let at_end = || {
        readings.set(readings.get() + 1);
        full
    };
    let mut env = Env {
        policy: &p,
        store: &mut s,
        now: &at_end,
    };
    let step = c.on_request_body(&mut env, CHAT.len(), true, || CHAT.to_vec());
    assert_eq!(
        (step.verdict, step.count),
        (Verdict::Continue, Some(Count::Allowed))
    );
    assert_eq!(readings.get(), 0, "admitted without a clock reading");
    assert_eq!(
        c.decided_at(),
        Some(half),
        "a refusal's instants are computed from the decision's"
    );
    assert_eq!(
        c.tokens().unwrap().limits[0].remaining,
        500 - c.estimate(),
        "decided on the budget as it stood at the headers, not the fuller one at the end"
    );
    // A body that passes is admitted at each chunk's own instant.
    let (p, mut s) = policy(
        1_000,
        r#","default_max_tokens":100,"buffer_limit_bytes":16"#,
    );
    let mut c = chat();
    let mut env = Env {
        policy: &p,
        store: &mut s,
        now: &at_headers,
    };
    let _ = c.on_request_headers(&mut env, len(CHAT), false);
    let mut env = Env {
        policy: &p,
        store: &mut s,
        now: &at_end,
    };
    let _ = c.on_request_body(&mut env, CHAT.len(), true, || CHAT.to_vec());
    assert_eq!(readings.get(), 1, "a passing body reads the clock");
    assert_eq!(c.decided_at(), Some(full));
}
