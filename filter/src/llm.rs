//! The LLM side of a stream: read the request body, hold tokens, read usage, settle.
//!
//! Envoy resumes a stream held at its *headers* only when the Wasm filter is configured with
//! `allow_on_headers_stop_iteration: true`, which Envoy Gateway cannot set today. So by default
//! tollgate never holds headers: it buffers a small request body (to read it whole before it
//! goes upstream), otherwise reads bodies as they pass; either way an OpenAI stream's body is
//! rewritten to ask for usage ([`UsageRewriter`]), with `content-length` announced exactly at
//! the headers. What can be refused is refused before the body goes upstream: at the headers
//! (read-only, from `content-length`), or on the first chunk of a body that passes. Usage is
//! read from a bounded copy of the response. With `llm.hold_headers` it also holds headers, so
//! a JSON response's own headers show its charge.
//!
//! Where tollgate asked an OpenAI stream for usage the client did not ask for (`usage_added`),
//! each response chunk is replaced by the same bytes without what the option added
//! ([`AddedUsageRemover`]); the usage is read from the upstream's bytes first.
//!
//! Whatever happens (a body too large to read, a response without usage, a client that
//! disconnects mid-stream), the stream ends settled exactly once, in `on_log` at the latest. What
//! an ended stream costs is policy-core's [`stream_charge`].

use policy_core::budget::{Ask, LlmSettings, ModelScope, OnMissingUsage, Reservation};
use policy_core::decision::Decision;
use policy_core::headers::{self, ErrorStyle, Fields};
use policy_core::llm::{
    estimate_tokens, stream_charge, usage_from_json, usage_from_tail, AddedUsageRemover, ApiKind,
    LlmRequest, RewriteError, SseLimits, SseScanner, StreamSeen, UsageRewriter,
};
use policy_core::policy::TokenOutcome;
use policy_core::table::TableError;
use policy_core::tier::Tier;
use policy_core::{Nanos, Policy};

use crate::shared::SharedData;

/// A copy of a body as it passes, bounded: whole while it fits, then only its last bytes.
#[derive(Debug, Default)]
pub struct BodyCopy {
    bytes: Vec<u8>,
    /// Bytes were dropped from the front.
    pub truncated: bool,
    /// Every byte seen, kept or not.
    pub seen: usize,
}

