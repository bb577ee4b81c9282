//! How many times the filter called each host function, process-wide: what a test compares to
//! show that a feature adds no host call to the request path (as `benches/count-hostcalls` does
//! in real Envoy).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Calls per import name. Cloning shares.
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Calls {
    pub(crate) fn count(&self, import: &'static str) {
        self.add(import, 1);
    }

    /// Adds `n` to `name`'s count (the fuel an export call burnt, for [`crate::Shared::fuel`]).
    pub(crate) fn add(&self, name: &'static str, n: u64) {
        let mut calls = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *calls.entry(name).or_default() += n;
    }

    /// Every import called so far and how often.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// All calls so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}
