//! The request side of a call: how its body is followed, rewritten and read for its estimate.

use alloc::vec::Vec;

use crate::budget::LlmSettings;
use crate::store::Store;

use super::super::{estimate_tokens, LlmRequest, RewriteError, UsageRewriter};
use super::{Env, LlmCall, Phase, Refusal, RequestStep, Verdict};

impl LlmCall {
    /// Refuses a request whose body cannot be rewritten as announced. Headers may already be
    /// upstream: the local reply resets that request.
    pub(super) fn refuse_body<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        error: RewriteError,
    ) -> RequestStep {
        // A body that passes may have been admitted on its first chunk: refused, it holds
        // nothing.
        self.give_back(env);
        self.phase = Phase::Done;
        RequestStep::verdict(Verdict::Refuse(Refusal::BadBody(error)))
    }

    /// Sets how the body will be followed. `exact`: `content-length` was announced as the
    /// original plus [`MAX_STREAM_USAGE_GROWTH`], so the rewrite pads to it. `held`: the body
    /// will be read whole before it goes upstream, so a body that is never rewritten needs no
    /// reading as it passes (for its model, before admission).
    pub(super) fn follow_body(&mut self, llm: &LlmSettings, exact: bool, held: bool) {
        self.rewrites = self.may_rewrite(llm);
        self.rewriter = match (self.rewrites, exact) {
            (true, true) => Some(UsageRewriter::exact()),
            (true, false) => Some(UsageRewriter::new()),
            (false, _) if held => None,
            (false, _) => Some(UsageRewriter::read_only()),
        };
    }

    /// Whether this request's body may be rewritten (to ask an OpenAI stream for its usage).
    pub(super) fn may_rewrite(&self, llm: &LlmSettings) -> bool {
        llm.inject_stream_usage && self.api.needs_stream_usage_option()
    }

    /// The least this call can cost, for a refusal before any of it goes upstream: the prompt
    /// estimated from `content-length` (none without it) plus one output token (none for
    /// embeddings). Admission never asks for less (see [`read_request`](Self::read_request)).
    pub(super) fn least_cost(&self) -> u64 {
        let input = self.content_length.map_or(0, estimate_tokens);
        input.saturating_add(self.least_output())
    }

    pub(super) fn least_output(&self) -> u64 {
        u64::from(!self.api.input_only())
    }

    /// Passes one chunk of the request body through the rewriter. `Ok(Some(bytes))`: send these
    /// instead; `Ok(None)`: the chunk goes as it is.
    ///
    /// The last byte of the output is kept back until the body ends (and goes with its end):
    /// Envoy's HTTP/1 codec forwards a body's bytes before it calls the filter with the end of
    /// the stream, so without this an upstream could receive a complete request — every byte
    /// its `content-length` announced — and serve it before the admission at the body's end
    /// refuses it. One byte short, it waits, and the refusal resets it.
    pub(super) fn rewrite_chunk(
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

    /// Reads what a complete request body asks for (the body is rewritten separately, by
    /// [`rewrite_chunk`](Self::rewrite_chunk)).
    pub(super) fn read_request(&mut self, llm: &LlmSettings, body: &[u8]) {
        match LlmRequest::parse(body) {
            Ok(req) => {
                self.estimated_input = req.estimated_input_tokens();
                // At least one output token (none for embeddings): what `least_cost` assumed.
                let output = if self.api.input_only() {
                    0
                } else {
                    req.max_output_all_choices()
                        .unwrap_or(llm.default_max_tokens)
                }
                .max(self.least_output());
                self.estimate = self.estimated_input.saturating_add(output);
                // A model named in the path (Gemini, Vertex AI, an Azure deployment) is the
                // one the upstream serves, whatever the body says.
                self.model = self.path_model.clone().or(req.model);
                self.stored_input = req.stored_input;
            }
            Err(_) => self.unreadable_request(llm, body.len()),
        }
    }

    /// A body too large (or not JSON) to read: estimate from its size and the default cap; the
    /// model stays unknown, so every per-model budget applies.
    pub(super) fn unreadable_request(&mut self, llm: &LlmSettings, size: usize) {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        self.estimated_input = estimate_tokens(self.content_length.map_or(size, |n| n.max(size)));
        self.estimate = self.estimated_input.saturating_add(llm.default_max_tokens);
        self.model = self.path_model.clone();
    }

    /// Reads a request body copied as it passed (never rewritten).
    pub(super) fn read_copied_request(&mut self, llm: &LlmSettings) {
        let copy = match core::mem::replace(&mut self.phase, Phase::Admitted) {
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
}
