//! A parsed policy and the one call the filter makes per request.

use alloc::vec::Vec;

use crate::bucket::Tat;
use crate::budget::{
    Amount, Ask, Budget, BudgetSet, Hold, LlmSettings, Mode, ModelScope, Peeked, Reservation,
};
use crate::decision::{Decision, LimitStatus, Limits};
use crate::global::GlobalSettings;
use crate::hash::{Prefix, Seed};
use crate::identity::IdentityError;
use crate::llm::price::PriceTable;
use crate::request::Attributes;
use crate::scope::{Caller, CallerRef, MissingScope};
use crate::store::{Store, StoreError};
use crate::table::{Placement, Table, TableError, Update};
use crate::tier::Tier;
use crate::time::Nanos;

/// What to do when the state store cannot be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreFailure {
    /// Let the request through unlimited (the default, as Envoy's own rate-limit filter does):
    /// a broken limiter should not take the API down.
    Allow,
    /// Refuse the request with 503.
    Deny,
}

/// A policy: ordered tiers and how to behave when state is unavailable.
#[derive(Debug)]
pub struct Policy {
    tiers: Vec<Tier>,
    /// Each tier's name hashed under the seed, aligned with `tiers`: the head of every key of
    /// its request limits, so a decision hashes only the caller's identity.
    tier_keys: Vec<Prefix>,
    /// `"record"` and each tier's name hashed under the seed, aligned with `tiers`: the head of
    /// every access-log scope hash of the tier ([`Policy::record_hash`]), so a record hashes
    /// only the caller's identity.
    record_keys: Vec<Prefix>,
    /// `"record"` hashed under the seed: the head of every scope's record hash
    /// ([`Policy::scope_hashes`]).
    record_key: Prefix,
    on_store_failure: OnStoreFailure,
    seed: Seed,
    llm: Option<LlmSettings>,
    global: Option<GlobalSettings>,
    prices: Option<PriceTable>,
    records: bool,
}

/// What the token budgets say about an LLM request.
#[derive(Debug)]
pub enum TokenOutcome {
    /// Admitted; the holds must be settled when the response ends.
    Admitted {
        /// What was held.
        reservation: Reservation,
        /// Each applicable budget's state, aligned with `applied`.
        decision: Decision,
    },
    /// A budget is spent.
    Denied {
        /// Each applicable budget's state, aligned with `applied`.
        decision: Decision,
    },
    /// The state store failed.
    StoreFailed(TableError),
}

/// What the policy says about one request.
///
/// `Decided` is the large variant on purpose: its decision and identity are kept in place, so
/// that deciding a request allocates nothing (a few hundred bytes moved instead).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome<'p> {
    /// No tier applies: the request is not limited.
    Unmatched,
    /// A tier applied and decided.
    Decided {
        /// The tier.
        tier: &'p Tier,
        /// Its position in [`Policy::tiers`], which per-tier state (metrics) is kept by.
        index: usize,
        /// The decision.
        decision: Decision,
        /// How the caller's key found its slot (`Shared` means the table is saturated there).
        placement: Placement,
        /// Who the caller is: the tier's identity and its scopes' (for the token budgets
        /// admitted later, and the records).
        caller: Caller,
    },
    /// The request lacks the identity of a scope that one of the tier's limits refuses
    /// without (`"on_missing": "refuse"`): answer 400, count nothing.
    MissingScope {
        /// The tier.
        tier: &'p Tier,
        /// Its position in [`Policy::tiers`].
        index: usize,
        /// What is missing.
        missing: MissingScope,
    },
    /// The request's identity is ambiguous (a repeated identity header).
    Ambiguous {
        /// The tier whose identity could not be read.
        tier: &'p Tier,
        /// Its position in [`Policy::tiers`].
        index: usize,
        /// Why.
        error: IdentityError,
    },
    /// The state store failed; [`Policy::on_store_failure`] says what to do.
    StoreFailed {
        /// The tier.
        tier: &'p Tier,
        /// Its position in [`Policy::tiers`].
        index: usize,
        /// What failed.
        error: TableError,
    },
}

impl Policy {
    pub(crate) fn new(
        mut tiers: Vec<Tier>,
        on_store_failure: OnStoreFailure,
        seed: Seed,
        llm: Option<LlmSettings>,
    ) -> Policy {
        // The tiers are complete here (limits, names, output switches): their constant text.
        for tier in &mut tiers {
            tier.text = crate::tier_text::TierText::of(tier);
        }
        let tier_keys = tiers
            .iter()
            .map(|t| seed.prefix(&[t.name.as_bytes()]))
            .collect();
        let record_keys = tiers
            .iter()
            .map(|t| seed.prefix(&[b"record", t.name.as_bytes()]))
            .collect();
        Policy {
            tiers,
            tier_keys,
            record_keys,
            record_key: seed.prefix(&[b"record"]),
            on_store_failure,
            seed,
            llm,
            global: None,
            prices: None,
            records: true,
        }
    }

    pub(crate) fn with_records(mut self, records: bool) -> Policy {
        self.records = records;
        self
    }

    /// Whether a decided request sets its access-log record (the policy's `records`, default
    /// on; README "Access-log records").
    pub fn records(&self) -> bool {
        self.records
    }

