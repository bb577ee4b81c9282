//! What a policy decided, carrying everything a response needs.

use alloc::vec::Vec;

use crate::time::Nanos;

/// The state of one limit after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// Whether this limit alone would admit the request.
    pub allowed: bool,
    /// Whole units left.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_after: Nanos,
    /// When denied: the shortest wait after which the request would pass this limit.
    pub retry_after: Nanos,
}

impl From<crate::bucket::Check> for LimitStatus {
    /// A bucket's answer as a limit's state: whether it admits, what is left, when it is full,
    /// and (denied) how long to wait.
    fn from(c: crate::bucket::Check) -> LimitStatus {
        LimitStatus {
            allowed: c.allowed,
            remaining: c.remaining,
            reset_after: c.reset_after,
            retry_after: c.retry_after,
        }
    }
}

/// A decision on one request for one tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// Index of the limit that decided: the denying limit with the longest wait, or, when
    /// allowed, the one with the fewest units left. Single-value headers report this one.
    pub decisive: usize,
    /// Every limit of the tier, in config order.
    pub limits: Vec<LimitStatus>,
    /// For token budgets: which budget of the tier each entry of `limits` is (only the budgets
    /// that apply to the request's model are checked). Empty for request limits.
    pub applied: Vec<usize>,
}

impl Decision {
    /// Builds a decision from per-limit results, choosing the decisive limit.
    pub fn from_limits(limits: Vec<LimitStatus>) -> Decision {
        let allowed = limits.iter().all(|l| l.allowed);
        let decisive = if allowed {
            limits
                .iter()
                .enumerate()
                .min_by_key(|(i, l)| (l.remaining, *i))
                .map_or(0, |(i, _)| i)
        } else {
            limits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.allowed)
                .max_by_key(|(i, l)| (l.retry_after, core::cmp::Reverse(*i)))
                .map_or(0, |(i, _)| i)
        };
        Decision {
            allowed,
            decisive,
            limits,
            applied: Vec::new(),
        }
    }

    /// Records which budgets the entries of `limits` are.
    pub fn with_applied(mut self, applied: Vec<usize>) -> Decision {
        self.applied = applied;
        self
    }

    /// The decisive limit's status.
    pub fn status(&self) -> LimitStatus {
        self.limits
            .get(self.decisive)
            .copied()
            .unwrap_or(LimitStatus {
                allowed: self.allowed,
                remaining: 0,
                reset_after: Nanos::ZERO,
                retry_after: Nanos::ZERO,
            })
    }

    /// When denied, how long to wait: the longest wait among the denying limits.
    pub fn retry_after(&self) -> Option<Nanos> {
        (!self.allowed).then(|| self.status().retry_after)
    }
}
