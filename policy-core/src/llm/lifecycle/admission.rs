//! Admission of one call against its tier's token budgets, as early as what is known allows.
//!
//! - At the request headers, read-only ([`LlmCall::refuse_early`]): a caller whose budgets
//!   that count every model have no room for the least this call can cost.
//! - On the first chunk of a body that passes ([`LlmCall::admit_early`]): the prompt estimated
//!   from `content-length` (or that chunk) plus `default_max_tokens`, against the budgets that
//!   count every model and those of the model when `model` was in that chunk; raised as a body
//!   without `content-length` grows ([`LlmCall::top_up`]).
//! - Once the body is read ([`LlmCall::admit`]): every other budget of its model, and the
//!   early holds raised to what the whole body asks.
//!
//! Refused after an early admission, everything held is given back.

use alloc::string::String;
use alloc::vec::Vec;

use crate::budget::{Amount, Ask, Hold, LlmSettings, ModelScope, Peeked};
use crate::decision::Decision;
use crate::policy::TokenOutcome;
use crate::store::Store;
use crate::table::TableError;
use crate::tier::{Enforcement, Tier};
use crate::{Nanos, Policy};

use super::super::estimate_tokens;
use super::{Count, Early, Env, LlmCall, Phase, Refusal, RequestStep, Verdict};

/// What one admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every budget asked had room; the holds are kept.
    Admitted,
    /// A budget had no room.
    Denied,

    /// Every CAS race was lost.
    Contended,
    /// The store failed.
    StoreFailed,
    /// The model has no price and the price table refuses unpriced models.
    Unpriced,
}

