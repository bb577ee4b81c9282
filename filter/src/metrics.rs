//! Counters, kept in the VM and flushed to Envoy on the tick.
//!
//! Incrementing an Envoy stat is a host call; doing it once a second per worker instead of once
//! per request keeps the request path to the calls it cannot avoid. Envoy shows them as
//! `wasmcustom.tollgate.<tier>.<counter>` (Prometheus: `envoy_wasmcustom_tollgate_…`).

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// What is counted per tier.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// A request the tier admitted.
    Allowed = 0,
    /// A request the tier refused with 429 / RESOURCE_EXHAUSTED.
    Denied = 1,
    /// A request whose key had to share a way because its set was full of active keys.
    Saturated = 2,
    /// A request that met a store failure.
    StoreFailure = 3,
    /// A request refused for a repeated identity header.
    Ambiguous = 4,
}

const NAMES: [&str; 5] = [
    "allowed",
    "denied",
    "table_saturated",
    "store_failures",
    "ambiguous_identity",
];

/// Pending counts and their Envoy metric ids, per tier.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: Vec<[Option<u32>; 5]>,
    pending: Vec<[Cell<u64>; 5]>,
}

impl Metrics {
    /// Defines the counters of the given tiers (names from a validated policy).
    pub fn define<'a>(tiers: impl Iterator<Item = &'a str>) -> Metrics {
        let mut ids = Vec::new();
        let mut pending = Vec::new();
        for tier in tiers {
            let mut row = [None; 5];
            for (slot, name) in row.iter_mut().zip(NAMES) {
                *slot = hostcalls::define_metric(
                    MetricType::Counter,
                    &format!("tollgate.{tier}.{name}"),
                )
                .ok();
            }
            ids.push(row);
            pending.push(Default::default());
        }
        Metrics { ids, pending }
    }

    /// Counts one event for tier number `tier`.
    pub fn count(&self, tier: usize, event: Event) {
        if let Some(cell) = self
            .pending
            .get(tier)
            .and_then(|row| row.get(event as usize))
        {
            cell.set(cell.get().saturating_add(1));
        }
    }

    /// Hands pending counts to Envoy.
    pub fn flush(&self) {
        for (ids, row) in self.ids.iter().zip(&self.pending) {
            for (id, cell) in ids.iter().zip(row) {
                let n = cell.take();
                if let (Some(id), true) = (id, n > 0) {
                    let _ = hostcalls::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }
}
