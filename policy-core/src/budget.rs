//! Token budgets: buckets whose cells are LLM tokens, per tier, per caller, optionally per model.
//!
//! A request's cost is unknown until its response ends, so admission and charging are split:
//! - *reserve* (the default) takes an estimate up front — the client's own output cap plus a
//!   prompt estimate — and denies if it does not fit, so concurrent requests overshoot the
//!   budget by at most what their real usage exceeds their estimates (a call whose input is
//!   stored upstream has no estimate worth the name and asks for all that is left,
//!   [`Ask::AllLeft`]); [`Budget::settle_state`] later replaces the estimate by the real usage
//!   (refund or debit);
//! - *charge after* only checks that something is left and charges the real usage at the end,
//!   letting the budget go into debt, as most gateways do.

use alloc::string::String;
use alloc::vec::Vec;

use crate::bucket::{Rate, Tat};
use crate::decision::LimitStatus;
use crate::hash::{Seed, Slot};
use crate::llm::cost::Cost;
use crate::llm::ApiKind;
use crate::model_match::ModelMatch;
use crate::store::Store;
use crate::table::{BudgetTable, Placement, Seen, TableError, Update};
use crate::time::Nanos;

/// Which requests a budget counts, and whether models share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelScope {
    /// Every model, one budget for all of them.
    All,
    /// Every model, a separate budget for each (`"model": "*"`).
    Each,
    /// Only the models `model` names: names and their dated snapshots and `-latest` alias (see
    /// [`base_model`]), aliases, prefixes ([`ModelMatch`]).
    Only(ModelMatch),
}

/// The model a snapshot name stands for: `gpt-4o-mini-2024-07-18` → `gpt-4o-mini`,
/// `claude-3-5-sonnet-20241022` and `claude-3-5-sonnet-latest` → `claude-3-5-sonnet`, and
/// Vertex AI's `claude-3-5-sonnet@20241022` (its model path names snapshots with `@`) too.
///
/// Providers publish a model under a base name and under dated snapshots of it; a budget written
/// for the base must not be escaped by naming a snapshot. One suffix is removed: `-YYYY-MM-DD`
/// (OpenAI), `-YYYYMMDD` or `@YYYYMMDD` (Anthropic; Vertex AI), each with a real month
/// (01–12) and day (01–31), or `-latest`. Anything else is its own model: `gpt-4-0613` (4-digit OpenAI dates are ambiguous
/// with other numbering such as Mistral's `-2407`), `gpt-4o` is not `gpt-4o-mini`.
pub fn base_model(model: &str) -> &str {
    if let Some(base) = model.strip_suffix("-latest") {
        if !base.is_empty() {
            return base;
        }
    }
    let b = model.as_bytes();
    let dated = |digits: &[u8], month: &[u8], day: &[u8]| {
        let num = |d: &[u8]| {
            d.iter().try_fold(0u32, |n, c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        num(digits).is_some()
            && num(month).is_some_and(|m| (1..=12).contains(&m))
            && num(day).is_some_and(|d| (1..=31).contains(&d))
    };
    // -YYYY-MM-DD: 11 bytes.
    if let Some(i) = b.len().checked_sub(11) {
        if let (Some(b'-'), Some(b'-'), Some(b'-')) = (b.get(i), b.get(i + 5), b.get(i + 8)) {
            if i > 0
                && dated(
                    b.get(i + 1..i + 5).unwrap_or(&[]),
                    b.get(i + 6..i + 8).unwrap_or(&[]),
                    b.get(i + 9..).unwrap_or(&[]),
                )
            {
                return model.get(..i).unwrap_or(model);
            }
        }
    }
    // -YYYYMMDD (Anthropic), @YYYYMMDD (Anthropic's models on Vertex AI): 9 bytes.
    if let Some(i) = b.len().checked_sub(9) {
        if i > 0
            && matches!(b.get(i), Some(&b'-' | &b'@'))
            && dated(
                b.get(i + 1..i + 5).unwrap_or(&[]),
                b.get(i + 5..i + 7).unwrap_or(&[]),
                b.get(i + 7..).unwrap_or(&[]),
            )
        {
            return model.get(..i).unwrap_or(model);
        }
    }
    model
}

/// What a budget's cells are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meter {
    /// Tokens, as `llm.count` counts them.
    Tokens,
    /// Micro-units of the price table's currency ([`crate::llm::price`]).
    Spend,
}

/// What one call asks of (or is charged to) a budget, in each unit a budget may count: the
/// lifecycle computes both from the same usage (or estimate), and each budget takes its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    /// Tokens (`llm.count`).
    pub tokens: u64,
    /// Micro-units of the currency.
    pub spend: u64,
}

impl Amount {
    /// No tokens and no money.
    pub const ZERO: Amount = Amount {
        tokens: 0,
        spend: 0,
    };

    /// `tokens` tokens and no money: for a policy without spend budgets.
    pub fn tokens(tokens: u64) -> Amount {
        Amount { tokens, spend: 0 }
    }

    /// The same `n` in every unit: for an ask aimed at one budget only.
    pub fn each(n: u64) -> Amount {
        Amount {
            tokens: n,
            spend: n,
        }
    }