impl LlmCall {
    /// Runs one admission (`early`: on a chunk of a body that passes; `None`: the body is
    /// read) at `at` (`None`: now, from the clock) and says what the filter does about it.
    pub(super) fn admission_step<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        early: Option<Early>,
        at: Option<Nanos>,
    ) -> RequestStep {
        let policy = env.policy;
        let (Some(tier), Some(llm)) = (policy.tiers().get(self.tier), policy.llm()) else {
            return RequestStep::go();
        };
        let now = at.unwrap_or_else(|| (env.now)());
        self.decided_at = Some(now);
        let admission = match early {
            Some(Early::First(size)) => self.admit_early(policy, tier, llm, size, now, env.store),
            Some(Early::More(seen)) => self.top_up(policy, tier, llm, seen, now, env.store),
            None => self.admit(policy, tier, now, env.store),
        };
        let (verdict, count) = match admission {
            // Counted once, at the last admission.
            Admission::Admitted => (Verdict::Continue, early.is_none().then_some(Count::Allowed)),
            Admission::Denied => (Verdict::Refuse(Refusal::Denied), Some(Count::Denied)),
            Admission::Contended => (Verdict::Refuse(Refusal::Contended), Some(Count::Contended)),
            Admission::StoreFailed => (LlmCall::store_failed(policy), Some(Count::StoreFailure)),
            Admission::Unpriced => {
                let model = self.unpriced_model.take().unwrap_or_default();
                (
                    Verdict::Refuse(Refusal::Unpriced(model)),
                    Some(Count::Denied),
                )
            }
        };
        if admission == Admission::StoreFailed && verdict == Verdict::Continue {
            self.phase = Phase::Unmetered;
        }
        if admission == Admission::Denied && tier.enforcement == Enforcement::Shadow {
            // Shadow mode: what enforcing would refuse goes on. Everything held was given
            // back with the refusal, so, as a would-be refusal of a request limit, it takes
            // nothing and is charged nothing: the budgets stay as enforcing would leave them.
            self.would_deny = true;
            self.phase = Phase::Unmetered;
            let mut step = RequestStep::verdict(Verdict::Continue);
            step.count = Some(Count::WouldDeny);
            return step;
        }
        let mut step = RequestStep::verdict(verdict);
        step.count = count;
        step
    }

    /// Gives back everything held so far (a call refused after an early admission).
    pub(super) fn give_back<S: Store>(&mut self, env: &mut Env<'_, S>) {
        let policy = env.policy;
        let Some(tier) = policy.tiers().get(self.tier) else {
            return;
        };
        if let Some(held) = self.reservation.take() {
            policy.release_reservation(tier, &held, (env.now)(), env.store);
        }
    }

    /// What strict global mode asks the service for on this call's behalf, when that is less
    /// than its local holds: a call whose input is stored upstream holds all its budgets have
    /// left on this Envoy ([`Ask::AllLeft`]), which says nothing of what is left globally, so
    /// the service is asked for the estimate the request itself shows.
    pub fn global_ask_cap(&self, policy: &Policy) -> Option<Amount> {
        self.stored_input.then(|| self.estimate_amount(policy))
    }

    /// The budgets held for the call (index, the caller's slot, tokens), once admitted; empty
    /// before admission and after settlement. Strict global mode checks these with the service
    /// ([`crate::global::strict_tokens`]).
    pub fn holds(&self) -> &[Hold] {
        self.reservation
            .as_ref()
            .map_or(&[], |r| r.holds.as_slice())
    }

    /// The service took the call's reservation too (strict global mode): the headers show the
    /// budgets' global states (`decision`, naming the budgets in `applied`).
    pub fn admitted_globally(&mut self, decision: Decision) {
        self.tokens = Some(match self.tokens.take() {
            Some(shown) => replace_status(shown, decision),
            None => decision,
        });
    }

    /// The call, admitted locally, is not admitted after all (strict global mode: the service
    /// refused its reservation, or could not be asked and `on_unavailable` is `deny`): gives
    /// back the local holds and ends the call without a settlement. `decision`: the budgets'
    /// global states, for the 429 (`None`: the states of the local admission stay).
    pub fn withdraw<S: Store>(&mut self, env: &mut Env<'_, S>, decision: Option<Decision>) {
        self.give_back(env);
        if let Some(decision) = decision {
            self.tokens = Some(decision);
        }
        self.phase = Phase::Done;
    }

    /// Refuses at the request headers a caller whose budgets cannot pay even the least this
    /// call can cost; returns whether it is refused (the budgets' states are then in
    /// `tokens`). A failing store is left to admission, which knows what to do about it.
    pub(super) fn refuse_early<S: Store>(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        now: Nanos,
        store: &mut S,
    ) -> bool {
        // The least money any call can cost: one micro-unit (a spent budget refuses).
        let least = Amount {
            tokens: self.least_cost(),
            spend: 1,
        };
        let refused = policy
            .peek_tokens_keeping(tier, &self.identity, least, now, store, &mut self.peeked)
            .ok()
            .flatten();
        let Some(decision) = refused else {
            return false;
        };
        self.tokens = Some(decision);
        self.phase = Phase::Done;
        true
    }

    /// Admits the call on the first chunk of a body too large to hold, before any of it goes
    /// upstream: the prompt estimated from `content-length` (or this first chunk) plus
    /// `default_max_tokens` (the output cap is not read yet), against the budgets that count
    /// every model — and those of the model, if `model` was in this chunk. The rest is decided
    /// by [`admit`](Self::admit) when the body ends.
    fn admit_early<S: Store>(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        llm: &LlmSettings,
        first_chunk: usize,
        now: Nanos,
        store: &mut S,
    ) -> Admission {
        if self.early.is_some() {
            return Admission::Admitted; // once only: holds are never taken twice
        }
        let model = self.path_model.clone().or_else(|| {
            self.rewriter
                .as_ref()
                .and_then(|r| r.model())
                .map(String::from)
        });
        if let Some(unpriced) = self.unpriced(policy, tier, model.as_deref()) {
            self.unpriced_model = Some(unpriced);
            self.phase = Phase::Done;
            return Admission::Unpriced;
        }
        let size = u64::try_from(first_chunk).unwrap_or(u64::MAX);
        let input = estimate_tokens(self.content_length.map_or(size, |n| n.max(size)));
        let output = llm.default_max_tokens.max(self.least_output());
        let estimate = input.saturating_add(output);
        let known = model.is_some();
        self.early = Some((estimate, model.clone()));
        let ask = self.ask_for(policy, model.as_deref(), input, output);
        // Read afresh: only the admission of a held body starts from the peek (a body that
        // passes is admitted as its chunks come, after the peek's value may have aged), and
        // what this writes would make the peek's value stale for the admission at the end.
        self.peeked = Peeked::new();
        let outcome = policy.admit_tokens_where(
            tier,
            &self.identity,
            model.as_deref(),
            Ask::Tokens(ask),
            now,
            store,
            |_, budget| known || budget.scope == ModelScope::All,
        );
        if !self.rewrites {
            // Only read for the model, which matters no more.
            self.rewriter = None;
        }
        self.take_outcome(outcome, false)
    }

    /// Raises the early admission of a body sent without `content-length` as more of it
    /// arrives, before each chunk is forwarded: `seen` bytes so far, estimated as at the first
    /// chunk. The holds already taken grow by the difference (the same budgets, the same
    /// slots); refused, everything held is given back and the call is refused before the rest
    /// of its body goes upstream.
    fn top_up<S: Store>(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        llm: &LlmSettings,
        seen: usize,
        now: Nanos,
        store: &mut S,
    ) -> Admission {
        let Some((held, model)) = self.early.clone() else {
            return Admission::Admitted;
        };
        if self.content_length.is_some() || self.reservation.is_none() {
            return Admission::Admitted;
        }
        let input = estimate_tokens(u64::try_from(seen).unwrap_or(u64::MAX));
        let output = llm.default_max_tokens.max(self.least_output());
        let need = input.saturating_add(output);
        if need <= held {
            return Admission::Admitted;
        }
        let ask = Ask::Tokens(self.ask_for(policy, model.as_deref(), input, output));
        let outcome = self.raise_holds(policy, tier, model.as_deref(), ask, now, store);
        if outcome == Admission::Admitted {
            self.early = Some((need, model));
        }
        outcome
    }

    /// Raises every hold of the early reservation to `ask` (an estimate, capped at each
    /// budget's burst as at admission; or all that is left). Refused, everything held is given
    /// back.
    fn raise_holds<S: Store>(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        model: Option<&str>,
        ask: Ask,
        now: Nanos,
        store: &mut S,
    ) -> Admission {
        let wanted: Vec<(usize, Ask)> = self
            .reservation
            .as_ref()
            .map(|r| {
                r.holds
                    .iter()
                    .filter_map(|h| {
                        let budget = tier.budgets.get(h.budget)?;
                        let burst = budget.rate.burst();
                        // Aimed at this budget only: the same number in every unit.
                        let more = match ask {
                            Ask::Tokens(need) => Ask::Tokens(Amount::each(
                                need.of(budget.meter).min(burst).saturating_sub(h.reserved),
                            )),
                            Ask::AllLeft { .. } => Ask::AllLeft {
                                at_least: Amount::ZERO,
                            },
                        };
                        (more != Ask::Tokens(Amount::ZERO)).then_some((h.budget, more))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (budget, more) in wanted {
            let outcome =
                policy.admit_tokens_where(tier, &self.identity, model, more, now, store, |i, _| {
                    i == budget
                });
            match outcome {
                TokenOutcome::Admitted {
                    reservation,
                    decision,
                } => {
                    let grown = reservation.holds.iter().map(|h| h.reserved).sum::<u64>();
                    if let Some(hold) = self
                        .reservation
                        .as_mut()
                        .and_then(|r| r.holds.iter_mut().find(|h| h.budget == budget))
                    {
                        hold.reserved = hold.reserved.saturating_add(grown);
                    }
                    // The headers show the budget as it is after this raise.
                    self.tokens = Some(match self.tokens.take() {
                        Some(shown) => replace_status(shown, decision),
                        None => decision,
                    });
                }
                other => {
                    if let Some(early) = self.reservation.take() {
                        policy.release_reservation(tier, &early, now, store);
                    }
                    return self.take_outcome(other, true);
                }
            }
        }
        if let (Some(mine), Ask::Tokens(need)) = (self.reservation.as_mut(), ask) {
            mine.estimate = mine.estimate.max(need.tokens);
        }
        Admission::Admitted
    }

    /// Admits the call once its body is read: against every budget that applies to its model
    /// and was not already held by [`admit_early`](Self::admit_early). A call whose input is
    /// stored upstream asks for all that is left (see [`Ask::AllLeft`]).
    fn admit<S: Store>(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        now: Nanos,
        store: &mut S,
    ) -> Admission {
        let model = self.model.clone();
        if let Some(unpriced) = self.unpriced(policy, tier, model.as_deref()) {
            // Refused after an early admission: give that back.
            if let Some(early) = self.reservation.take() {
                policy.release_reservation(tier, &early, now, store);
            }
            self.unpriced_model = Some(unpriced);
            self.phase = Phase::Done;
            return Admission::Unpriced;
        }
        let estimate = self.estimate_amount(policy);
        let ask = if self.stored_input {
            Ask::AllLeft { at_least: estimate }
        } else {
            Ask::Tokens(estimate)
        };
        if let Some((_, early_model)) = self.early.clone() {
            // Admitted early on what the first chunk showed: raise those holds to what the
            // whole body asks (its own cap; all that is left for input stored upstream).
            let raised = self.raise_holds(policy, tier, early_model.as_deref(), ask, now, store);
            if raised != Admission::Admitted {
                return raised;
            }
        }
        let held: Vec<usize> = self
            .reservation
            .as_ref()
            .map(|r| r.holds.iter().map(|h| h.budget).collect())
            .unwrap_or_default();
        let outcome = policy.admit_tokens_from(
            tier,
            &self.identity,
            model.as_deref(),
            ask,
            now,
            store,
            &mut self.peeked,
            |i, _| !held.contains(&i),
        );
        // The last admission: what the peek read is of no more use.
        self.peeked = Peeked::new();
        if !matches!(outcome, TokenOutcome::Admitted { .. }) {
            // Refused (or failed) after an early admission: give that back too.
            if let Some(early) = self.reservation.take() {
                policy.release_reservation(tier, &early, now, store);
            }
        }
        self.take_outcome(outcome, true)
    }

    /// Records an admission's outcome; `last`: the body is read, the response comes next.
    fn take_outcome(&mut self, outcome: TokenOutcome, last: bool) -> Admission {
        match outcome {
            TokenOutcome::Admitted {
                reservation,
                decision,
            } => {
                self.tokens = Some(match (self.tokens.take(), &self.reservation) {
                    (Some(early), Some(_)) => merge(early, decision),
                    _ => decision,
                });
                self.reservation = Some(match self.reservation.take() {
                    Some(mut early) => {
                        early.holds.extend(reservation.holds);
                        early.estimate = early.estimate.max(reservation.estimate);
                        early
                    }
                    None => reservation,
                });
                if last {
                    self.phase = Phase::Admitted;
                }
                Admission::Admitted
            }
            TokenOutcome::Denied { decision } => {
                self.tokens = Some(decision);
                self.phase = Phase::Done;
                Admission::Denied
            }
            TokenOutcome::StoreFailed(e) => {
                self.phase = Phase::Done;
                if e == TableError::Contended {
                    Admission::Contended
                } else {
                    Admission::StoreFailed
                }
            }
        }
    }
}

/// Two admissions' budget states as one (an early and a final admission of the same call).
fn merge(early: Decision, late: Decision) -> Decision {
    let mut limits = early.limits;
    let mut applied = early.applied;
    limits.extend(late.limits);
    applied.extend(late.applied);
    Decision::from_limits(limits).with_applied(applied)
}

/// `shown` with the budgets `newer` reports replaced by their newer states.
fn replace_status(shown: Decision, newer: Decision) -> Decision {
    let mut limits = shown.limits;
    let mut applied = shown.applied;
    for (budget, status) in newer.applied.iter().zip(newer.limits) {
        match applied.iter().position(|b| b == budget) {
            Some(i) => {
                if let Some(slot) = limits.get_mut(i) {
                    *slot = status;
                }
            }
            None => {
                applied.push(*budget);
                limits.push(status);
            }
        }
    }
    Decision::from_limits(limits).with_applied(applied)
}
