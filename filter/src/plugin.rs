//! What every stream of one worker shares: the parsed policy and the counters.
//!
//! Its own module so that the root context (which makes it) and the streams (which use it) both
//! depend on it rather than on each other.

use std::cell::Cell;

use policy_core::{Nanos, Policy};

use crate::global::SyncRounds;
use crate::metrics::Metrics;

/// The policy and the counters, shared by the root context and every stream of the worker.
#[derive(Debug)]
pub struct Plugin {
    pub policy: Policy,
    pub metrics: Metrics,
    /// Global mode's sync rounds, when the policy has global tiers in sync mode.
    pub global: Option<SyncRounds>,
    /// When the last store-failure warning was logged: a broken store must not flood the log
    /// with one line per request.
    last_warning: Cell<Option<Nanos>>,
}

impl Plugin {
    pub fn new(policy: Policy, metrics: Metrics) -> Plugin {
        Plugin {
            policy,
            metrics,
            global: None,
            last_warning: Cell::new(None),
        }
    }

    /// With sync mode's state (see [`crate::global`]).
    pub fn with_global(mut self, global: Option<SyncRounds>) -> Plugin {
        self.global = global;
        self
    }

    /// Whether a warning may be logged now (at most once a second per worker).
    pub fn warn_due(&self, now: Nanos) -> bool {
        let due = self
            .last_warning
            .get()
            .is_none_or(|last| now < last || now.0 - last.0 >= Nanos::SECOND.0);
        if due {
            self.last_warning.set(Some(now));
        }
        due
    }
}
