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

impl LimitStatus {
    /// A placeholder for unused inline room in [`Limits`].
    const UNUSED: LimitStatus = LimitStatus {
        allowed: false,
        remaining: 0,
        reset_after: Nanos::ZERO,
        retry_after: Nanos::ZERO,
    };
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
    pub limits: Limits,
    /// For token budgets: which budget of the tier each entry of `limits` is (only the budgets
    /// that apply to the request's model are checked). Empty for request limits.
    pub applied: Vec<usize>,
}

impl Decision {
    /// Builds a decision from per-limit results (a `Vec` or a [`Limits`]), choosing the
    /// decisive limit.
    pub fn from_limits(limits: impl Into<Limits>) -> Decision {
        Decision::from_statuses(limits.into())
    }

    /// As [`from_limits`](Self::from_limits), from a [`Limits`] (the request path's: no
    /// allocation up to four limits).
    pub fn from_statuses(limits: Limits) -> Decision {
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

/// Limits kept in place. A tier has at most [`MAX_LIMITS`](crate::config::MAX_LIMITS) (8)
/// limits, nearly always 1–3 (per second, minute, day); room for 8 measured 164 instructions
/// more per decision than room for 4 (the decision is moved a few times on its way out, and
/// every byte of room is copied), so a tier with 5–8 limits takes one allocation instead.
const INLINE: usize = 4;

/// The per-limit states of a decision: a list that keeps up to [`INLINE`] entries in place (a
/// decision on the request path allocates nothing) and moves to the heap past that (a merge of
/// two admissions' budgets may hold more). Reads as a slice (`iter`, `len`, indexing, `get`).
#[derive(Clone)]
pub struct Limits(Repr);

// The inline variant is the point (boxing it would bring the allocation back).
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Repr {
    Inline {
        items: [LimitStatus; INLINE],
        len: usize,
    },
    Heap(Vec<LimitStatus>),
}

impl Limits {
    /// An empty list.
    pub const fn new() -> Limits {
        Limits(Repr::Inline {
            items: [LimitStatus::UNUSED; INLINE],
            len: 0,
        })
    }

    /// Appends `status`.
    pub fn push(&mut self, status: LimitStatus) {
        match &mut self.0 {
            Repr::Inline { items, len } => match items.get_mut(*len) {
                Some(slot) => {
                    *slot = status;
                    *len += 1;
                }
                None => {
                    let mut heap = Vec::with_capacity(INLINE * 2);
                    heap.extend_from_slice(items);
                    heap.push(status);
                    self.0 = Repr::Heap(heap);
                }
            },
            Repr::Heap(heap) => heap.push(status),
        }
    }

    /// The entries.
    pub fn as_slice(&self) -> &[LimitStatus] {
        match &self.0 {
            Repr::Inline { items, len } => items.get(..*len).unwrap_or_default(),
            Repr::Heap(heap) => heap,
        }
    }

    /// The entries, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [LimitStatus] {
        match &mut self.0 {
            Repr::Inline { items, len } => items.get_mut(..*len).unwrap_or_default(),
            Repr::Heap(heap) => heap,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new()
    }
}

impl core::ops::Deref for Limits {
    type Target = [LimitStatus];
    fn deref(&self) -> &[LimitStatus] {
        self.as_slice()
    }
}

impl core::ops::DerefMut for Limits {
    fn deref_mut(&mut self) -> &mut [LimitStatus] {
        self.as_mut_slice()
    }
}

impl core::fmt::Debug for Limits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for Limits {
    fn eq(&self, other: &Limits) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Limits {}

impl From<Vec<LimitStatus>> for Limits {
    fn from(v: Vec<LimitStatus>) -> Limits {
        if v.len() > INLINE {
            return Limits(Repr::Heap(v));
        }
        v.into_iter().collect()
    }
}

impl FromIterator<LimitStatus> for Limits {
    fn from_iter<I: IntoIterator<Item = LimitStatus>>(iter: I) -> Limits {
        let mut out = Limits::new();
        out.extend(iter);
        out
    }
}

impl Extend<LimitStatus> for Limits {
    fn extend<I: IntoIterator<Item = LimitStatus>>(&mut self, iter: I) {
        for status in iter {
            self.push(status);
        }
    }
}

impl<'a> IntoIterator for &'a Limits {
    type Item = &'a LimitStatus;
    type IntoIter = core::slice::Iter<'a, LimitStatus>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<'a> IntoIterator for &'a mut Limits {
    type Item = &'a mut LimitStatus;
    type IntoIter = core::slice::IterMut<'a, LimitStatus>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_mut_slice().iter_mut()
    }
}

/// The entries of a [`Limits`], by value.
#[derive(Debug)]
pub struct IntoIter {
    limits: Limits,
    next: usize,
}

impl Iterator for IntoIter {
    type Item = LimitStatus;
    fn next(&mut self) -> Option<LimitStatus> {
        let item = self.limits.as_slice().get(self.next).copied()?;
        self.next += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.limits.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl IntoIterator for Limits {
    type Item = LimitStatus;
    type IntoIter = IntoIter;
    fn into_iter(self) -> IntoIter {
        IntoIter {
            limits: self,
            next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn status(remaining: u64) -> LimitStatus {
        LimitStatus {
            allowed: true,
            remaining,
            reset_after: Nanos(remaining * 2),
            retry_after: Nanos::ZERO,
        }
    }

    #[test]
    fn limits_behave_as_a_vec_inline_and_past_it() {
        for n in [0, 1, INLINE - 1, INLINE, INLINE + 1, 3 * INLINE] {
            let want: Vec<LimitStatus> = (0..n as u64).map(status).collect();
            let mut pushed = Limits::new();
            for s in &want {
                pushed.push(*s);
            }
            let collected: Limits = want.iter().copied().collect();
            let converted = Limits::from(want.clone());
            for l in [&pushed, &collected, &converted] {
                assert_eq!(l.as_slice(), want.as_slice(), "{n}");
                assert_eq!(l.clone().into_iter().collect::<Vec<_>>(), want, "{n}");
                assert_eq!(alloc::format!("{l:?}"), alloc::format!("{want:?}"));
            }
            assert_eq!(pushed, converted);
            let mut doubled = pushed.clone();
            doubled.extend(pushed.clone());
            assert_eq!(doubled.len(), 2 * n);
            if let Some(first) = doubled.get_mut(0) {
                first.remaining = 99;
                assert_eq!(doubled[0].remaining, 99);
            }
        }
    }
}
