//! Shared fixtures: the compiled modules (compiled once per test binary), policies, and helpers
//! that read tollgate's responses.

#![allow(dead_code)]

use std::sync::OnceLock;

use host_tests::{Harness, HostError, Outcome, Plugin};

/// The hand-written probe module the host self-tests use.
pub fn probe() -> &'static Plugin {
    static PROBE: OnceLock<Plugin> = OnceLock::new();
    PROBE.get_or_init(|| Plugin::from_bytes(include_str!("probe.wat")).unwrap())
}

/// tollgate's release module. A missing module fails the test with the instruction to build it.
pub fn tollgate() -> &'static Plugin {
    static TOLLGATE: OnceLock<Result<Plugin, String>> = OnceLock::new();
    match TOLLGATE.get_or_init(|| Plugin::tollgate().map_err(|e| e.to_string())) {
        Ok(plugin) => plugin,
        Err(message) => panic!("{message}"),
    }
}

/// The example policy: premium (1000/min by x-api-key `premium-*`), authenticated (100/min by
/// x-user-id), anonymous (10/min shared).
pub const TASK_API: &str = include_str!("../../../examples/task-api-policy.json");

/// A one-tier policy limiting each `x-user-id` to `requests` per `per`, with extra top-level
/// fields (e.g. `"on_store_failure":"deny",`) spliced in front.
pub fn users_policy(requests: u64, per: &str, top: &str) -> String {
    format!(
        r#"{{{top}"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":{requests},"per":"{per}"}}]}}]}}"#
    )
}

/// `workers` workers of tollgate configured with `policy`.
pub fn tollgate_with(workers: usize, policy: &str) -> Harness {
    Harness::new(tollgate())
        .workers(workers)
        .configure(policy)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends one request as `user` and says whether it got through.
pub fn send_as(h: &Harness, worker: usize, user: &str) -> Result<Outcome, HostError> {
    h.request(worker, &[("x-user-id", user)])
}

/// A numeric response header.
pub fn number(out: &Outcome, name: &str) -> u64 {
    out.header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", out.headers()))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The body as JSON.
pub fn json(out: &Outcome) -> serde_json::Value {
    serde_json::from_slice(out.body()).unwrap_or_else(|e| panic!("{e}: {:?}", out.body()))
}

/// Asserts a 429 is self-consistent, with `tier`'s single limit of `limit` per `window` seconds,
/// and returns its Retry-After.
pub fn assert_consistent_denial(out: &Outcome, tier: &str, limit: u64, window: u64) -> u64 {
    let Outcome::LocalReply {
        status, headers, ..
    } = out
    else {
        panic!("expected a 429, got {out:?}")
    };
    assert_eq!(*status, 429);
    for name in [
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "content-type",
    ] {
        assert_eq!(headers.count(name), 1, "{name} in {headers:?}");
    }
    let retry = number(out, "retry-after");
    let remaining = number(out, "x-ratelimit-remaining");
    let reset = number(out, "x-ratelimit-reset");
    assert!(retry >= 1, "a denial waits at least a second");
    assert_eq!(remaining, 0);
    assert_eq!(number(out, "x-ratelimit-limit"), limit);
    assert_eq!(
        out.header("ratelimit-policy"),
        Some(format!("\"{tier}\";q={limit};w={window}").as_str())
    );
    assert_eq!(
        out.header("ratelimit"),
        Some(format!("\"{tier}\";r={remaining};t={reset}").as_str())
    );
    assert_eq!(out.header("content-type"), Some("application/json"));
    let body = json(out);
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["tier"], tier);
    assert_eq!(body["limit"], limit);
    assert_eq!(body["window_seconds"], window);
    assert_eq!(body["retry_after_seconds"], retry);
    retry
}

/// Asserts an admitted request carries agreeing rate-limit headers; returns `remaining`.
pub fn assert_consistent_admission(out: &Outcome, tier: &str, limit: u64) -> u64 {
    assert!(out.is_continue(), "expected admission, got {out:?}");
    assert!(out.header("retry-after").is_none(), "{out:?}");
    let remaining = number(out, "x-ratelimit-remaining");
    let reset = number(out, "x-ratelimit-reset");
    assert_eq!(number(out, "x-ratelimit-limit"), limit);
    assert_eq!(
        out.header("ratelimit"),
        Some(format!("\"{tier}\";r={remaining};t={reset}").as_str())
    );
    remaining
}

/// A small deterministic PRNG (xorshift64*), so "random" spreads are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
