//! The LLM side of a stream: read the request body, hold tokens, read usage, settle.
//!
//! Each step maps one Envoy callback to one policy-core call; the state between callbacks is
//! the [`Phase`]. Whatever happens (a body too large to read, a response without usage, a client
//! that disconnects mid-stream), the stream ends settled exactly once, in `on_log` at the latest.

use policy_core::budget::{LlmSettings, OnIncomplete, OnMissingUsage, Reservation};
use policy_core::decision::Decision;
use policy_core::headers::{self, ErrorStyle, Fields};
use policy_core::llm::{
    ensure_stream_usage, estimate_tokens, usage_from_json, ApiKind, LlmRequest, SseLimits,
    SseScanner,
};
use policy_core::policy::TokenOutcome;
use policy_core::tier::Tier;
use policy_core::{Nanos, Policy};

use crate::shared::SharedData;

/// Where an LLM stream is.
#[derive(Debug)]
pub enum Phase {
    /// Request headers held until the body is read.
    ReadingRequest,
    /// Admitted; the response has not started.
    Admitted,
    /// A JSON response being held to read its usage before the headers go out.
    Buffering,
    /// An SSE response passing through while its usage is read.
    Streaming(Box<SseScanner>),
    /// A response whose usage cannot be read; `charge` is what it will cost.
    Unreadable { charge: u64 },
    /// Settled: nothing more to do.
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
}

/// What admission decided.
pub enum Admission {
    Admitted,
    Denied,
    StoreFailed,
}

impl LlmStream {
    pub fn new(tier: usize, identity: Vec<u8>, path: &str, requests: Decision) -> LlmStream {
        LlmStream {
            tier,
            identity,
            api: ApiKind::from_path(path),
            requests,
            phase: Phase::ReadingRequest,
            model: None,
            estimate: 0,
            estimated_input: 0,
            reservation: None,
            tokens: None,
        }
    }

    pub fn style(&self) -> ErrorStyle {
        match self.api {
            ApiKind::AnthropicMessages => ErrorStyle::Anthropic,
            _ => ErrorStyle::OpenAi,
        }
    }

    /// Reads what a complete request body asks for; returns a rewritten body when the stream
    /// must be told to report usage.
    pub fn read_request(&mut self, llm: &LlmSettings, body: &[u8]) -> Option<Vec<u8>> {
        match LlmRequest::parse(body) {
            Ok(req) => {
                self.estimated_input = req.estimated_input_tokens();
                let output = req
                    .max_output_all_choices()
                    .unwrap_or(llm.default_max_tokens);
                self.estimate = self.estimated_input.saturating_add(output);
                self.model = req.model;
                if llm.inject_stream_usage {
                    return ensure_stream_usage(self.api, body).ok().flatten();
                }
                None
            }
            Err(_) => {
                self.unreadable_request(llm, body.len());
                None
            }
        }
    }

    /// A body too large (or not JSON) to read: estimate from its size and the default cap.
    pub fn unreadable_request(&mut self, llm: &LlmSettings, size: usize) {
        self.estimated_input = estimate_tokens(u64::try_from(size).unwrap_or(u64::MAX));
        self.estimate = self.estimated_input.saturating_add(llm.default_max_tokens);
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn admit(&mut self, policy: &Policy, tier: &Tier, now: Nanos) -> Admission {
        let model = self.model.clone();
        match policy.admit_tokens(
            tier,
            &self.identity,
            model.as_deref(),
            self.estimate,
            now,
            &mut SharedData,
        ) {
            TokenOutcome::Admitted {
                reservation,
                decision,
            } => {
                self.reservation = Some(reservation);
                self.tokens = Some(decision);
                self.phase = Phase::Admitted;
                Admission::Admitted
            }
            TokenOutcome::Denied { decision } => {
                self.tokens = Some(decision);
                self.phase = Phase::Done;
                Admission::Denied
            }
            TokenOutcome::StoreFailed(_) => {
                self.phase = Phase::Done;
                Admission::StoreFailed
            }
        }
    }

    /// The estimate, for a response whose usage cannot be read.
    pub fn missing_usage_charge(&self, llm: &LlmSettings) -> u64 {
        match llm.on_missing_usage {
            OnMissingUsage::Reservation => self.estimate,
            OnMissingUsage::Nothing => 0,
        }
    }

    /// Decides how to follow the response from its headers.
    pub fn on_response_headers(
        &mut self,
        llm: &LlmSettings,
        status: Option<&[u8]>,
        content_type: Option<&[u8]>,
        encoded: bool,
        end_of_stream: bool,
    ) {
        let ok = status.is_some_and(|s| s.first() == Some(&b'2'));
        self.phase = if !ok {
            // The API refused the request: providers do not bill for errors.
            Phase::Unreadable { charge: 0 }
        } else if encoded {
            Phase::Unreadable {
                charge: self.missing_usage_charge(llm),
            }
        } else if content_type.is_some_and(|c| c.starts_with(b"text/event-stream")) {
            Phase::Streaming(Box::new(SseScanner::new(SseLimits::new(
                llm.max_response_body,
            ))))
        } else if end_of_stream {
            Phase::Unreadable {
                charge: self.missing_usage_charge(llm),
            }
        } else {
            Phase::Buffering
        };
    }

    /// What a complete JSON response costs.
    pub fn json_cost(&self, llm: &LlmSettings, body: &[u8]) -> u64 {
        match usage_from_json(body) {
            Ok(usage) => llm.cost.tokens(&usage),
            Err(_) => self.missing_usage_charge(llm),
        }
    }

    /// What the stream has cost so far, when it ends now. `complete` is false for a stream cut
    /// short (client gone, upstream reset).
    pub fn final_cost(&mut self, llm: &LlmSettings, complete: bool) -> Option<u64> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::ReadingRequest | Phase::Done => None,
            Phase::Unreadable { charge } => Some(charge),
            Phase::Admitted | Phase::Buffering => Some(match (complete, llm.on_incomplete) {
                (true, _) => self.missing_usage_charge(llm),
                (false, _) => self.estimate,
            }),
            Phase::Streaming(mut scanner) => {
                scanner.finish();
                let usage = match scanner.usage() {
                    Some(u) if complete && scanner.completed() => u,
                    _ if !complete && llm.on_incomplete == OnIncomplete::Reservation => {
                        return Some(self.estimate)
                    }
                    _ => scanner.usage_or_estimate(self.estimated_input),
                };
                Some(llm.cost.tokens(&usage))
            }
        }
    }

    /// Replaces the hold by `cost`; keeps the budgets' new states for the headers.
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

    pub fn fields(&self, tier: &Tier) -> Fields {
        headers::llm_fields(tier, Some(&self.requests), self.tokens.as_ref())
    }
}
