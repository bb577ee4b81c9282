//! Global mode: buckets whose totals hold across Envoy replicas, through `tollgate-sync` (or, for
//! strict mode's plain checks, any Envoy rate limit service).
//!
//! The filter keeps deciding from its local buckets. What this module adds is pure: the policy's
//! `global` settings ([`GlobalSettings`]), the rate limit service's messages ([`proto`]), the
//! descriptors that name one bucket without its raw identity ([`descriptor`]), the bounded ledger
//! of admitted cells not yet sent ([`ledger`]) and the arithmetic that folds the service's answer
//! into a local bucket ([`fold`]). The filter's part is glue: a timer, a shared queue, a lease and
//! one gRPC call per round.

pub mod descriptor;
pub mod fold;
pub mod ledger;
pub mod proto;
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