impl BodyCopy {
    pub fn push(&mut self, chunk: &[u8], max: usize) {
        self.seen = self.seen.saturating_add(chunk.len());
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > max {
            let drop = self.bytes.len() - max;
            self.bytes.drain(..drop);
            self.truncated = true;
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Where an LLM stream is.
#[derive(Debug)]
pub enum Phase {
    /// Reading the request body. `holding`: Envoy buffers it for us (small enough, and it may
    /// need rewriting); otherwise we copy it as it passes.
    ReadingRequest { holding: bool, copy: BodyCopy },
    /// Admitted; the response has not started.
    Admitted,
    /// A JSON response. `holding`: held (with its headers) until complete; otherwise copied as
    /// it passes.
    Json { holding: bool, copy: BodyCopy },
    /// An SSE response passing through while its usage is read.
    Streaming(Box<SseScanner>),
    /// A response whose usage cannot be read; `charge` is what it will cost.
    Unreadable { charge: u64 },
    /// Settled, refused or never admitted: nothing more to do.
    Done,
}

/// What the filter learned about an LLM request and holds for it.
#[derive(Debug)]
pub struct LlmStream {
    pub tier: usize,
    pub identity: Vec<u8>,
    pub api: ApiKind,
    pub requests: Decision,
    pub phase: Phase,
    model: Option<String>,
    estimate: u64,
    estimated_input: u64,
    reservation: Option<Reservation>,
    /// The budgets' states to report (after admission, then after settling).
    pub tokens: Option<Decision>,
    /// tollgate asked the upstream for stream usage the client did not ask for (it added
    /// `stream_options.include_usage`, or turned the client's `false` into `true`): what that
    /// adds to the stream is read for the charge and removed before it reaches the client.
    pub usage_added: bool,
    /// Set for an SSE response to a request with `usage_added`: takes out of the stream what
    /// the option added before the client sees it.
    pub remover: Option<AddedUsageRemover>,
    /// Follows the request body as it passes: rewrites it so an OpenAI stream reports usage
    /// (whether the body is held or not), and notes `model` for an admission decided before the
    /// whole body is read. `None` once it has nothing left to do.
    rewriter: Option<UsageRewriter>,
    /// The rewriter may change the body (not only read it).
    rewrites: bool,
    /// The request's `content-length`, when it has one.
    pub content_length: Option<u64>,
    /// The input is stored upstream (see [`LlmRequest::stored_input`]).
    stored_input: bool,
    /// What the early admission of a passing body held, and for which model: raised as a body
    /// without `content-length` turns out larger ([`top_up`](Self::top_up)).
    early: Option<(u64, Option<String>)>,
    /// The last byte of a passing body's output so far, kept back until the body ends.
    lagging: Vec<u8>,
}

/// What admission decided.
pub enum Admission {
    Admitted,
    Denied,
    Contended,
    StoreFailed,
}

impl LlmStream {
    pub fn new(tier: usize, identity: Vec<u8>, api: ApiKind, requests: Decision) -> LlmStream {
        LlmStream {
            tier,
            identity,
            api,
            requests,
            phase: Phase::ReadingRequest {
                holding: true,
                copy: BodyCopy::default(),
            },
            model: None,
            estimate: 0,
            estimated_input: 0,
            reservation: None,
            tokens: None,
            usage_added: false,
            remover: None,
            rewriter: None,
            rewrites: false,
            content_length: None,
            stored_input: false,
            early: None,
            lagging: Vec::new(),
        }
    }

    /// Sets how the body will be followed. `exact`: `content-length` was announced as the
    /// original plus [`policy_core::llm::MAX_STREAM_USAGE_GROWTH`], so the rewrite pads to it.
    /// `held`: the body will be read whole before it goes upstream, so a body that is never
    /// rewritten needs no reading as it passes (for its model, before admission).
    pub fn follow_body(&mut self, llm: &LlmSettings, exact: bool, held: bool) {
        self.rewrites = self.may_rewrite(llm);
        self.rewriter = match (self.rewrites, exact) {
            (true, true) => Some(UsageRewriter::exact()),
            (true, false) => Some(UsageRewriter::new()),
            (false, _) if held => None,
            (false, _) => Some(UsageRewriter::read_only()),
        };
    }

    /// The least this call can cost, for a refusal before any of it goes upstream: the prompt
    /// estimated from `content-length` (none without it) plus one output token (none for
    /// embeddings). Admission never asks for less (see [`read_request`](Self::read_request)).
    pub fn least_cost(&self) -> u64 {
        let input = self.content_length.map_or(0, estimate_tokens);
        input.saturating_add(self.least_output())
    }

    fn least_output(&self) -> u64 {
        u64::from(self.api != ApiKind::OpenAiEmbeddings)
    }

    /// Passes one chunk of the request body through the rewriter. `Ok(Some(bytes))`: send these
    /// instead; `Ok(None)`: the chunk goes as it is.
    ///
    /// The last byte of the output is kept back until the body ends (and goes with its end):
    /// Envoy's HTTP/1 codec forwards a body's bytes before it calls the filter with the end of
    /// the stream, so without this an upstream could receive a complete request — every byte
    /// its `content-length` announced — and serve it before the admission at the body's end
    /// refuses it. One byte short, it waits, and the refusal resets it.
    ///
    /// # Errors
    /// The rewrite does not fit the announced `content-length` (see [`RewriteError`]).
    pub fn rewrite_chunk(
        &mut self,
        chunk: &[u8],
        end: bool,
    ) -> Result<Option<Vec<u8>>, RewriteError> {
        let mut out = core::mem::take(&mut self.lagging);
        out.reserve(chunk.len());
        match self.rewriter.as_mut() {
            Some(rewriter) => {
                rewriter.feed(chunk, &mut out)?;
                if end {
                    rewriter.finish(&mut out)?;
                }
                self.usage_added = self.rewrites && rewriter.usage_added();
            }
            None => out.extend_from_slice(chunk),
        }
        if !end {
            if let Some(last) = out.pop() {
                self.lagging.push(last);
            }
        }
        Ok((out != chunk).then_some(out))
    }

    pub fn style(&self) -> ErrorStyle {
        match self.api {
            ApiKind::AnthropicMessages => ErrorStyle::Anthropic,
            _ => ErrorStyle::OpenAi,
        }
    }

    /// Whether this request's body may be rewritten (to ask an OpenAI stream for its usage).
    pub fn may_rewrite(&self, llm: &LlmSettings) -> bool {
        llm.inject_stream_usage && self.api.needs_stream_usage_option()
    }

    /// Reads what a complete request body asks for (the body is rewritten separately, by
    /// [`rewrite_chunk`](Self::rewrite_chunk)).
    pub fn read_request(&mut self, llm: &LlmSettings, body: &[u8]) {
        match LlmRequest::parse(body) {
            Ok(req) => {
                self.estimated_input = req.estimated_input_tokens();
                // At least one output token (none for embeddings): what `least_cost` assumed.
                let output = match self.api {
                    ApiKind::OpenAiEmbeddings => 0,
                    _ => req
                        .max_output_all_choices()
                        .unwrap_or(llm.default_max_tokens),
                }
                .max(self.least_output());
                self.estimate = self.estimated_input.saturating_add(output);
                self.model = req.model;
                self.stored_input = req.stored_input;
            }
            Err(_) => self.unreadable_request(llm, body.len()),
        }
    }

    /// A body too large (or not JSON) to read: estimate from its size and the default cap; the
    /// model stays unknown, so every per-model budget applies.
    pub fn unreadable_request(&mut self, llm: &LlmSettings, size: usize) {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.estimated_input = estimate_tokens(self.content_length.map_or(size, |n| n.max(size)));
        self.estimate = self.estimated_input.saturating_add(llm.default_max_tokens);
        self.model = None;
    }

    /// Reads a request body copied as it passed (never rewritten).
    pub fn read_copied_request(&mut self, llm: &LlmSettings) {
        let copy = match std::mem::replace(&mut self.phase, Phase::Admitted) {
            Phase::ReadingRequest { copy, .. } => copy,
            other => {
                self.phase = other;
                return;
            }
        };
        if copy.truncated {
            // Only the size is known: the copy kept the last bytes of a larger body.
            self.unreadable_request(llm, copy.seen);
        } else {
            self.read_request(llm, copy.bytes());
        }
    }

    /// Admits the call on the first chunk of a body too large to hold, before any of it goes
    /// upstream: the prompt estimated from `content-length` (or this first chunk) plus
    /// `default_max_tokens` (the output cap is not read yet), against the budgets that count
    /// every model — and those of the model, if `model` was in this chunk. The rest is decided
    /// by [`admit`](Self::admit) when the body ends.
    pub fn admit_early(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        llm: &LlmSettings,
        first_chunk: usize,
        now: Nanos,
    ) -> Admission {
        if self.early.is_some() {
            return Admission::Admitted; // once only: holds are never taken twice
        }
        let model = self
            .rewriter
            .as_ref()
            .and_then(|r| r.model())
            .map(String::from);
        let size = u64::try_from(first_chunk).unwrap_or(u64::MAX);
        let input = estimate_tokens(self.content_length.map_or(size, |n| n.max(size)));
        let estimate = input.saturating_add(llm.default_max_tokens.max(self.least_output()));
        let known = model.is_some();
        self.early = Some((estimate, model.clone()));
        let outcome = policy.admit_tokens_where(
            tier,
            &self.identity,
            model.as_deref(),
            Ask::Tokens(estimate),
            now,
            &mut SharedData,
            |_, budget| known || budget.scope == ModelScope::All,
        );
        if !self.rewrites {
            // Only read for the model, which matters no more.
            self.rewriter = None;
        }
        self.take_outcome(outcome, false)
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Raises the early admission of a body sent without `content-length` as more of it
    /// arrives, before each chunk is forwarded: `seen` bytes so far, estimated as at the first
    /// chunk. The holds already taken grow by the difference (the same budgets, the same
    /// slots); refused, everything held is given back and the call is refused before the rest
    /// of its body goes upstream.
    pub fn top_up(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        llm: &LlmSettings,
        seen: usize,
        now: Nanos,
    ) -> Admission {
        let Some((held, model)) = self.early.clone() else {
            return Admission::Admitted;
        };
        if self.content_length.is_some() || self.reservation.is_none() {
            return Admission::Admitted;
        }
        let input = estimate_tokens(u64::try_from(seen).unwrap_or(u64::MAX));
        let need = input.saturating_add(llm.default_max_tokens.max(self.least_output()));
        if need <= held {
            return Admission::Admitted;
        }
        let outcome = self.raise_holds(policy, tier, model.as_deref(), Ask::Tokens(need), now);
        if matches!(outcome, Admission::Admitted) {
            self.early = Some((need, model));
        }
        outcome
    }

    /// Raises every hold of the early reservation to `ask` (an estimate, capped at each
    /// budget's burst as at admission; or all that is left). Refused, everything held is given
    /// back.
    fn raise_holds(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        model: Option<&str>,
        ask: Ask,
        now: Nanos,
    ) -> Admission {
        let wanted: Vec<(usize, Ask)> = self
            .reservation
            .as_ref()
            .map(|r| {
                r.holds
                    .iter()
                    .filter_map(|h| {
                        let burst = tier.budgets.get(h.budget)?.rate.burst();
                        let more = match ask {
                            Ask::Tokens(need) => {
                                Ask::Tokens(need.min(burst).saturating_sub(h.reserved))
                            }
                            Ask::AllLeft { .. } => Ask::AllLeft { at_least: 0 },
                        };
                        (more != Ask::Tokens(0)).then_some((h.budget, more))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (budget, more) in wanted {
            let outcome = policy.admit_tokens_where(
                tier,
                &self.identity,
                model,
                more,
                now,
                &mut SharedData,
                |i, _| i == budget,
            );
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
                        policy.release_reservation(tier, &early, now, &mut SharedData);
                    }
                    return self.take_outcome(other, true);
                }
            }
        }
        if let (Some(mine), Ask::Tokens(need)) = (self.reservation.as_mut(), ask) {
            mine.estimate = mine.estimate.max(need);
        }
        Admission::Admitted
    }

    /// Admits the call once its body is read: against every budget that applies to its model
    /// and was not already held by [`admit_early`](Self::admit_early). A call whose input is
    /// stored upstream asks for all that is left (see [`Ask::AllLeft`]).
    pub fn admit(&mut self, policy: &Policy, tier: &Tier, now: Nanos) -> Admission {
        let model = self.model.clone();
        let ask = if self.stored_input {
            Ask::AllLeft {
                at_least: self.estimate,
            }
        } else {
            Ask::Tokens(self.estimate)
        };
        if let Some((_, early_model)) = self.early.clone() {
            // Admitted early on what the first chunk showed: raise those holds to what the
            // whole body asks (its own cap; all that is left for input stored upstream).
            let raised = self.raise_holds(policy, tier, early_model.as_deref(), ask, now);
            if !matches!(raised, Admission::Admitted) {
                return raised;
            }
        }
        let held: Vec<usize> = self
            .reservation
            .as_ref()
            .map(|r| r.holds.iter().map(|h| h.budget).collect())
            .unwrap_or_default();
        let outcome = policy.admit_tokens_where(
            tier,
            &self.identity,
            model.as_deref(),
            ask,
            now,
            &mut SharedData,
            |i, _| !held.contains(&i),
        );
        if !matches!(outcome, TokenOutcome::Admitted { .. }) {
            // Refused (or failed) after an early admission: give that back too.
            if let Some(early) = self.reservation.take() {
                policy.release_reservation(tier, &early, now, &mut SharedData);
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

    /// Refuses at the request headers a caller whose budgets cannot pay even the least this
    /// call can cost; returns whether it is refused (the budgets' states are then in
    /// `tokens`). A failing store is left to admission, which knows what to do about it.
    pub fn refuse_early(&mut self, policy: &Policy, tier: &Tier, now: Nanos) -> bool {
        let refused = policy
            .peek_tokens(
                tier,
                &self.identity,
                self.least_cost(),
                now,
                &mut SharedData,
            )
            .ok()
            .flatten();
        let Some(decision) = refused else {
            return false;
        };
        self.tokens = Some(decision);
        self.phase = Phase::Done;
        true
    }

    /// What a response whose usage cannot be read costs.
    pub fn missing_usage_charge(&self, llm: &LlmSettings) -> u64 {
        match llm.on_missing_usage {
            OnMissingUsage::Reservation => self.estimate,
            OnMissingUsage::Nothing => 0,
        }
    }

    /// Decides how to follow the response from its headers. Returns whether to hold them.
    pub fn on_response_headers(
        &mut self,
        llm: &LlmSettings,
        status: Option<&[u8]>,
        content_type: Option<&[u8]>,
        content_length: Option<u64>,
        encoded: bool,
        end_of_stream: bool,
    ) -> bool {
        // Hold only what is known to fit in Envoy's buffer: a body that outgrows it while held
        // is answered 500 by Envoy.
        let fits = content_length.is_some_and(|n| n <= llm.buffer_limit as u64);
        let ok = status.is_some_and(|s| s.first() == Some(&b'2'));
        self.phase = if !ok {
            // The API refused the request: providers do not bill for errors.
            Phase::Unreadable { charge: 0 }
        } else if encoded || end_of_stream {
            Phase::Unreadable {
                charge: self.missing_usage_charge(llm),
            }
        } else if content_type.is_some_and(|c| c.starts_with(b"text/event-stream")) {
            if self.usage_added {
                self.remover = Some(AddedUsageRemover::new(llm.max_response_body));
            }
            Phase::Streaming(Box::new(SseScanner::new(SseLimits::new(
                llm.max_response_body,
            ))))
        } else {
            Phase::Json {
                holding: llm.hold_headers && fits,
                copy: BodyCopy::default(),
            }
        };
        matches!(self.phase, Phase::Json { holding: true, .. })
    }

    /// What a JSON response costs, from the copy of its body.
    pub fn json_cost(&self, llm: &LlmSettings, copy: &BodyCopy) -> u64 {
        let usage = if copy.truncated {
            usage_from_tail(copy.bytes())
        } else {
            usage_from_json(copy.bytes())
        };
        match usage {
            Ok(usage) => llm.cost.tokens(&usage),
            Err(_) => self.missing_usage_charge(llm),
        }
    }

    /// What the response has cost, now that it ends. `complete` is false for a stream cut
    /// short (client gone, upstream reset).
    pub fn final_cost(&mut self, llm: &LlmSettings, complete: bool) -> Option<u64> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            // Admitted early, but the body never ended: an incomplete request is not served.
            Phase::ReadingRequest { .. } if self.reservation.is_some() => Some(0),
            Phase::ReadingRequest { .. } | Phase::Done => None,
            Phase::Unreadable { charge } => Some(charge),
            // Nothing of the response was seen, or only part of a JSON body: what the client
            // received cannot be counted, so the reservation stands.
            Phase::Admitted => Some(self.estimate),
            Phase::Json { copy, .. } => Some(if complete {
                self.json_cost(llm, &copy)
            } else {
                self.estimate
            }),
            Phase::Streaming(mut scanner) => {
                scanner.finish();
                let seen = StreamSeen {
                    ended: complete,
                    completed: scanner.completed(),
                    reported: scanner.usage(),
                    received: scanner.usage_or_estimate(self.estimated_input),
                    estimate: self.estimate,
                };
                Some(stream_charge(
                    &seen,
                    &llm.cost,
                    llm.on_incomplete,
                    llm.on_missing_usage,
                ))
            }
        }
    }

    /// The budgets (index, caller's slot) this call holds, before it is settled.
    pub fn held(&self) -> Vec<(usize, policy_core::hash::Slot)> {
        self.reservation
            .iter()
            .flat_map(|r| r.holds.iter().map(|h| (h.budget, h.slot)))
            .collect()
    }

    /// Replaces the hold by `cost`; keeps the budgets' new states for the headers. Returns
    /// (reserved, charged) for the metrics.
    pub fn settle(
        &mut self,
        policy: &Policy,
        tier: &Tier,
        cost: u64,
        now: Nanos,
    ) -> Option<(u64, u64)> {
        self.phase = Phase::Done;
        let reservation = self.reservation.take()?;
        let reserved = reservation
            .holds
            .iter()
            .map(|h| h.reserved)
            .max()
            .unwrap_or(0);
        if let Ok(d) = policy.settle_tokens(tier, &reservation, cost, now, &mut SharedData) {
            self.tokens = Some(d);
        }
        Some((reserved, cost))
    }

    /// The rate-limit fields of this call's response (or refusal), plus Anthropic's own on
    /// `/v1/messages`, whose resets are instants: `now` is only read for those (a host call).
    pub fn fields(&self, tier: &Tier, llm: &LlmSettings, now: impl FnOnce() -> Nanos) -> Fields {
        let mut fields = headers::llm_fields(tier, Some(&self.requests), self.tokens.as_ref());
        if self.api == ApiKind::AnthropicMessages {
            let counted = headers::Counted::of(&llm.cost);
            let (requests, tokens) = (Some(&self.requests), self.tokens.as_ref());
            fields.extend(headers::anthropic_fields(
                tier,
                requests,
                tokens,
                counted,
                now(),
            ));
        }
        fields
    }

    /// When refused, how long until this call would pass.
    pub fn retry_after(&self) -> Option<Nanos> {
        headers::llm_retry_after(Some(&self.requests), self.tokens.as_ref())
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