    /// The part a budget counting `meter` takes.
    pub fn of(&self, meter: Meter) -> u64 {
        match meter {
            Meter::Tokens => self.tokens,
            Meter::Spend => self.spend,
        }
    }
}

/// One token or spend budget of a tier.
#[derive(Debug)]
pub struct Budget {
    /// The quota policy's name in `RateLimit-Policy`.
    pub name: String,
    /// Whether its cells are tokens or money.
    pub meter: Meter,
    /// A spend budget's currency code (the price table's), shown beside its amounts; empty
    /// for a token budget.
    pub currency: String,
    /// Which models it counts.
    pub scope: ModelScope,
    /// Tokens per period.
    pub rate: Rate,
    /// The `model` of the tier's other budgets that name models: a model one of them takes more
    /// strongly (an exact name over a snapshot of this budget's, a longer prefix, …) counts
    /// against that budget, not this one (see [`crate::model_match`]).
    pub rivals: Vec<ModelMatch>,
}

/// How tokens are admitted and charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reserve an estimate up front, settle to the real usage at the end.
    Reserve,
    /// Admit while anything is left, charge the real usage at the end (debt allowed).
    ChargeAfter,
}

/// What to charge for a response that ended but whose usage could not be read (no `usage`, not
/// JSON, an encoding the filter cannot read, larger than the body limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissingUsage {
    /// The reservation (the estimate), so nothing goes free.
    Reservation,
    /// Nothing: fail open, as an operator may choose for an upstream that never reports usage.
    Nothing,
}

/// What to charge for a stream that did not complete (client gone, upstream reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnIncomplete {
    /// What the client received: usage reported so far, else an estimate from the streamed text.
    Received,
    /// The whole reservation.
    Reservation,
}

/// The LLM settings of a policy (`llm` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmSettings {
    /// Reservation or charge after.
    pub mode: Mode,
    /// What a usage costs.
    pub cost: Cost,
    /// Output tokens assumed when the client sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// Request bodies up to this size are read for `model` and `max_tokens`.
    pub max_request_body: usize,
    /// Non-streaming response bodies up to this size are held to read `usage` before the
    /// headers go out (so the headers show the charge).
    pub max_response_body: usize,
    /// See [`OnMissingUsage`].
    pub on_missing_usage: OnMissingUsage,
    /// See [`OnIncomplete`].
    pub on_incomplete: OnIncomplete,
    /// Add `stream_options.include_usage: true` to OpenAI streaming requests.
    pub inject_stream_usage: bool,
    /// Drop `accept-encoding` towards the upstream so usage is readable.
    pub strip_accept_encoding: bool,
    /// The most the filter asks Envoy to buffer (a request body to rewrite, a response held for
    /// its usage). Must not exceed Envoy's per-connection buffer limit, or Envoy answers 413/500.
    pub buffer_limit: usize,
    /// Hold request headers until the body is read and JSON responses until their usage is
    /// read. Needs `allow_on_headers_stop_iteration: true` on the Wasm filter: without it,
    /// Envoy never resumes a stream held at its headers.
    pub hold_headers: bool,
    /// The longest wait a refused client is told to sit out: past it, a refusal carries
    /// `x-should-retry: false` (gRPC: `grpc-retry-pushback-ms: -1`), so the official SDKs raise
    /// at once instead of blocking their caller until the budget refills.
    pub max_client_wait: Nanos,
    /// `llm.routes`: the API of the paths under a prefix (normalised, longest first), for an
    /// API served where its path does not tell it.
    pub routes: Vec<(String, ApiKind)>,
    /// `llm.deployments`: the model a name in the path stands for (an Azure deployment).
    pub deployments: Vec<(String, String)>,
}

impl LlmSettings {
    /// The API a request path speaks: the longest `llm.routes` prefix it is under, else what the
    /// path itself tells ([`ApiKind::from_path`]).
    pub fn api_of(&self, path: &str) -> ApiKind {
        let normalized = crate::path::normalize(path.as_bytes());
        self.routes
            .iter()
            .find(|(prefix, _)| crate::tier::path_has_prefix(&normalized, prefix.as_bytes()))
            .map_or_else(|| ApiKind::from_path(path), |(_, api)| *api)
    }

    /// The model a request path names ([`ApiKind::model_in_path`]), mapped by
    /// `llm.deployments` when it names a deployment listed there.
    pub fn model_in_path(&self, path: &str) -> Option<String> {
        let name = ApiKind::model_in_path(path)?;
        Some(
            self.deployments
                .iter()
                .find(|(deployment, _)| *deployment == name)
                .map_or(name, |(_, model)| model.clone()),
        )
    }
}

/// How much a reservation asks of a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// This estimate, each budget in its own unit (capped at the burst, see
    /// [`Budget::admit_state`]).
    Tokens(Amount),
    /// Everything the budget has left, and at least `at_least`: for a call whose input is stored
    /// upstream (`previous_response_id`, `conversation`), which nothing in the request bounds.
    /// Such calls of one caller then run one at a time, so together they overshoot the budget
    /// by at most one call's usage beyond what was left, instead of each by its own.
    AllLeft {
        /// The estimate from what the request itself shows.
        at_least: Amount,
    },
}

