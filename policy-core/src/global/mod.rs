//! Global mode: buckets whose totals hold across Envoy replicas, through `tollgate-sync` (or, for
//! strict mode's plain checks, any Envoy rate limit service).
//!
//! The filter keeps deciding from its local buckets. What this module adds is pure: the policy's
//! `global` settings ([`GlobalSettings`]), the rate limit service's messages ([`proto`]), the
//! descriptors that name one bucket without its raw identity ([`descriptor`]), the bounded ledger
//! of admitted cells not yet sent ([`ledger`]) and the arithmetic that folds the service's answer
//! into a local bucket ([`fold`]). The filter's part is glue: a timer, a shared queue, a lease and
//! one gRPC call per round.

pub mod calendar;
pub mod descriptor;
pub mod fold;
pub mod ledger;
pub mod proto;
pub mod scoped;
pub mod strict;
pub mod strict_tokens;

use alloc::string::String;

use crate::time::Nanos;

/// How a global tier keeps its totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalMode {
    /// Decide locally, send the admitted cells in batches and fold the global state back: no
    /// call on the request path, overshoot bounded by the sync interval.
    Sync,
    /// One check per request before it is admitted: exact, at the cost of a round trip.
    Strict,
}

/// What strict mode does when the service does not answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Decide from the local buckets, as local mode would.
    Local,
    /// Admit.
    Allow,
    /// Refuse with 503.
    Deny,
}

/// The policy's top-level `global` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalSettings {
    /// The Envoy cluster (HTTP/2) of the rate limit service.
    pub cluster: String,
    /// Sync (default) or strict.
    pub mode: GlobalMode,
    /// The rate limit service's `domain`: every key of this policy lives under it.
    pub domain: String,
    /// How often the deltas are sent and the global state folded back.
    pub sync_interval: Nanos,
    /// The bound on each gRPC call.
    pub timeout: Nanos,
    /// The most buckets with unsent cells one Envoy keeps; beyond it new deltas are dropped
    /// (and counted), so a long outage of the service cannot grow memory without bound.
    pub max_pending_keys: u32,
    /// Strict mode's fallback.
    pub on_unavailable: OnUnavailable,
}

/// `sync_interval_ms` bounds: below 50 ms a round could not finish before the next; above a
/// minute the overshoot bound is as loose as having no sync at all for minute limits.
pub const SYNC_INTERVAL_MS: (u64, u64) = (50, 60_000);
/// `timeout_ms` bounds.
pub const TIMEOUT_MS: (u64, u64) = (10, 10_000);
/// The default and the largest `max_pending_keys`.
pub const MAX_PENDING_KEYS: (u32, u32) = (10_000, 1_000_000);
/// The most descriptors one round sends: `tollgate-sync`'s default `--max-descriptors`. Deltas
/// beyond it wait for the next round (they are kept, not dropped).
pub const MAX_DESCRIPTORS_PER_CALL: usize = 10_000;

/// What each descriptor adds to a sync round's call timeout (`timeout_ms` bounds a round of one
/// key): 150 µs.
///
/// A round is one Lua script over all its keys, and Redis runs it in ~30–40 µs per key on a small
/// machine (BENCHMARKS.md §8): 0.3–0.4 s for 10,000 keys, which no fixed timeout suited to a
/// round of ten keys would let finish. Splitting a round into several calls does not help when
/// they are sent together (Redis runs them one after another, so the last one waits for all) and
/// delays the keys of the later calls by whole intervals when they are not. So the call stays one
/// and its bound grows with it: `timeout_ms` + 150 µs per descriptor (1.75 s for 10,000 with the
/// default 250 ms), about four times what Redis needs, and above what `tollgate-sync` allows the
/// same batch in Redis (`--timeout-ms` + `--timeout-per-descriptor-us`, 100 µs by default), so that
/// the service answers (`UNAVAILABLE` if Redis is slow) before Envoy gives up on the call.
pub const TIMEOUT_PER_DESCRIPTOR: Nanos = Nanos(150_000);

/// The bound on one sync round's call of `descriptors` descriptors: `base` (the policy's
/// `timeout_ms`) plus [`TIMEOUT_PER_DESCRIPTOR`] for each.
pub fn round_timeout(base: Nanos, descriptors: usize) -> Nanos {
    let per = u64::try_from(descriptors).unwrap_or(u64::MAX);
    Nanos(
        base.0
            .saturating_add(TIMEOUT_PER_DESCRIPTOR.0.saturating_mul(per)),
    )
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_rounds_timeout_grows_with_its_descriptors() {
        let base = Nanos(250_000_000);
        assert_eq!(round_timeout(base, 0), base);
        assert_eq!(round_timeout(base, 1), Nanos(250_150_000));
        // 10,000 keys: 1.75 s, well above the 0.3–0.4 s Redis needs for them.
        assert_eq!(round_timeout(base, 10_000), Nanos(1_750_000_000));
        assert_eq!(round_timeout(Nanos(u64::MAX), usize::MAX), Nanos(u64::MAX));
    }
}
