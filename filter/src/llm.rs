//! The LLM side of a stream: read the request body, hold tokens, read usage, settle.
//!
//! Envoy resumes a stream held at its *headers* only when the Wasm filter is configured with
//! `allow_on_headers_stop_iteration: true`, which Envoy Gateway cannot set today. So by default
//! tollgate never holds headers: it buffers a small request body (to read `model` and rewrite
//! `stream_options`), otherwise reads bodies as they pass, and reads usage from a bounded copy
//! of the response. With `llm.hold_headers` it also holds headers, so a rewritten request keeps
//! an exact `content-length` and a JSON response's own headers show its charge.
//!
//! Whatever happens (a body too large to read, a response without usage, a client that
//! disconnects mid-stream), the stream ends settled exactly once, in `on_log` at the latest.

use policy_core::budget::{LlmSettings, OnIncomplete, OnMissingUsage, Reservation};
use policy_core::decision::Decision;
use policy_core::headers::{self, ErrorStyle, Fields};
use policy_core::llm::{
    ensure_stream_usage, estimate_tokens, usage_from_json, usage_from_tail, ApiKind, LlmRequest,
    SseLimits, SseScanner,
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
        }
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

    /// Reads what a complete request body asks for; returns a rewritten body when the stream
    /// must be told to report usage and `rewrite` allows it.
    pub fn read_request(
        &mut self,
        llm: &LlmSettings,
        body: &[u8],
        rewrite: bool,
    ) -> Option<Vec<u8>> {
        match LlmRequest::parse(body) {
            Ok(req) => {
                self.estimated_input = req.estimated_input_tokens();
                let output = match self.api {
                    // Embeddings produce no output tokens.
                    ApiKind::OpenAiEmbeddings => 0,
                    _ => req
                        .max_output_all_choices()
                        .unwrap_or(llm.default_max_tokens),
                };
                self.estimate = self.estimated_input.saturating_add(output);
                self.model = req.model;
                if rewrite && self.may_rewrite(llm) {
                    let rewritten = ensure_stream_usage(self.api, body).ok().flatten();
                    self.usage_added = rewritten.is_some();
                    return rewritten;
                }
                None
            }
            Err(_) => {
                self.unreadable_request(llm, body.len());
                None
            }
        }
    }

    /// A body too large (or not JSON) to read: estimate from its size and the default cap; the
    /// model stays unknown, so every per-model budget applies.
    pub fn unreadable_request(&mut self, llm: &LlmSettings, size: usize) {
        self.estimated_input = estimate_tokens(u64::try_from(size).unwrap_or(u64::MAX));
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
            self.read_request(llm, copy.bytes(), false);
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn admit(&mut self, policy: &Policy, tier: &Tier, now: Nanos) -> Admission {
        let model = self.model.clone();
        let outcome = policy.admit_tokens(
            tier,
            &self.identity,
            model.as_deref(),
            self.estimate,
            now,
            &mut SharedData,
        );
        match outcome {
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
                let usage = scanner.usage();
                Some(match (complete, usage) {
                    (true, Some(u)) if scanner.completed() => llm.cost.tokens(&u),
                    // Usage began but the stream did not finish normally: raise the output
                    // to what was streamed.
                    (true, Some(_)) => llm
                        .cost
                        .tokens(&scanner.usage_or_estimate(self.estimated_input)),
                    (true, None) => self.missing_usage_charge(llm),
                    (false, _) if llm.on_incomplete == OnIncomplete::Reservation => self.estimate,
                    (false, _) => llm
                        .cost
                        .tokens(&scanner.usage_or_estimate(self.estimated_input)),
                })
            }
        }
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