/// Tokens held for one budget by one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Index of the budget in its tier.
    pub budget: usize,
    /// The caller's slot in the table of the budget's [`BudgetSet`].
    pub slot: Slot,
    /// Tokens reserved (0 in charge-after mode).
    pub reserved: u64,
    /// When it was taken: a calendar quota settles into the period of this instant.
    pub at: Nanos,
}

impl Budget {
    /// Whether the budget counts a request for `model`. A request whose model is unknown (a
    /// body too large to read, or without `model`) counts against every budget: it could be
    /// for any model, and must not escape a per-model budget by hiding which. A model the
    /// budget's `model` takes counts unless another budget of the tier takes it more strongly
    /// (see [`crate::model_match`]: an exact name, then a snapshot of a name, then the longest
    /// prefix).
    pub fn applies(&self, model: Option<&str>) -> bool {
        match (&self.scope, model) {
            (ModelScope::All | ModelScope::Each, _) | (ModelScope::Only(_), None) => true,
            (ModelScope::Only(m), Some(model)) => m.strength(model).is_some_and(|mine| {
                !self
                    .rivals
                    .iter()
                    .any(|r| r.strength(model).is_some_and(|theirs| theirs > mine))
            }),
        }
    }

    /// The state a budget showed before `took` tokens were held (for a refused request whose
    /// holds were given back).
    pub fn unheld(&self, status: LimitStatus, took: u64) -> LimitStatus {
        if self.rate.calendar_of().is_some() {
            // A quota resets at its period's end however much is held.
            return LimitStatus {
                remaining: status.remaining.saturating_add(took),
                ..status
            };
        }
        let back = u128::from(took).saturating_mul(u128::from(self.rate.period().0))
            / u128::from(self.rate.amount());
        LimitStatus {
            remaining: status.remaining.saturating_add(took),
            reset_after: Nanos(
                status
                    .reset_after
                    .0
                    .saturating_sub(u64::try_from(back).unwrap_or(u64::MAX)),
            ),
            ..status
        }
    }

    fn status(&self, tat: Tat, now: Nanos, allowed: bool, retry_after: Nanos) -> LimitStatus {
        let p = self.rate.peek(tat, now);
        LimitStatus {
            allowed,
            remaining: p.remaining,
            reset_after: p.reset_after,
            retry_after,
        }
    }

    /// Admits a request on the caller's state `tat` of this budget: in reserve mode takes the
    /// ask (capped at the burst, so a large `max_tokens` needs the whole budget rather than
    /// being refused forever); in charge-after mode only checks that something is left. Returns
    /// the state to show, what it took, and the new state when it took something.
    pub fn admit_state(
        &self,
        tat: Tat,
        mode: Mode,
        ask: Ask,
        now: Nanos,
    ) -> (LimitStatus, u64, Option<Tat>) {
        let take = match ask {
            Ask::Tokens(estimate) => estimate.of(self.meter),
            Ask::AllLeft { at_least } => self
                .rate
                .peek(tat, now)
                .remaining
                .max(at_least.of(self.meter)),
        }
        .min(self.rate.burst());
        match mode {
            Mode::Reserve => {
                let c = self.rate.check(tat, now, take);
                let status = LimitStatus::from(c);
                if c.allowed {
                    (status, take, Some(c.tat))
                } else {
                    (status, 0, None)
                }
            }
            Mode::ChargeAfter => {
                let room = self.rate.has_room(tat, now);
                let wait = if room {
                    Nanos::ZERO
                } else {
                    self.rate.peek(tat, now).retry_after
                };
                (self.status(tat, now, room, wait), 0, None)
            }
        }
    }

    /// Whether the state `tat` has room for `cost` now (reserve mode; capped at the burst as
    /// [`admit_state`](Self::admit_state) caps it) or for anything at all (charge-after),
    /// taking nothing: for refusing a call before any of it goes upstream.
    pub fn peek_state(&self, tat: Tat, mode: Mode, cost: u64, now: Nanos) -> LimitStatus {
        let take = cost.min(self.rate.burst());
        match mode {
            Mode::Reserve => {
                let c = self.rate.check(tat, now, take);
                if c.allowed {
                    self.status(tat, now, true, Nanos::ZERO)
                } else {
                    LimitStatus {
                        allowed: false,
                        remaining: c.remaining,
                        reset_after: c.reset_after,
                        retry_after: c.retry_after,
                    }
                }
            }
            Mode::ChargeAfter => {
                let p = self.rate.peek(tat, now);
                let room = self.rate.has_room(tat, now);
                let wait = if room { Nanos::ZERO } else { p.retry_after };
                self.status(tat, now, room, wait)
            }
        }
    }

    /// Replaces a hold by the real cost on the state `tat`: refunds what was over-reserved,
    /// charges the rest (into debt if need be). Returns the state to show and the new state.
    pub fn settle_state(
        &self,
        tat: Tat,
        placement: Placement,
        hold: &Hold,
        actual: u64,
        now: Nanos,
    ) -> (LimitStatus, Tat) {
        let next = if actual < hold.reserved && placement == Placement::Fresh {
            // Our entry was reclaimed while idle: the bucket is already full.
            tat
        } else {
            self.rate.settle(tat, hold.at, now, hold.reserved, actual)
        };
        (self.status(next, now, true, Nanos::ZERO), next)
    }
}