    pub(crate) fn with_prices(mut self, prices: Option<PriceTable>) -> Policy {
        self.prices = prices;
        self
    }

    /// The price table (`prices`), when the policy has one: what spend budgets charge.
    pub fn prices(&self) -> Option<&PriceTable> {
        self.prices.as_ref()
    }

    pub(crate) fn with_global(mut self, global: Option<GlobalSettings>) -> Policy {
        self.global = global;
        self
    }

    /// The `global` section, when the policy has one ([`crate::global`]).
    pub fn global(&self) -> Option<&GlobalSettings> {
        self.global.as_ref()
    }

    /// The hashing seed every replica running this policy shares (slot placement and the
    /// global descriptors' `id`).
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The LLM settings, when any tier has token budgets.
    pub fn llm(&self) -> Option<&LlmSettings> {
        self.llm.as_ref()
    }

    /// A 64-bit keyed hash (keyed by `hash_secret`) of the tier and the caller's identity: joins
    /// one caller's records (the filter's access-log record) without writing who it is.
    pub fn scope_hash(&self, tier: &Tier, identity: &[u8]) -> u64 {
        self.seed
            .slot(&[b"record", tier.name.as_bytes(), identity], 1)
            .fingerprint
    }

    /// [`scope_hash`](Self::scope_hash) of the tier at `index` in [`Policy::tiers`], from the
    /// hash state of its head kept since configure time: the request path hashes only the
    /// identity (the same value; BENCHMARKS.md §2, "the record and the stream's own cost").
    pub fn record_hash(&self, index: usize, identity: &[u8]) -> u64 {
        match (self.record_keys.get(index), self.tiers.get(index)) {
            (Some(prefix), _) => prefix.slot(&[identity], 1).fingerprint,
            (None, Some(tier)) => self.scope_hash(tier, identity),
            // Not a tier of this policy (the keys are made with the tiers, so never): no name.
            (None, None) => self.seed.slot(&[b"record", identity], 1).fingerprint,
        }
    }

    /// Each scope of the tier the caller was counted in, as its label and a 64-bit keyed hash
    /// of the scope's source and identity (keyed by `hash_secret`): one team has one hash in
    /// every tier, and the hash of a team `alice` is not the user `alice`'s (see
    /// [`crate::scope`]). Scopes the request lacked are left out.
    pub fn scope_hashes(&self, tier: &Tier, caller: &Caller) -> Vec<(alloc::string::String, u64)> {
        tier.scoping
            .scopes
            .iter()
            .zip(&caller.scopes)
            .filter_map(|(scope, id)| {
                let [a, b, c] = scope.key(id.as_deref()?);
                let hash = self.record_key.slot(&[a, b, c], 1).fingerprint;
                Some((scope.label.clone(), hash))
            })
            .collect()
    }

