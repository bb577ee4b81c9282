//! The response side of a call: how it is followed, what it costs when it ends, settlement.

use alloc::boxed::Box;

use crate::budget::{Amount, LlmSettings, Meter, OnMissingUsage};
use crate::store::Store;
use crate::Policy;

use super::super::{
    stream_charge, stream_charge_by, usage_from_json, usage_from_tail, AddedUsageRemover, ApiKind,
    Framing, SseLimits, SseScanner, StreamSeen,
};
use super::{BodyCopy, Env, LlmCall, Phase, ResponseHead, Settlement};

impl LlmCall {
    /// What a response whose usage cannot be read costs.
    pub(super) fn missing_usage_charge(&self, policy: &Policy, llm: &LlmSettings) -> Amount {
        match llm.on_missing_usage {
            OnMissingUsage::Reservation => self.estimate_amount(policy),
            OnMissingUsage::Nothing => Amount::ZERO,
        }
    }

    /// Decides how to follow the response from its headers. Returns whether to hold them.
    pub(super) fn follow_response(
        &mut self,
        policy: &Policy,
        llm: &LlmSettings,
        head: &ResponseHead<'_>,
    ) -> bool {
        // Hold only what is known to fit in Envoy's buffer: a body that outgrows it while held
        // is answered 500 by Envoy.
        let fits = head
            .content_length
            .is_some_and(|n| n <= llm.buffer_limit as u64);
        let ok = head.status.is_some_and(|s| s.first() == Some(&b'2'));
        self.phase = if !ok {
            // The API refused the request: providers do not bill for errors.
            Phase::Unreadable {
                charge: Amount::ZERO,
            }
        } else if head.encoded || head.end_of_stream {
            Phase::Unreadable {
                charge: self.missing_usage_charge(policy, llm),
            }
        } else if let Some(framing) = self.stream_framing(head.content_type) {
            if self.usage_added {
                self.remover = Some(AddedUsageRemover::new(llm.max_response_body));
            }
            Phase::Streaming(Box::new(SseScanner::with_framing(
                SseLimits::new(llm.max_response_body),
                framing,
            )))
        } else {
            Phase::Json {
                holding: llm.hold_headers && fits,
                copy: BodyCopy::default(),
            }
        };
        matches!(self.phase, Phase::Json { holding: true, .. })
    }

    /// How a response with this `content-type` streams, if it does: SSE; NDJSON (Ollama);
    /// AWS's event stream (Bedrock); or,
    /// for Gemini's `:streamGenerateContent` without `alt=sse`, a JSON array.
    fn stream_framing(&self, content_type: Option<&[u8]>) -> Option<Framing> {
        let content_type = content_type.unwrap_or(b"");
        if content_type.starts_with(b"text/event-stream") {
            Some(Framing::Sse)
        } else if content_type.starts_with(b"application/x-ndjson") {
            Some(Framing::Ndjson)
        } else if content_type.starts_with(b"application/vnd.amazon.eventstream") {
            Some(Framing::EventStream)
        } else if self.api == ApiKind::GeminiStream {
            Some(Framing::JsonArray)
        } else {
            None
        }
    }

    /// What a JSON response costs, from the copy of its body.
    pub(super) fn json_cost(&self, policy: &Policy, llm: &LlmSettings, copy: &BodyCopy) -> Amount {
        let usage = if copy.truncated {
            usage_from_tail(copy.bytes())
        } else {
            usage_from_json(copy.bytes())
        };
        match usage {
            Ok(usage) => self.usage_amount(policy, llm, &usage),
            Err(_) => self.missing_usage_charge(policy, llm),
        }
    }

    /// What the response has cost, now that it ends (`None`: nothing to settle). `complete` is
    /// false for a stream cut short (client gone, upstream reset).
    pub(super) fn final_cost(
        &mut self,
        policy: &Policy,
        llm: &LlmSettings,
        complete: bool,
    ) -> Option<Amount> {
        match core::mem::replace(&mut self.phase, Phase::Done) {
            // Admitted early, but the body never ended: an incomplete request is not served.
            Phase::ReadingRequest { .. } if self.reservation.is_some() => Some(Amount::ZERO),
            Phase::ReadingRequest { .. } | Phase::Unmetered | Phase::Done => None,
            Phase::Unreadable { charge } => Some(charge),
            // Nothing of the response was seen, or only part of a JSON body: what the client
            // received cannot be counted, so the reservation stands.
            Phase::Admitted => Some(self.estimate_amount(policy)),
            Phase::Json { copy, .. } => Some(if complete {
                self.json_cost(policy, llm, &copy)
            } else {
                self.estimate_amount(policy)
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
                let tokens =
                    stream_charge(&seen, &llm.cost, llm.on_incomplete, llm.on_missing_usage);
                // The same rule in money: each candidate usage priced, the estimate priced.
                let spend = match self.price(policy, self.budget_model()) {
                    Some(price) => stream_charge_by(
                        &StreamSeen {
                            estimate: self.estimate_amount(policy).spend,
                            ..seen
                        },
                        |u| price.charge(u),
                        llm.on_incomplete,
                        llm.on_missing_usage,
                    ),
                    None => 0,
                };
                Some(Amount { tokens, spend })
            }
        }
    }

    /// Settles the call at its end (complete or not), once: the phase is `Done` afterwards and
    /// the reservation gone, so a second end settles nothing. Replaces the hold by the cost and
    /// keeps the budgets' new states for the headers; a store that fails here leaves the holds
    /// to refill (the states shown stay those of admission).
    pub(super) fn settle<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        complete: bool,
    ) -> Option<Settlement> {
        let policy = env.policy;
        let (llm, tier) = (policy.llm()?, policy.tiers().get(self.tier)?);
        let cost = self.final_cost(policy, llm, complete)?;
        let reservation = self.reservation.take()?;
        let reserved = reservation
            .holds
            .iter()
            .filter(|h| {
                tier.budgets
                    .get(h.budget)
                    .is_some_and(|b| b.meter == Meter::Tokens)
            })
            .map(|h| h.reserved)
            .max()
            .unwrap_or(0);
        self.settled_budgets = reservation
            .holds
            .iter()
            .map(|h| (h.budget, h.slot))
            .collect();
        let landed = match policy.settle_tokens(tier, &reservation, cost, (env.now)(), env.store) {
            Ok(d) => {
                self.tokens = Some(d);
                true
            }
            Err(_) => false,
        };
        Some(Settlement {
            reserved,
            charged: cost.tokens,
            spent: cost.spend,
            landed,
        })
    }
}