/// Budgets of a tier that count the same key, side by side in one shared-data value per caller
/// ([`BudgetTable`]): the tier's own budgets, or one scope's, and apart from them the budgets
/// kept per model (`"model": "*"`, whose key includes the model). A call reads and writes each
/// set it uses once at admission and once at settlement, however many of its budgets apply.
#[derive(Debug)]
pub struct BudgetSet {
    /// The budgets it holds (their indices in [`crate::tier::Tier::budgets`]), in column order.
    pub members: Vec<usize>,
    /// Whether a caller's slot is per model (a snapshot shares its base model's).
    pub per_model: bool,
    /// Where the values live.
    pub table: BudgetTable,
}

/// What a set's budgets showed at one admission (see [`BudgetSet::admit`]).
#[derive(Debug, Default)]
pub struct SetAdmission {
    /// Each asked budget's index, state to show and tokens taken, in the order asked.
    pub statuses: Vec<(usize, LimitStatus, u64)>,
    /// Whether the set holds what they took: every asked budget admitted (a refusal by one
    /// leaves the whole set as it was).
    pub held: bool,
}

impl BudgetSet {
    /// The caller's slot, for a call for `model` when the set is per model.
    pub fn slot(&self, seed: &Seed, tier: &str, identity: &[u8], model: Option<&str>) -> Slot {
        let model = if self.per_model {
            // A snapshot shares its base model's budget, so naming snapshots cannot multiply
            // a per-model budget.
            base_model(model.unwrap_or("")).as_bytes()
        } else {
            b""
        };
        seed.slot(
            &[tier.as_bytes(), b"budgets", identity, model],
            self.table.sets(),
        )
    }

    /// The column of budget number `budget` of the tier, when this set holds it.
    pub fn column_of(&self, budget: usize) -> Option<usize> {
        self.members.iter().position(|&b| b == budget)
    }

    /// A way is reclaimable when every budget in it is full again.
    pub fn is_idle<'a>(
        &'a self,
        budgets: &'a [Budget],
        now: Nanos,
    ) -> impl Fn(&[Tat]) -> bool + 'a {
        move |states: &[Tat]| {
            self.members
                .iter()
                .zip(states)
                .all(|(&b, t)| budgets.get(b).is_none_or(|b| b.rate.is_full(*t, now)))
        }
    }

    /// Admits a call in the budgets `asked` (the tier's `budgets` indices, members of this set)
    /// in one read and at most one write: all of them take their share, or none does.
    ///
    /// # Errors
    /// The store failed, or every compare-and-swap attempt lost.
    #[allow(clippy::too_many_arguments)] // each is one fact about the call, as in Policy::admit_tokens_where
    pub fn admit<S: Store>(
        &self,
        budgets: &[Budget],
        store: &mut S,
        slot: Slot,
        asked: &[usize],
        mode: Mode,
        ask: Ask,
        now: Nanos,
    ) -> Result<SetAdmission, TableError> {
        self.admit_from(budgets, store, slot, None, asked, mode, ask, now)
    }

    /// As [`admit`](Self::admit), starting from `seen`, this set's value as the call's peek
    /// read it ([`BudgetTable::update_from`]: its CAS write fails if anyone wrote since, and a
    /// refusal is decided again on a fresh read).
    ///
    /// # Errors
    /// The store failed, or every compare-and-swap attempt lost.
    #[allow(clippy::too_many_arguments)] // as admit, plus where to start from
    pub fn admit_from<S: Store>(
        &self,
        budgets: &[Budget],
        store: &mut S,
        slot: Slot,
        seen: Option<Seen>,
        asked: &[usize],
        mode: Mode,
        ask: Ask,
        now: Nanos,
    ) -> Result<SetAdmission, TableError> {
        let decide = |states: &[Tat], _: Placement| {
            let mut next = states.to_vec();
            let mut out = SetAdmission {
                statuses: Vec::with_capacity(asked.len()),
                held: true,
            };
            let mut changed = false;
            for &i in asked {
                let (Some(budget), Some(c)) = (budgets.get(i), self.column_of(i)) else {
                    continue;
                };
                let tat = states.get(c).copied().unwrap_or_default();
                let (status, took, new) = budget.admit_state(tat, mode, ask, now);
                out.held &= status.allowed;
                if let (Some(new), Some(cell)) = (new, next.get_mut(c)) {
                    changed |= *cell != new;
                    *cell = new;
                }
                out.statuses.push((i, status, took));
            }
            if out.held && changed {
                Update::Write(next, out)
            } else {
                Update::Keep(out)
            }
        };
        self.table
            .update_from(store, slot, seen, self.is_idle(budgets, now), decide)
            .map(|(out, _, _)| out)
    }

    /// Each of `asked` (a budget index and the cost to check for) as
    /// [`Budget::peek_state`] sees it, in one read and no write.
    ///
    /// # Errors
    /// The store failed.
    pub fn peek<S: Store>(
        &self,
        budgets: &[Budget],
        store: &mut S,
        slot: Slot,
        asked: &[(usize, u64)],
        mode: Mode,
        now: Nanos,
    ) -> Result<Vec<LimitStatus>, TableError> {
        self.peek_seen(budgets, store, slot, asked, mode, now)
            .map(|(shown, _)| shown)
    }

    /// As [`peek`](Self::peek), also returning the value it read, with its CAS, for the
    /// call's admission to start from ([`admit_from`](Self::admit_from)).
    ///
    /// # Errors
    /// The store failed.
    pub fn peek_seen<S: Store>(
        &self,
        budgets: &[Budget],
        store: &mut S,
        slot: Slot,
        asked: &[(usize, u64)],
        mode: Mode,
        now: Nanos,
    ) -> Result<(Vec<LimitStatus>, Option<Seen>), TableError> {
        let decide = |states: &[Tat], _: Placement| {
            let shown = asked
                .iter()
                .filter_map(|&(i, cost)| {
                    let budget = budgets.get(i)?;
                    let tat = states.get(self.column_of(i)?).copied().unwrap_or_default();
                    Some(budget.peek_state(tat, mode, cost, now))
                })
                .collect();
            Update::<Vec<LimitStatus>>::Keep(shown)
        };
        self.table
            .update_from(store, slot, None, self.is_idle(budgets, now), decide)
            .map(|(out, _, seen)| (out, seen))
    }

    /// Replaces `holds` (of this set, all at one slot) by the real cost `actual` in one read
    /// and at most one write. Returns each hold's budget state after it, aligned with `holds`.
    ///
    /// # Errors
    /// The store failed, or every compare-and-swap attempt lost.
    pub fn settle<S: Store>(
        &self,
        budgets: &[Budget],
        store: &mut S,
        holds: &[&Hold],
        actual: Amount,
        now: Nanos,
    ) -> Result<Vec<LimitStatus>, TableError> {
        let Some(slot) = holds.first().map(|h| h.slot) else {
            return Ok(Vec::new());
        };
        let decide = |states: &[Tat], placement: Placement| {
            let mut next = states.to_vec();
            let mut shown = Vec::with_capacity(holds.len());
            let mut changed = false;
            for hold in holds {
                let (Some(budget), Some(c)) =
                    (budgets.get(hold.budget), self.column_of(hold.budget))
                else {
                    continue;
                };
                let tat = states.get(c).copied().unwrap_or_default();
                let (status, new) =
                    budget.settle_state(tat, placement, hold, actual.of(budget.meter), now);
                if let Some(cell) = next.get_mut(c) {
                    changed |= *cell != new;
                    *cell = new;
                }
                shown.push(status);
            }
            if changed {
                Update::Write(next, shown)
            } else {
                Update::Keep(shown)
            }
        };
        self.table
            .update(store, slot, self.is_idle(budgets, now), decide)
            .map(|(out, _)| out)
    }
}

