//! Counters, kept in the VM and flushed to Envoy on the tick.
//!
//! Incrementing an Envoy stat is a host call; doing it once a second per worker instead of once
//! per request keeps the request path to the calls it cannot avoid. Envoy shows them as
//! `wasmcustom.tollgate.<tier>.<counter>` (Prometheus: `tollgate_<tier>_<counter>`),
//! and per model as `wasmcustom.tollgate.<tier>.model.<model>.tokens_charged` (and
//! `.spend_charged`, in micro-units of the price table's currency, with a price table).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use proxy_wasm::types::MetricType;

use crate::host;

/// Declares the per-tier counters once: the enum, its stat names and the array size all come
/// from this list, so they cannot drift apart (Envoy's `ALL_LOCAL_RATE_LIMIT_STATS` pattern).
macro_rules! tier_counters {
    ($($(#[$doc:meta])* $event:ident => $stat:literal,)+) => {
        /// What is counted per tier.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Event {
            $($(#[$doc])* $event,)+
        }

        impl Event {
            /// Every event, in declaration order (the index is the event's discriminant).
            pub const ALL: &'static [Event] = &[$(Event::$event),+];
            /// How many events there are.
            pub const COUNT: usize = Event::ALL.len();

            /// The stat name under `wasmcustom.tollgate.<tier>.`.
            pub const fn stat(self) -> &'static str {
                match self {
                    $(Event::$event => $stat,)+
                }
            }
        }
    };
}

tier_counters! {
    /// A request the tier admitted.
    Allowed => "allowed",
    /// A request the tier refused with 429 / RESOURCE_EXHAUSTED because a limit was spent.
    Denied => "denied",
    /// A request a shadow-mode tier (`"mode": "shadow"`) would have refused and let through.
    WouldDeny => "would_deny",
    /// A request refused because its key lost every compare-and-swap race (heavy traffic on
    /// one key): refused rather than let through unmetered, but not a spent limit.
    Contended => "contended",
    /// A request whose key had to share a way because its set was full of active keys.
    Saturated => "table_saturated",
    /// A request that met a store failure.
    StoreFailure => "store_failures",
    /// A request refused for a repeated identity header.
    Ambiguous => "ambiguous_identity",
    /// A request refused because it lacks the identity of a scope one of the tier's limits
    /// refuses without (`"on_missing": "refuse"`).
    MissingScope => "missing_scope",
    /// LLM tokens charged from real usage (or the configured fallback), once the charge is
    /// written to the store.
    TokensCharged => "tokens_charged",
    /// An LLM call whose charge could not be written (the store failed, or every race was
    /// lost): its hold stays until it refills, and its tokens are not in `tokens_charged`.
    SettleFailures => "settle_failures",
    /// LLM tokens held by reservations.
    TokensReserved => "tokens_reserved",
    /// LLM tokens given back when usage was below the reservation.
    TokensRefunded => "tokens_refunded",
    /// Money charged to LLM calls (with a price table), in micro-units of its currency
    /// (1,000,000 = one unit), once the charge is written to the store.
    SpendCharged => "spend_charged",
    /// A request of a global-strict tier checked with the rate limit service (strict mode).
    GlobalChecks => "global_checks",
    /// A request the rate limit service refused (`OVER_LIMIT`; also counted in `denied`).
    GlobalOverLimit => "global_over_limit",
    /// A check without a usable answer (the call failed, timed out, or answered what cannot be
    /// read): `on_unavailable` decided instead.
    GlobalUnavailable => "global_unavailable",
}

/// Pending counts and their Envoy metric ids, per tier.
#[derive(Debug, Default)]
pub struct Metrics {
    tiers: Vec<String>,
    ids: Vec<[Option<u32>; Event::COUNT]>,
    pending: Vec<[Cell<u64>; Event::COUNT]>,
    /// Per (tier, model, stat): metric id and pending amount. Models appear at run time.
    models: RefCell<BTreeMap<(usize, String, ModelStat), ModelCounter>>,
}

/// What a per-model counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModelStat {
    /// Tokens charged (`tokens_charged`).
    TokensCharged,
    /// Money charged, in micro-units (`spend_charged`).
    SpendCharged,
}

impl ModelStat {
    fn stat(self) -> &'static str {
        match self {
            ModelStat::TokensCharged => "tokens_charged",
            ModelStat::SpendCharged => "spend_charged",
        }
    }
}

/// A per-model counter: its Envoy metric id once defined, and the tokens not yet flushed.
type ModelCounter = (Option<u32>, u64);

/// Caps the per-model counters: model names come from request bodies.
const MAX_MODELS: usize = 256;

fn stat_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl Metrics {
    /// Defines the counters of the given tiers (names from a validated policy).
    pub fn define<'a>(tiers: impl Iterator<Item = &'a str>) -> Metrics {
        let mut m = Metrics::default();
        for tier in tiers {
            let mut row = [None; Event::COUNT];
            for (slot, event) in row.iter_mut().zip(Event::ALL) {
                *slot = host::define_metric(
                    MetricType::Counter,
                    &format!("tollgate.{tier}.{}", event.stat()),
                )
                .ok();
            }
            m.tiers.push(tier.to_owned());
            m.ids.push(row);
            m.pending.push(Default::default());
        }
        m
    }

    /// Counts one event for tier number `tier`.
    pub fn count(&self, tier: usize, event: Event) {
        self.add(tier, event, 1);
    }

    /// Counts `n` of an event for tier number `tier`.
    pub fn add(&self, tier: usize, event: Event, n: u64) {
        if let Some(cell) = self
            .pending
            .get(tier)
            .and_then(|row| row.get(event as usize))
        {
            cell.set(cell.get().saturating_add(n));
        }
    }

    /// Counts tokens (or money) charged for a model, up to [`MAX_MODELS`] counters.
    pub fn add_model(&self, tier: usize, model: &str, stat: ModelStat, n: u64) {
        let mut models = self.models.borrow_mut();
        let key = (tier, stat_safe(model), stat);
        if let Some(entry) = models.get_mut(&key) {
            entry.1 = entry.1.saturating_add(n);
        } else if models.len() < MAX_MODELS {
            models.insert(key, (None, n));
        }
    }

    /// Hands pending counts to Envoy.
    pub fn flush(&self) {
        for (ids, row) in self.ids.iter().zip(&self.pending) {
            for (id, cell) in ids.iter().zip(row) {
                let n = cell.take();
                if let (Some(id), true) = (id, n > 0) {
                    let _ = host::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        for ((tier, model, stat), (id, n)) in self.models.borrow_mut().iter_mut() {
            if *n == 0 {
                continue;
            }
            if id.is_none() {
                let tier_name = self.tiers.get(*tier).map_or("unknown", String::as_str);
                let name = format!("tollgate.{tier_name}.model.{model}.{}", stat.stat());
                *id = host::define_metric(MetricType::Counter, &name).ok();
            }
            if let Some(id) = id {
                let _ = host::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
                *n = 0;
            }
        }
    }
}