    /// Admits an LLM request against the tier's token budgets that apply to `model`.
    /// `estimate` is what reserve mode holds (see [`crate::budget`]).
    pub fn admit_tokens<'c, S: Store>(
        &self,
        tier: &Tier,
        caller: impl Into<CallerRef<'c>>,
        model: Option<&str>,
        estimate: Amount,
        now: Nanos,
        store: &mut S,
    ) -> TokenOutcome {
        let ask = Ask::Tokens(estimate);
        self.admit_tokens_where(tier, caller, model, ask, now, store, |_, _| true)
    }

    /// As [`admit_tokens`](Self::admit_tokens), asking `ask` of each budget that applies to
    /// `model` and that `pick` (given its index and the budget) selects. Admission can so be
    /// split in two: the budgets that count every model before the model is known, the others
    /// once it is.
    #[allow(clippy::too_many_arguments)] // each is one fact about the call; a struct would only rename them
    pub fn admit_tokens_where<'c, S: Store>(
        &self,
        tier: &Tier,
        caller: impl Into<CallerRef<'c>>,
        model: Option<&str>,
        ask: Ask,
        now: Nanos,
        store: &mut S,
        pick: impl Fn(usize, &Budget) -> bool,
    ) -> TokenOutcome {
        let mut none = Peeked::new();
        self.admit_tokens_from(tier, caller, model, ask, now, store, &mut none, pick)
    }

    /// As [`admit_tokens_where`](Self::admit_tokens_where), starting each budget set that
    /// `peeked` holds from the value the call's peek read
    /// ([`peek_tokens_keeping`](Self::peek_tokens_keeping)) instead of reading it again: one
    /// `get` fewer per such set when nobody wrote it in between, and the same outcome either
    /// way (see [`crate::table::BudgetTable::update_from`]). What it uses is taken out of
    /// `peeked`.
    #[allow(clippy::too_many_arguments)] // as admit_tokens_where, plus where to start from
    pub fn admit_tokens_from<'c, S: Store>(
        &self,
        tier: &Tier,
        caller: impl Into<CallerRef<'c>>,
        model: Option<&str>,
        ask: Ask,
        now: Nanos,
        store: &mut S,
        peeked: &mut Peeked,
        pick: impl Fn(usize, &Budget) -> bool,
    ) -> TokenOutcome {
        let caller = caller.into();
        let mode = self.llm.as_ref().map_or(Mode::Reserve, |l| l.mode);
        let estimate = match ask {
            Ask::Tokens(n) | Ask::AllLeft { at_least: n } => n.tokens,
        };
        // Per budget, in the tier's order (a set may hold budgets 0 and 2, another 1).
        let mut held: Vec<Option<Hold>> = alloc::vec![None; tier.budgets.len()];
        let mut shown: Vec<Option<(usize, LimitStatus, u64)>> =
            alloc::vec![None; tier.budgets.len()];
        let mut denied = false;
        // One pass per budget set: a read and at most one write for all of its budgets.
        for (index, set) in tier.budget_sets.iter().enumerate() {
            let asked: Vec<usize> = set
                .members
                .iter()
                .copied()
                .filter(|&i| {
                    tier.budgets
                        .get(i)
                        .is_some_and(|b| b.applies(model) && pick(i, b))
                })
                .collect();
            // A set's budgets count one key: the first tells whether the request has it (a
            // budget whose scope the request lacks, and skips, does not count it).
            let Some(key) = asked
                .first()
                .and_then(|&i| tier.scoping.budget_key(i, caller))
            else {
                continue;
            };
            let slot = set.slot(&self.seed, &tier.name, &key, model);
            let seen = peeked.take(index);
            match set.admit_from(&tier.budgets, store, slot, seen, &asked, mode, ask, now) {
                Ok(admission) => {
                    for (i, status, took) in admission.statuses {
                        denied |= !status.allowed;
                        if let (true, Some(h)) = (admission.held, held.get_mut(i)) {
                            *h = Some(Hold {
                                budget: i,
                                slot,
                                reserved: took,
                                at: now,
                            });
                        }
                        if let Some(s) = shown.get_mut(i) {
                            *s = Some((i, status, took));
                        }
                    }
                }
                Err(e) => {
                    let holds: Vec<Hold> = held.into_iter().flatten().collect();
                    self.release_tokens(tier, &holds, now, store);
                    return TokenOutcome::StoreFailed(e);
                }
            }
        }
        let holds: Vec<Hold> = held.into_iter().flatten().collect();
        let statuses: Vec<(usize, LimitStatus, u64)> = shown.into_iter().flatten().collect();
        let applied = statuses.iter().map(|(i, _, _)| *i).collect();
        if denied {
            self.release_tokens(tier, &holds, now, store);
            // Report the budgets whose holds were given back as they are again.
            let shown = statuses
                .into_iter()
                .map(|(i, s, took)| match tier.budgets.get(i) {
                    Some(b) if s.allowed => b.unheld(s, took),
                    _ => s,
                });
            return TokenOutcome::Denied {
                decision: Decision::from_statuses(shown.collect()).with_applied(applied),
            };
        }
        let decision = Decision::from_statuses(statuses.into_iter().map(|(_, s, _)| s).collect());
        TokenOutcome::Admitted {
            reservation: Reservation { holds, estimate },
            decision: decision.with_applied(applied),
        }
    }

    /// Whether the caller's budgets that count every model leave room for `cost`, the least this
    /// call can cost (see [`Budget::peek_state`]); nothing is taken or written. Budgets for one model
    /// (or one each) are not looked at: the model is not known yet. `Ok(Some(decision))` when
    /// one has no room: refuse now, before anything goes upstream.
    ///
    /// # Errors
    /// The store failed.
    pub fn peek_tokens<'c, S: Store>(
        &self,
        tier: &Tier,
        caller: impl Into<CallerRef<'c>>,
        cost: Amount,
        now: Nanos,
        store: &mut S,
    ) -> Result<Option<Decision>, TableError> {
        self.peek_tokens_keeping(tier, caller, cost, now, store, &mut Peeked::new())
    }

    /// As [`peek_tokens`](Self::peek_tokens), keeping in `peeked` each budget set's value as
    /// it read it, with its CAS, for the call's admission to start from
    /// ([`admit_tokens_from`](Self::admit_tokens_from)).
    ///
    /// # Errors
    /// The store failed.
    pub fn peek_tokens_keeping<'c, S: Store>(
        &self,
        tier: &Tier,
        caller: impl Into<CallerRef<'c>>,
        cost: Amount,
        now: Nanos,
        store: &mut S,
        peeked: &mut Peeked,
    ) -> Result<Option<Decision>, TableError> {
        let caller = caller.into();
        let mode = self.llm.as_ref().map_or(Mode::Reserve, |l| l.mode);
        // Per budget, in the tier's order.
        let mut shown: Vec<Option<LimitStatus>> = alloc::vec![None; tier.budgets.len()];
        for (index, set) in tier.budget_sets.iter().enumerate() {
            let asked: Vec<(usize, u64)> = set
                .members
                .iter()
                .filter_map(|&i| {
                    let budget = tier.budgets.get(i)?;
                    (budget.scope == ModelScope::All).then(|| (i, cost.of(budget.meter)))
                })
                .collect();
            let Some(key) = asked
                .first()
                .and_then(|&(i, _)| tier.scoping.budget_key(i, caller))
            else {
                continue;
            };
            let slot = set.slot(&self.seed, &tier.name, &key, None);
            let (shown_here, seen) =
                set.peek_seen(&tier.budgets, store, slot, &asked, mode, now)?;
            if let Some(seen) = seen {
                peeked.keep(index, seen);
            }
            for (&(i, _), status) in asked.iter().zip(shown_here) {
                if let Some(s) = shown.get_mut(i) {
                    *s = Some(status);
                }
            }
        }
        let (applied, statuses): (Vec<usize>, Vec<LimitStatus>) = shown
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s?)))
            .unzip();
        if statuses.iter().all(|s| s.allowed) {
            return Ok(None);
        }
        Ok(Some(Decision::from_limits(statuses).with_applied(applied)))
    }

    /// Gives back every hold of a reservation (the call was refused after it was admitted).
    pub fn release_reservation<S: Store>(
        &self,
        tier: &Tier,
        reservation: &Reservation,
        now: Nanos,
        store: &mut S,
    ) {
        self.release_tokens(tier, &reservation.holds, now, store);
    }

    /// Replaces the holds by the real cost `actual`; returns the budgets' states after it.
    pub fn settle_tokens<S: Store>(
        &self,
        tier: &Tier,
        reservation: &Reservation,
        actual: Amount,
        now: Nanos,
        store: &mut S,
    ) -> Result<Decision, TableError> {
        let holds = &reservation.holds;
        let mut settled: Vec<Option<LimitStatus>> = alloc::vec![None; holds.len()];
        for_each_set(tier, holds, |set, at| {
            let mine: Vec<&Hold> = at.iter().filter_map(|&h| holds.get(h)).collect();
            let shown = set.settle(&tier.budgets, store, &mine, actual, now)?;
            for (&h, status) in at.iter().zip(shown) {
                if let Some(slot) = settled.get_mut(h) {
                    *slot = Some(status);
                }
            }
            Ok(())
        })?;
        let (applied, statuses): (Vec<usize>, Vec<LimitStatus>) = holds
            .iter()
            .zip(settled)
            .filter_map(|(h, s)| Some((h.budget, s?)))
            .unzip();
        Ok(Decision::from_limits(statuses).with_applied(applied))
    }

    fn release_tokens<S: Store>(&self, tier: &Tier, holds: &[Hold], now: Nanos, store: &mut S) {
        // Best effort, each set on its own: a failed release leaves tokens held until they
        // refill.
        let _ = for_each_set::<core::convert::Infallible>(tier, holds, |set, at| {
            let mine: Vec<&Hold> = at
                .iter()
                .filter_map(|&h| holds.get(h))
                .filter(|h| h.reserved > 0)
                .collect();
            if !mine.is_empty() {
                let _ = set.settle(&tier.budgets, store, &mine, Amount::ZERO, now);
            }
            Ok(())
        });
    }

    /// The tiers in match order.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// What to do when the store fails.
    pub fn on_store_failure(&self) -> OnStoreFailure {
        self.on_store_failure
    }

    /// Creates every tier's table in the store. Call once per worker at configure time: keys
    /// that exist from the start can never be raced into existence by two workers at once.
    pub fn init_store<S: Store>(&self, store: &mut S) -> Result<u32, StoreError> {
        let mut created = 0;
        for table in self.tables() {
            created += table.init(store)?;
        }
        for set in self.budget_sets() {
            created += set.table.init(store)?;
        }
        Ok(created)
    }

    /// The shared-data keys this policy will ever create, and their total value bytes: the
    /// memory bound, before Envoy's per-entry overhead.
    pub fn footprint(&self) -> (u64, u64) {
        let requests = self
            .tables()
            .map(|t| (u64::from(t.sets()), t.set_bytes() as u64));
        let budgets = self
            .budget_sets()
            .map(|s| (u64::from(s.table.sets()), s.table.set_bytes() as u64));
        requests
            .chain(budgets)
            .fold((0, 0), |(keys, bytes), (sets, len)| {
                (keys + sets, bytes + sets * len)
            })
    }

    /// Every request table of the policy: each tier's own and its scoped limits'.
    fn tables(&self) -> impl Iterator<Item = &Table> {
        self.tiers.iter().flat_map(|t| {
            core::iter::once(&t.table)
                .filter(|_| t.limits.len() > t.scoping.limits.iter().flatten().count())
                .chain(t.scoping.limits.iter().flatten().map(|l| &l.table))
        })
    }

    /// Every budget set of the policy (where its token and spend budgets live).
    fn budget_sets(&self) -> impl Iterator<Item = &BudgetSet> {
        self.tiers.iter().flat_map(|t| t.budget_sets.iter())
    }

    /// Picks the tier, derives the key and decides: the request's cost ([`Tier::cost_of`], 1
    /// unless a cost rule says otherwise) is taken from every limit of the tier if all of them
    /// admit it, from none otherwise.
    pub fn check<A: Attributes, S: Store>(
        &self,
        attrs: &A,
        now: Nanos,
        store: &mut S,
    ) -> Outcome<'_> {
        for (index, tier) in self.tiers.iter().enumerate() {
            if !tier.matches(attrs) {
                continue;
            }
            let id = match tier.identity.derive_id(attrs) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(error) => return Outcome::Ambiguous { tier, index, error },
            };
            let scopes = match tier.scoping.derive(attrs) {
                Ok(Ok(scopes)) => scopes,
                Ok(Err(missing)) => {
                    return Outcome::MissingScope {
                        tier,
                        index,
                        missing,
                    }
                }
                Err(error) => return Outcome::Ambiguous { tier, index, error },
            };
            let caller = Caller { id, scopes };
            let id = &caller.id;
            let slot = match self.tier_keys.get(index) {
                Some(prefix) => prefix.slot(&[id], tier.table.sets()),
                None => self
                    .seed
                    .slot(&[tier.name.as_bytes(), id], tier.table.sets()),
            };
            let is_idle = |states: &[Tat]| {
                tier.limits
                    .iter()
                    .zip(states)
                    .all(|(l, s)| l.rate.is_full(*s, now))
            };
            if tier.limits.is_empty() {
                // A token-only tier: nothing to count per request.
                return Outcome::Decided {
                    tier,
                    index,
                    decision: Decision::from_limits(Vec::new()),
                    placement: Placement::Owned,
                    caller,
                };
            }
            let cost = tier.cost_of(attrs);
            if !tier.scoping.limits.is_empty() {
                return match crate::scope::check_scoped(&self.seed, tier, &caller, cost, now, store)
                {
                    Ok((decision, placement)) => Outcome::Decided {
                        tier,
                        index,
                        decision,
                        placement,
                        caller,
                    },
                    Err(error) => Outcome::StoreFailed { tier, index, error },
                };
            }
            let decide = |states: &mut [Tat], _: Placement| decide(tier, states, now, cost);
            return match tier.table.update(store, slot, is_idle, decide) {
                Ok((decision, placement)) => Outcome::Decided {
                    tier,
                    index,
                    decision,
                    placement,
                    caller,
                },
                Err(error) => Outcome::StoreFailed { tier, index, error },
            };
        }
        Outcome::Unmatched
    }
}