/// The budget sets one call's peek at its request headers read, each with its CAS (see
/// [`Seen`]), by the set's index in [`crate::tier::Tier::budget_sets`]: admission starts from
/// them instead of reading them again ([`crate::Policy::admit_tokens_from`]). Each is used once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peeked(Vec<(usize, Seen)>);

impl Peeked {
    /// Nothing read.
    pub const fn new() -> Peeked {
        Peeked(Vec::new())
    }

    /// Keeps what set `set` read.
    pub fn keep(&mut self, set: usize, seen: Seen) {
        self.0.retain(|(s, _)| *s != set);
        self.0.push((set, seen));
    }

    /// What set `set` read, taken (a value is only good until the set is written).
    pub fn take(&mut self, set: usize) -> Option<Seen> {
        let at = self.0.iter().position(|(s, _)| *s == set)?;
        Some(self.0.swap_remove(at).1)
    }

    /// How many sets it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The holds of one request and the per-budget states to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// One per applicable budget.
    pub holds: Vec<Hold>,
    /// The total reserved per hold's budget (max over holds: what the request was admitted for).
    pub estimate: u64,
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::decision::Decision;
    use crate::policy::{Outcome, TokenOutcome};
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use crate::Policy;
    use alloc::format;

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    fn policy(mode: &str) -> (Policy, MemoryStore) {
        let json = format!(
            r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":1000,"per":"minute"}},
                          {{"tokens":500,"per":"minute","model":"gpt-4o"}},
                          {{"tokens":400,"per":"minute","model":"*","name":"each"}}]}}],
                "llm":{{"mode":"{mode}"}}}}"#
        );
        let p = Policy::from_json(json.as_bytes()).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        (p, s)
    }

    fn identity(p: &Policy, s: &mut MemoryStore, user: &str) -> Vec<u8> {
        let h: HeaderList = [("x-user-id", user)].into_iter().collect();
        match p.check(&h, T0, s) {
            Outcome::Decided { caller, .. } => caller.id.into_vec(),
            other => panic!("{other:?}"),
        }
    }

    /// Admits and, when admitted, settles at `used` tokens; returns whether it was admitted.
    fn call(p: &Policy, s: &mut MemoryStore, model: &str, estimate: u64, used: u64) -> bool {
        let id = identity(p, s, "alice");
        let tier = &p.tiers()[0];
        match p.admit_tokens(tier, &id, Some(model), Amount::tokens(estimate), T0, s) {
            TokenOutcome::Admitted { reservation, .. } => {
                p.settle_tokens(tier, &reservation, Amount::tokens(used), T0, s)
                    .unwrap();
                true
            }
            TokenOutcome::Denied { .. } => false,
            TokenOutcome::StoreFailed(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn budget_tables_exist_from_start_up_so_no_call_creates_a_key() {
        let (p, mut s) = policy("reserve");
        let (keys, _) = p.footprint();
        assert_eq!(s.len() as u64, keys);
        for i in 0..50 {
            call(&p, &mut s, &format!("m{i}"), 10, 10);
        }
        assert_eq!(s.len() as u64, keys, "no key created by a call");
    }

    #[test]
    fn charge_after_lets_the_fourth_300_token_call_into_debt_and_denies_the_fifth() {
        let (p, mut s) = policy("charge_after");
        // A different model each time, so only the shared 1000-token budget binds.
        let results: Vec<bool> = (0..5)
            .map(|i| call(&p, &mut s, &format!("m{i}"), 0, 300))
            .collect();
        assert_eq!(results, [true, true, true, true, false]);
    }

    #[test]
    fn reservations_admit_exactly_three_of_ten_concurrent_300_token_calls() {
        let (p, mut s) = policy("reserve");
        let id = identity(&p, &mut s, "alice");
        let tier = &p.tiers()[0];
        let mut held = Vec::new();
        for i in 0..10 {
            let model = format!("m{i}");
            if let TokenOutcome::Admitted { reservation, .. } =
                p.admit_tokens(tier, &id, Some(&model), Amount::tokens(300), T0, &mut s)
            {
                held.push(reservation);
            }
        }
        assert_eq!(held.len(), 3, "all ten are in flight before any settles");
        let mut last = None;
        for r in &held {
            last = Some(
                p.settle_tokens(tier, r, Amount::tokens(250), T0, &mut s)
                    .unwrap(),
            );
        }
        // 3 × 250 charged: the shared 1000-token budget shows 250 left.
        let d = last.unwrap();
        let i = d.applied.iter().position(|b| *b == 0).unwrap();
        assert_eq!(d.limits[i].remaining, 250);
    }

    #[test]
    fn per_model_budgets_are_independent() {
        let (p, mut s) = policy("reserve");
        assert!(call(&p, &mut s, "gpt-4o", 400, 400));
        assert!(
            !call(&p, &mut s, "gpt-4o", 400, 400),
            "gpt-4o's 400 per model spent"
        );
        assert!(
            call(&p, &mut s, "gpt-4o-mini", 400, 400),
            "another model has its own"
        );
        assert!(
            !call(&p, &mut s, "o3", 400, 400),
            "the shared 1000 is spent: 800 used"
        );
    }

    #[test]
    fn snapshot_names_reduce_to_their_base_model() {
        for (name, base) in [
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
            ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
            ("claude-sonnet-4-20250514", "claude-sonnet-4"),
            ("claude-sonnet-4@20250514", "claude-sonnet-4"),
            ("claude-sonnet-4@2025051", "claude-sonnet-4@2025051"),
            ("gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4-0613", "gpt-4-0613"),
            ("mistral-large-2407", "mistral-large-2407"),
            ("model-2024-13-01", "model-2024-13-01"),
            ("model-20240100", "model-20240100"),
            ("model-2024-7-18", "model-2024-7-18"),
            ("-2024-07-18", "-2024-07-18"),
            ("-20240718", "-20240718"),
            ("-latest", "-latest"),
            ("latest", "latest"),
            ("", ""),
            ("ä-2024-07-18", "ä"),
            ("x-2024-07-1ä", "x-2024-07-1ä"),
        ] {
            assert_eq!(base_model(name), base, "{name}");
        }
    }

    fn snapshot_policy() -> (Policy, MemoryStore) {
        let json = r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":500,"per":"minute","model":"gpt-4o-mini"},
                      {"tokens":300,"per":"minute","model":"gpt-4o-mini-2024-07-18"},
                      {"tokens":400,"per":"minute","model":"*","name":"each"}]}]}"#;
        let p = Policy::from_json(json.as_bytes()).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        (p, s)
    }

    #[test]
    fn a_dated_snapshot_counts_against_its_base_models_budget() {
        let (p, mut s) = snapshot_policy();
        let budgets = &p.tiers()[0].budgets;
        let applying = |model: &str| -> Vec<&str> {
            budgets
                .iter()
                .filter(|b| b.applies(Some(model)))
                .map(|b| b.name.as_str())
                .collect()
        };
        assert_eq!(
            applying("gpt-4o-mini"),
            ["free-tokens-gpt-4o-mini-minute", "each"]
        );
        assert_eq!(
            applying("gpt-4o-mini-latest"),
            ["free-tokens-gpt-4o-mini-minute", "each"]
        );
        assert_eq!(
            applying("gpt-4o-mini-2024-12-01"),
            ["free-tokens-gpt-4o-mini-minute", "each"]
        );
        // The exact budget for the dated name wins over the base's.
        assert_eq!(
            applying("gpt-4o-mini-2024-07-18"),
            ["free-tokens-gpt-4o-mini-2024-07-18-minute", "each"]
        );
        assert_eq!(applying("gpt-4o"), ["each"]);
        // `"*"`: a snapshot shares its base's bucket (400), so it cannot be used to double it.
        assert!(call(&p, &mut s, "gpt-4o-mini", 250, 250));
        assert!(
            !call(&p, &mut s, "gpt-4o-mini-2024-12-01", 250, 250),
            "the base's 400 per model is shared with its snapshots"
        );
        assert!(
            call(&p, &mut s, "gpt-4o", 250, 250),
            "another model has its own"
        );
    }

    fn names_applying(json: &str, model: &str) -> Vec<String> {
        let p = Policy::from_json(json.as_bytes()).unwrap();
        p.tiers()[0]
            .budgets
            .iter()
            .filter(|b| b.applies(Some(model)))
            .map(|b| b.name.clone())
            .collect()
    }

    #[test]
    fn a_model_counts_against_the_budgets_that_name_it_most_exactly() {
        let json = r#"{"tiers":[{"name":"t","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":9,"per":"minute","name":"all"},
                      {"tokens":9,"per":"minute","model":"*","name":"each"},
                      {"tokens":9,"per":"minute","model":{"prefix":"gpt-4"},"name":"gpt4x"},
                      {"tokens":9,"per":"minute","model":{"prefix":"gpt-4o"},"name":"gpt4o-family"},
                      {"tokens":9,"per":"minute","model":["gpt-4o","gpt-4o-2024-08-06"],"name":"gpt4o"},
                      {"tokens":9,"per":"day","model":"gpt-4o","name":"gpt4o-daily"},
                      {"tokens":9,"per":"minute","model":"gpt-4o-mini","name":"mini"},
                      {"tokens":9,"per":"minute","model":"gpt-4o-2024-11-20","name":"nov"}]}]}"#;
        for (model, expected) in [
            // Exact, in a list or alone: both budgets naming it count it (per minute and per day).
            ("gpt-4o", &["all", "each", "gpt4o", "gpt4o-daily"][..]),
            ("gpt-4o-2024-08-06", &["all", "each", "gpt4o"]),
            // A snapshot of a listed name, which no budget names exactly.
            (
                "gpt-4o-2024-05-13",
                &["all", "each", "gpt4o", "gpt4o-daily"],
            ),
            ("gpt-4o-2024-11-20", &["all", "each", "nov"]),
            ("gpt-4o-mini-2024-07-18", &["all", "each", "mini"]),
            // Only a prefix: the longest wins.
            ("gpt-4o-audio-preview", &["all", "each", "gpt4o-family"]),
            ("gpt-4-turbo", &["all", "each", "gpt4x"]),
            ("gpt-3.5-turbo", &["all", "each"]),
        ] {
            assert_eq!(names_applying(json, model), expected, "{model}");
        }
    }

    #[test]
    fn aliases_share_one_budget_and_a_prefix_takes_the_names_under_it() {
        let json = r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":500,"per":"minute","model":["gpt-4o","chatgpt-4o-latest"]},
                      {"tokens":500,"per":"minute","model":{"prefix":"gemini-1.5-pro"}}]}]}"#;
        let p = Policy::from_json(json.as_bytes()).unwrap();
        let names: Vec<&str> = p.tiers()[0]
            .budgets
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "free-tokens-gpt-4o-minute",
                "free-tokens-gemini-1.5-pro_-minute"
            ]
        );
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        assert!(call(&p, &mut s, "gpt-4o", 300, 300));
        assert!(
            !call(&p, &mut s, "chatgpt-4o-latest", 300, 300),
            "an alias shares the 500"
        );
        assert!(call(&p, &mut s, "gemini-1.5-pro-002", 300, 300));
        assert!(
            !call(&p, &mut s, "gemini-1.5-pro-001", 300, 300),
            "another version under the prefix shares it"
        );
        assert!(
            call(&p, &mut s, "gemini-1.5-flash", 300, 300),
            "not under it"
        );
    }

    #[test]
    fn a_refused_reservation_gives_back_what_it_held() {
        let (p, mut s) = policy("reserve");
        assert!(call(&p, &mut s, "gpt-4o", 450, 450));
        // Needs 100 more of gpt-4o's 500: the shared and per-model holds are given back.
        assert!(!call(&p, &mut s, "gpt-4o", 100, 100));
        assert!(call(&p, &mut s, "x", 400, 400));
        assert!(
            call(&p, &mut s, "y", 150, 150),
            "1000 - 450 - 400 = 150 left"
        );
    }

    #[test]
    fn a_reservation_larger_than_the_budget_waits_for_a_full_budget() {
        let (p, mut s) = policy("reserve");
        assert!(call(&p, &mut s, "z", 1_000_000, 10));
        assert!(
            !call(&p, &mut s, "z", 1_000_000, 10),
            "needs the whole budget again"
        );
    }

    fn peek(p: &Policy, s: &mut MemoryStore, cost: u64) -> Option<Decision> {
        let id = identity(p, s, "alice");
        p.peek_tokens(&p.tiers()[0], &id, Amount::tokens(cost), T0, s)
            .unwrap()
    }

    #[test]
    fn peeking_refuses_what_cannot_fit_and_takes_nothing() {
        for mode in ["reserve", "charge_after"] {
            let (p, mut s) = policy(mode);
            assert_eq!(peek(&p, &mut s, 1), None, "{mode}: a fresh budget has room");
            assert!(call(&p, &mut s, "m", 0, 1000), "{mode}");
            let d = peek(&p, &mut s, 1).expect("spent: refused before the body");
            assert!(!d.allowed);
            assert_eq!(d.applied, [0], "only the budget that counts every model");
            assert_eq!(d.status().remaining, 0);
            assert!(d.status().retry_after > Nanos::ZERO);
        }
        let (p, mut s) = policy("reserve");
        assert!(call(&p, &mut s, "m", 0, 400));
        assert_eq!(peek(&p, &mut s, 600), None, "600 of 600 left fits");
        assert!(peek(&p, &mut s, 601).is_some(), "601 does not");
        assert_eq!(
            peek(&p, &mut s, 1_000_000),
            Some(peek(&p, &mut s, 1000).unwrap()),
            "capped at the burst, as admission caps it"
        );
        // Peeking wrote nothing: the 600 left can still be reserved whole.
        assert!(call(&p, &mut s, "n", 600, 600));
    }

    #[test]
    fn peeking_ignores_budgets_of_one_model() {
        let (p, mut s) = policy("reserve");
        assert!(call(&p, &mut s, "gpt-4o", 0, 500), "gpt-4o's 500 spent");
        assert_eq!(peek(&p, &mut s, 1), None, "another model may still run");
    }

    /// A store that counts reads and writes.
    #[derive(Default)]
    struct Counted {
        store: MemoryStore,
        gets: u32,
        sets: u32,
    }

    impl Store for Counted {
        fn get(&mut self, key: &str) -> Result<Option<crate::store::Versioned>, crate::StoreError> {
            self.gets += 1;
            self.store.get(key)
        }
        fn set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<crate::Cas>,
        ) -> Result<(), crate::StoreError> {
            self.sets += 1;
            self.store.set(key, value, cas)
        }
    }

    #[test]
    fn a_call_reads_and_writes_each_budget_set_once_to_admit_and_once_to_settle() {
        let (p, s) = policy("reserve");
        let mut s = Counted {
            store: s,
            ..Counted::default()
        };
        let id = identity(&p, &mut s.store, "alice");
        let tier = &p.tiers()[0];
        // gpt-4o: all three budgets apply, in two sets (the two counting the caller, and the
        // one kept per model).
        assert_eq!(tier.budget_sets.len(), 2);
        let TokenOutcome::Admitted { reservation, .. } =
            p.admit_tokens(tier, &id, Some("gpt-4o"), Amount::tokens(100), T0, &mut s)
        else {
            panic!("admitted");
        };
        assert_eq!(reservation.holds.len(), 3);
        assert_eq!(
            (s.gets, s.sets),
            (2, 2),
            "one get and one set per budget set"
        );
        let d = p
            .settle_tokens(tier, &reservation, Amount::tokens(60), T0, &mut s)
            .unwrap();
        assert_eq!((s.gets, s.sets), (4, 4));
        assert_eq!(d.applied, [0, 1, 2]);
        let left: Vec<u64> = d.limits.iter().map(|l| l.remaining).collect();
        assert_eq!(left, [940, 440, 340], "each budget charged on its own");
        // Peeking reads the set of the budgets counting every model: one get, no set.
        assert_eq!(
            p.peek_tokens(tier, &id, Amount::tokens(1), T0, &mut s),
            Ok(None)
        );
        assert_eq!((s.gets, s.sets), (5, 4));
    }

    #[test]
    fn a_refusal_by_one_budget_of_a_set_writes_nothing() {
        let (p, s) = policy("reserve");
        let mut s = Counted {
            store: s,
            ..Counted::default()
        };
        assert!(
            call(&p, &mut s.store, "gpt-4o", 0, 450),
            "gpt-4o's 500: 50 left"
        );
        let id = identity(&p, &mut s.store, "alice");
        let tier = &p.tiers()[0];
        let (gets, sets) = (s.gets, s.sets);
        let refused = p.admit_tokens(tier, &id, Some("gpt-4o"), Amount::tokens(100), T0, &mut s);
        let TokenOutcome::Denied { decision } = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(
            (s.gets - gets, s.sets - sets),
            (2, 0),
            "read; nothing taken, so nothing to give back"
        );
        assert_eq!(decision.applied, [0, 1, 2]);
        assert_eq!(decision.limits[0].remaining, 550, "shown as it is");
        assert!(
            call(&p, &mut s.store, "x", 550, 550),
            "and it is: the shared 1000 still has 550"
        );
    }

    #[test]
    fn calls_asking_all_that_is_left_run_one_at_a_time() {
        let (p, mut s) = policy("reserve");
        let id = identity(&p, &mut s, "alice");
        let tier = &p.tiers()[0];
        let ask = Ask::AllLeft {
            at_least: Amount::tokens(100),
        };
        let admit = |s: &mut MemoryStore| {
            p.admit_tokens_where(tier, &id, Some("m"), ask, T0, s, |i, _| i == 0)
        };
        let TokenOutcome::Admitted { reservation, .. } = admit(&mut s) else {
            panic!("the first is admitted");
        };
        assert_eq!(reservation.holds[0].reserved, 1000, "all that was left");
        assert!(matches!(admit(&mut s), TokenOutcome::Denied { .. }));
        p.settle_tokens(tier, &reservation, Amount::tokens(300), T0, &mut s)
            .unwrap();
        let TokenOutcome::Admitted { reservation, .. } = admit(&mut s) else {
            panic!("admitted again once settled");
        };
        assert_eq!(reservation.holds[0].reserved, 700);
    }
}