/// Calls `f` once per budget set and slot that `holds` use, with the positions in `holds` of
/// the holds there: one call's holds in a set share its slot (a set's budgets count one key),
/// so this is one pass per set.
fn for_each_set<E>(
    tier: &Tier,
    holds: &[Hold],
    mut f: impl FnMut(&BudgetSet, &[usize]) -> Result<(), E>,
) -> Result<(), E> {
    let mut done = alloc::vec![false; holds.len()];
    for (h, hold) in holds.iter().enumerate() {
        if done.get(h).copied().unwrap_or(true) {
            continue;
        }
        let Some((set, _)) = tier.budget_set(hold.budget) else {
            continue;
        };
        let at: Vec<usize> = holds
            .iter()
            .enumerate()
            .filter(|(_, o)| o.slot == hold.slot && set.column_of(o.budget).is_some())
            .map(|(o, _)| o)
            .collect();
        for &o in &at {
            if let Some(d) = done.get_mut(o) {
                *d = true;
            }
        }
        f(set, &at)?;
    }
    Ok(())
}

/// Checks every limit of the tier; takes from all of them only if all allow. The new states
/// are written over `states` ([`Update::WriteInPlace`]): no allocation, and no array of states
/// to zero and copy (which cost more Wasm operators than checking a limit twice).
fn decide(tier: &Tier, states: &mut [Tat], now: Nanos, cost: u64) -> Update<Decision> {
    let mut statuses = Limits::new();
    if let ([limit], [state, ..]) = (tier.limits.as_slice(), &mut *states) {
        // One limit (the usual tier): it alone decides, so it is checked once and, when it
        // admits, its new state is kept at once; a denial has no other limit to report.
        let c = limit.rate.check(*state, now, cost);
        statuses.push(LimitStatus::from(c));
        if !c.allowed {
            return Update::Keep(Decision::from_statuses(statuses));
        }
        *state = c.tat;
        return Update::WriteInPlace(Decision::from_statuses(statuses));
    }
    // Each limit checked once: its new state goes where it was, the old one is kept aside for a
    // denial, which reports the allowing limits as they stand.
    let mut before = [Tat::default(); crate::table::MAX_CELLS];
    for ((state, limit), old) in states.iter_mut().zip(&tier.limits).zip(before.iter_mut()) {
        let c = limit.rate.check(*state, now, cost);
        statuses.push(LimitStatus::from(c));
        *old = *state;
        *state = c.tat;
    }
    if !statuses.iter().all(|s| s.allowed) {
        for ((s, limit), old) in statuses.iter_mut().zip(&tier.limits).zip(before) {
            if s.allowed {
                let p = limit.rate.peek(old, now);
                s.remaining = p.remaining;
                s.reset_after = p.reset_after;
            }
        }
        return Update::Keep(Decision::from_statuses(statuses));
    }
    Update::WriteInPlace(Decision::from_statuses(statuses))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use alloc::format;
    use alloc::string::String;

    const TASK_API: &[u8] = include_bytes!("../../examples/task-api-policy.json");
    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    fn setup() -> (Policy, MemoryStore) {
        let p = Policy::from_json(TASK_API).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        (p, s)
    }

    fn send(
        p: &Policy,
        s: &mut MemoryStore,
        headers: &[(&str, &str)],
        n: u32,
        now: Nanos,
    ) -> (u32, u32) {
        let h: HeaderList = headers.iter().copied().collect();
        let (mut ok, mut denied) = (0, 0);
        for _ in 0..n {
            match p.check(&h, now, s) {
                Outcome::Decided { decision, .. } if decision.allowed => ok += 1,
                Outcome::Decided { .. } => denied += 1,
                other => panic!("{other:?}"),
            }
        }
        (ok, denied)
    }

    /// The record's hashes are kept heads finished with the identity: the values are those of
    /// the whole key hashed at once (what every earlier record holds), for every tier and scope.
    #[test]
    fn record_hashes_from_kept_heads_are_the_whole_keys_hashed() {
        let json = br#"{"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":2,"per":"minute"},
                      {"requests":2,"per":"minute","name":"team","scope":{"header":"x-team-id"}}]},
            {"name":"free-tier.v2","identity":{"header":"x-api-key"},
            "limits":[{"requests":2,"per":"minute"}]}],"hash_secret":"s3cret"}"#;
        let p = Policy::from_json(json).unwrap();
        let whole = |parts: &[&[u8]]| p.seed().slot(parts, 1).fingerprint;
        for (i, tier) in p.tiers().iter().enumerate() {
            for id in [
                &b""[..],
                b"alice",
                b"0123456789abcdef0123456789",
                &[0xff; 300],
            ] {
                let expected = whole(&[b"record", tier.name.as_bytes(), id]);
                assert_eq!(p.record_hash(i, id), expected, "{} {id:?}", tier.name);
                assert_eq!(p.scope_hash(tier, id), expected);
            }
        }
        let tier = &p.tiers()[0];
        let caller = crate::scope::Caller {
            id: b"alice".as_slice().into(),
            scopes: alloc::vec![Some(b"red".to_vec())],
        };
        let [a, b, c] = tier.scoping.scopes[0].key(b"red");
        assert_eq!(
            p.scope_hashes(tier, &caller),
            [(String::from("x-team-id"), whole(&[b"record", a, b, c]))]
        );
    }

    fn tier_of(p: &Policy, s: &mut MemoryStore, headers: &[(&str, &str)]) -> String {
        let h: HeaderList = headers.iter().copied().collect();
        match p.check(&h, T0, s) {
            Outcome::Decided { tier, .. } => tier.name.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn user_test_gets_exactly_100_of_110() {
        let (p, mut s) = setup();
        assert_eq!(
            send(&p, &mut s, &[("x-user-id", "test")], 110, T0),
            (100, 10)
        );
    }

    #[test]
    fn anonymous_callers_share_10_per_minute() {
        let (p, mut s) = setup();
        assert_eq!(send(&p, &mut s, &[], 15, T0), (10, 5));
    }

    #[test]
    fn premium_key_is_not_limited_at_110_requests() {
        let (p, mut s) = setup();
        assert_eq!(
            send(&p, &mut s, &[("x-api-key", "premium-abc")], 110, T0),
            (110, 0)
        );
    }

    #[test]
    fn a_second_user_is_unaffected_by_the_first() {
        let (p, mut s) = setup();
        send(&p, &mut s, &[("x-user-id", "test")], 110, T0);
        assert_eq!(
            send(&p, &mut s, &[("x-user-id", "other")], 100, T0),
            (100, 0)
        );
    }

    #[test]
    fn first_matching_tier_wins() {
        let (p, mut s) = setup();
        assert_eq!(
            tier_of(
                &p,
                &mut s,
                &[("x-api-key", "premium-1"), ("x-user-id", "u")]
            ),
            "premium"
        );
        assert_eq!(
            tier_of(&p, &mut s, &[("x-api-key", "basic-1"), ("x-user-id", "u")]),
            "authenticated"
        );
        assert_eq!(
            tier_of(&p, &mut s, &[("x-api-key", "basic-1")]),
            "anonymous"
        );
        assert_eq!(tier_of(&p, &mut s, &[("x-user-id", "")]), "anonymous");
    }

    #[test]
    fn the_bucket_refills_after_the_window() {
        let (p, mut s) = setup();
        send(&p, &mut s, &[("x-user-id", "test")], 100, T0);
        assert_eq!(send(&p, &mut s, &[("x-user-id", "test")], 1, T0), (0, 1));
        let later = Nanos(T0.0 + 600_000_000);
        assert_eq!(send(&p, &mut s, &[("x-user-id", "test")], 2, later), (1, 1));
    }

    #[test]
    fn a_flood_of_new_ids_keeps_the_table_bounded_and_a_steady_user_limited() {
        let p = Policy::from_json(
            br#"{"max_keys":1024,"tiers":[{"name":"u","identity":{"header":"x-user-id"},
                "limits":[{"requests":100,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let keys = s.len();
        let mut steady_ok = 0;
        for i in 0..50_000u64 {
            let now = Nanos(T0.0 + i * 1_000_000); // 50 s of a 1000-ids-per-second flood
            let id = format!("flood-{i}");
            send(&p, &mut s, &[("x-user-id", id.as_str())], 1, now);
            if i % 100 == 0 {
                steady_ok += send(&p, &mut s, &[("x-user-id", "steady")], 5, now).0;
            }
        }
        assert_eq!(s.len(), keys, "no key created after start-up");
        // 500 bursts of 5 over 50 s against 100/min: 100 at first, then 100/min × 50 s ≈ 83 more.
        assert!(
            (180..=184).contains(&steady_ok),
            "steady user admitted {steady_ok}"
        );
    }

    #[test]
    fn a_repeated_identity_header_is_ambiguous() {
        let (p, mut s) = setup();
        let h: HeaderList = [("x-user-id", "a"), ("x-user-id", "b")]
            .into_iter()
            .collect();
        assert!(matches!(p.check(&h, T0, &mut s), Outcome::Ambiguous { .. }));
    }

    /// A store whose every operation fails.
    struct DeadStore;

    impl Store for DeadStore {
        fn get(&mut self, _: &str) -> Result<Option<crate::store::Versioned>, StoreError> {
            Err(StoreError::Unavailable)
        }
        fn set(
            &mut self,
            _: &str,
            _: &[u8],
            _: Option<crate::store::Cas>,
        ) -> Result<(), StoreError> {
            Err(StoreError::Unavailable)
        }
    }

    /// The filter counts per-tier metrics by the index an outcome carries: it must be the
    /// tier's own position whatever the outcome, not a default (tier 0 is `premium` here).
    #[test]
    fn every_outcome_carries_its_tiers_position() {
        let (p, mut s) = setup();
        let position = |tier: &Tier| p.tiers().iter().position(|t| t.name == tier.name);
        let requests: [&[(&str, &str)]; 3] =
            [&[("x-api-key", "premium-1")], &[("x-user-id", "u")], &[]];
        for (want, headers) in requests.into_iter().enumerate() {
            let h: HeaderList = headers.iter().copied().collect();
            let Outcome::Decided { tier, index, .. } = p.check(&h, T0, &mut s) else {
                panic!("{headers:?} not decided");
            };
            assert_eq!((index, position(tier)), (want, Some(want)), "{headers:?}");
            let Outcome::StoreFailed { tier, index, .. } = p.check(&h, T0, &mut DeadStore) else {
                panic!("{headers:?}: a dead store is a store failure");
            };
            assert_eq!((index, position(tier)), (want, Some(want)), "{headers:?}");
        }
        let h: HeaderList = [("x-user-id", "a"), ("x-user-id", "b")]
            .into_iter()
            .collect();
        let Outcome::Ambiguous { tier, index, .. } = p.check(&h, T0, &mut s) else {
            panic!("a repeated identity header is ambiguous");
        };
        assert_eq!((index, tier.name.as_str()), (1, "authenticated"));
    }

    #[test]
    fn several_limits_all_apply() {
        let p = Policy::from_json(
            br#"{"tiers":[{"name":"u","identity":"shared",
                "limits":[{"requests":5,"per":"second"},{"requests":7,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        assert_eq!(send(&p, &mut s, &[], 6, T0), (5, 1));
        let h = HeaderList::default();
        let later = Nanos(T0.0 + 2_000_000_000);
        assert_eq!(send(&p, &mut s, &[], 3, later), (2, 1));
        let Outcome::Decided { decision, tier, .. } = p.check(&h, later, &mut s) else {
            panic!()
        };
        assert_eq!(tier.limits[decision.decisive].name, "u-minute");
    }

    /// 20 per minute (one cell every 3 s); `POST /api/v1/tasks/bulk` costs 10, any other
    /// method there 2 (the first rule that holds wins), everything else 1.
    const COSTLY: &[u8] = br#"{"tiers":[{"name":"api","identity":{"header":"x-user-id"},
        "limits":[{"requests":20,"per":"minute"},{"requests":100,"per":"hour"}],
        "costs":[{"match":{"path_prefix":"/api/v1/tasks/bulk","methods":["POST"]},"cost":10},
                 {"match":{"path_prefix":"/api/v1/tasks/bulk"},"cost":2}]}]}"#;

    fn call(p: &Policy, s: &mut MemoryStore, method: &str, path: &str, now: Nanos) -> Decision {
        let h: HeaderList = [(":method", method), (":path", path), ("x-user-id", "u")]
            .into_iter()
            .collect();
        match p.check(&h, now, s) {
            Outcome::Decided { decision, .. } => decision,
            other => panic!("{other:?}"),
        }
    }

    fn costly() -> (Policy, MemoryStore) {
        let p = Policy::from_json(COSTLY).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        (p, s)
    }

    const BULK: &str = "/api/v1/tasks/bulk";
    const SECS: u64 = 1_000_000_000;

    #[test]
    fn a_costly_request_takes_its_cost_from_every_limit() {
        let (p, mut s) = costly();
        let d = call(&p, &mut s, "POST", BULK, T0);
        assert!(d.allowed);
        assert_eq!(d.limits[0].remaining, 10);
        assert_eq!(d.limits[1].remaining, 90);
        assert_eq!(d.decisive, 0);
        let d = call(&p, &mut s, "GET", BULK, T0);
        assert_eq!((d.limits[0].remaining, d.limits[1].remaining), (8, 88));
        let d = call(&p, &mut s, "POST", "/api/v1/tasks", T0);
        assert_eq!((d.limits[0].remaining, d.limits[1].remaining), (7, 87));
        // Normalised like the tier's own match: this is the bulk path too.
        let d = call(&p, &mut s, "POST", "/api/v1/tasks/%62ulk?x=1", T0);
        assert!(!d.allowed, "10 asked, 7 left: {d:?}");
    }

    #[test]
    fn a_cost_of_exactly_the_cells_left_passes_and_empties_the_bucket() {
        let (p, mut s) = costly();
        for _ in 0..10 {
            assert!(call(&p, &mut s, "GET", "/x", T0).allowed);
        }
        let d = call(&p, &mut s, "POST", BULK, T0);
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.status().remaining, 0);
        assert!(!call(&p, &mut s, "GET", "/x", T0).allowed);
    }

    #[test]
    fn a_cost_above_the_cells_left_waits_until_that_many_are_free() {
        let (p, mut s) = costly();
        for _ in 0..11 {
            assert!(call(&p, &mut s, "GET", "/x", T0).allowed);
        }
        // 9 left, 10 asked: one more cell (3 s) is needed; nothing is taken by the refusal.
        let d = call(&p, &mut s, "POST", BULK, T0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after(), Some(Nanos(3 * SECS)));
        assert_eq!(d.status().remaining, 9);
        assert!(
            call(&p, &mut s, "GET", "/x", T0).allowed,
            "a cheap call still fits"
        );
        // Now 8 left: two cells short, 6 s.
        let d = call(&p, &mut s, "POST", BULK, T0);
        assert_eq!(d.retry_after(), Some(Nanos(6 * SECS)));
        let almost = Nanos(T0.0 + 6 * SECS - 1);
        assert!(!call(&p, &mut s, "POST", BULK, almost).allowed);
        let d = call(&p, &mut s, "POST", BULK, Nanos(T0.0 + 6 * SECS));
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.status().remaining, 0);
    }

    #[test]
    fn shadow_mode_decides_and_counts_but_never_refuses() {
        use crate::tier::Verdict;
        let p = Policy::from_json(
            br#"{"mode":"shadow","tiers":[{"name":"u","identity":{"header":"x-user-id"},
                "limits":[{"requests":10,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let h: HeaderList = [("x-user-id", "u")].into_iter().collect();
        let mut seen = alloc::vec::Vec::new();
        // 15 at once, then 6 s later (one request back): exactly what enforcing would refuse.
        for now in core::iter::repeat_n(T0, 15).chain([Nanos(T0.0 + 6 * SECS); 2]) {
            let Outcome::Decided { tier, decision, .. } = p.check(&h, now, &mut s) else {
                panic!()
            };
            seen.push(tier.verdict(&decision));
        }
        assert!(!seen.contains(&Verdict::Deny), "{seen:?}");
        let count = |v| seen.iter().filter(|x| **x == v).count();
        assert_eq!((count(Verdict::Allow), count(Verdict::WouldDeny)), (11, 6));
        assert_eq!(seen[15], Verdict::Allow, "a would-be refusal took nothing");
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Shadow mode never refuses, and what it counts `would_deny` is exactly what enforcing
        /// refuses: one policy in both modes fed the same traffic (users across teams, a user
        /// limit and a team limit, time moving on) gives `WouldDeny` where the enforcing copy
        /// gives `Deny` and `Allow` where it allows, because a would-be refusal takes nothing
        /// from any scope, as a refusal does.
        #[test]
        fn shadow_never_refuses_and_would_deny_is_what_enforcing_denies(
            user in 1u64..5,
            team in 1u64..8,
            traffic in proptest::collection::vec((0usize..4, 0usize..2, 0u64..1_500), 1..80),
        ) {
            use crate::tier::Verdict;
            let policy = |mode: &str| {
                Policy::from_json(
                    format!(
                        r#"{{"mode":"{mode}","max_keys":64,"tiers":[{{"name":"u",
                        "identity":{{"header":"x-user-id"}},
                        "limits":[{{"requests":{user},"per":"second","name":"user"}},
                                  {{"requests":{team},"per":"minute","name":"team",
                                    "scope":{{"header":"x-team-id"}}}}]}}]}}"#
                    )
                    .as_bytes(),
                )
                .unwrap()
            };
            let (shadow, enforce) = (policy("shadow"), policy("enforce"));
            let (mut in_shadow, mut enforcing) = (MemoryStore::new(), MemoryStore::new());
            shadow.init_store(&mut in_shadow).unwrap();
            enforce.init_store(&mut enforcing).unwrap();
            let mut now = T0;
            for (u, t, ms) in traffic {
                now = Nanos(now.0 + ms * 1_000_000);
                let (uid, tid) = (format!("u{u}"), format!("t{t}"));
                let h: HeaderList = [("x-user-id", uid.as_str()), ("x-team-id", tid.as_str())]
                    .into_iter()
                    .collect();
                let verdict = |p: &Policy, s: &mut MemoryStore| match p.check(&h, now, s) {
                    Outcome::Decided { tier, decision, .. } => tier.verdict(&decision),
                    other => panic!("{other:?}"),
                };
                let seen = verdict(&shadow, &mut in_shadow);
                let want = verdict(&enforce, &mut enforcing);
                proptest::prop_assert_ne!(seen, Verdict::Deny);
                let want = if want == Verdict::Deny { Verdict::WouldDeny } else { want };
                proptest::prop_assert_eq!(seen, want);
            }
        }
    }
}
