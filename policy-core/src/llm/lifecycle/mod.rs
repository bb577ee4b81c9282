//! One LLM call from its request headers to its settlement, as a state machine.
//!
//! The filter feeds it what Envoy reports — the request headers, each request body chunk, the
//! response headers, each response body chunk, the end of the stream (`on_log`) — and applies
//! what it answers: go on, hold (let Envoy buffer), refuse with this reason, put these bytes in
//! place of the chunk, set this `content-length`, decorate the response, and the settlement to
//! count. Nothing here reads a clock or does I/O: time (a closure, called only when a decision
//! needs it), the [`Policy`] and the [`Store`] come in an [`Env`]; the host's buffers are read
//! through a closure, only when a decision needs the bytes. So every phase can be tested
//! natively, and the filter stays glue (Envoy's `local_ratelimit` shape: decode decides, encode
//! decorates).
//!
//! Why the phases are what they are:
//! - Envoy resumes a stream held at its *headers* only when the Wasm filter is configured with
//!   `allow_on_headers_stop_iteration: true`, which Envoy Gateway cannot set today. So by
//!   default a call never holds headers: it has Envoy buffer a small request body (to read it
//!   whole before it goes upstream), otherwise it reads the body as it passes; either way an
//!   OpenAI stream's body is rewritten to ask for usage ([`UsageRewriter`]), with
//!   `content-length` announced exactly at the headers. With `llm.hold_headers` it also holds
//!   headers, so a JSON response's own headers show its charge.
//! - What can be refused is refused before the body goes upstream: at the headers (read-only,
//!   from `content-length`), on the first chunk of a body that passes, or when a held body is
//!   read (`admission.rs`).
//! - Where the call asked an OpenAI stream for usage the client did not ask for, each response
//!   chunk is replaced by the same bytes without what the option added
//!   ([`AddedUsageRemover`]); the usage is read from the upstream's bytes first.
//! - Whatever happens (a body too large to read, a response without usage, a client that
//!   disconnects mid-stream), a call that was admitted is settled exactly once, at
//!   [`LlmCall::on_log`] at the latest; what an ended stream costs is
//!   [`stream_charge`](super::stream_charge).

mod admission;
mod body;
mod request;
mod response;
mod spend;
mod step;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::budget::{Amount, LlmSettings, Peeked, Reservation};
use crate::decision::Decision;
use crate::hash::Slot;
use crate::headers::{self, ErrorStyle, Fields};
use crate::policy::OnStoreFailure;
use crate::store::Store;
use crate::tier::{Enforcement, Tier};
use crate::{Nanos, Policy};

use super::{AddedUsageRemover, ApiKind, SseScanner, UsageRewriter, MAX_STREAM_USAGE_GROWTH};

pub use admission::Admission;
pub use body::BodyCopy;
pub use step::{Count, Refusal, RequestStep, ResponseHead, ResponseStep, Settlement, Verdict};

/// Bytes a request body may grow by when asked to report stream usage.
const REWRITE_ROOM: u64 = MAX_STREAM_USAGE_GROWTH as u64;

/// What a call's decisions need from outside: the policy, its store and the time.
pub struct Env<'a, S: Store> {
    /// The policy the call was matched by (its tiers, budgets and `llm` settings).
    pub policy: &'a Policy,
    /// Where the budgets live.
    pub store: &'a mut S,
    /// The current time; called only when a decision needs it (admission, settlement).
    pub now: &'a dyn Fn() -> Nanos,
}

impl<S: Store> core::fmt::Debug for Env<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

/// Where an LLM call is.
#[derive(Debug)]
pub enum Phase {
    /// Reading the request body. `holding`: Envoy buffers it for us (small enough, and it may
    /// need rewriting); otherwise we copy it as it passes.
    ReadingRequest {
        /// Envoy buffers the body until its end.
        holding: bool,
        /// What passed so far (bounded).
        copy: BodyCopy,
    },
    /// Admitted; the response has not started.
    Admitted,
    /// A JSON response. `holding`: held (with its headers) until complete; otherwise copied as
    /// it passes.
    Json {
        /// The response and its headers are held until its end.
        holding: bool,
        /// The body so far (bounded).
        copy: BodyCopy,
    },
    /// An SSE response passing through while its usage is read.
    Streaming(Box<SseScanner>),
    /// A response whose usage cannot be read; `charge` is what it will cost.
    Unreadable {
        /// What the call costs when the response ends.
        charge: Amount,
    },
    /// The store failed during admission and `on_store_failure` let the call through: what is
    /// left of its body still passes through the rewriter (so the upstream gets every byte, as
    /// long as the `content-length` announced), and nothing is held or charged.
    Unmetered,
    /// Settled, refused or never admitted: nothing more to do.
    Done,
}

/// One LLM call: what it asked for, what it holds, where it is.
#[derive(Debug)]
pub struct LlmCall {
    /// Index of its tier in the policy.
    pub tier: usize,
    /// The caller, as the tier identifies it, and its scopes ([`crate::scope`]).
    pub identity: crate::scope::Caller,
    /// The API, from the path.
    pub api: ApiKind,
    /// The request limits' decision (already made at the headers).
    pub requests: Decision,
    phase: Phase,
    /// The model the request path names (Gemini, Vertex AI, an Azure deployment): it wins
    /// over the body's.
    path_model: Option<String>,
    model: Option<String>,
    estimate: u64,
    estimated_input: u64,
    reservation: Option<Reservation>,
    /// The budgets (index in the tier, the caller's slot) the settled reservation held: what
    /// global mode records the charge against.
    settled_budgets: Vec<(usize, Slot)>,
    /// The budgets' states to report (after admission, then after settling).
    tokens: Option<Decision>,
    /// tollgate asked the upstream for stream usage the client did not ask for (it added
    /// `stream_options.include_usage`, or turned the client's `false` into `true`): what that
    /// adds to the stream is read for the charge and removed before it reaches the client.
    usage_added: bool,
    /// Set for an SSE response to a request with `usage_added`: takes out of the stream what
    /// the option added before the client sees it.
    remover: Option<AddedUsageRemover>,
    /// Follows the request body as it passes: rewrites it so an OpenAI stream reports usage
    /// (whether the body is held or not), and notes `model` for an admission decided before the
    /// whole body is read. `None` once it has nothing left to do.
    rewriter: Option<UsageRewriter>,
    /// The rewriter may change the body (not only read it).
    rewrites: bool,
    /// The request's `content-length`, when it has one.
    content_length: Option<u64>,
    /// The input is stored upstream (see [`LlmRequest::stored_input`]).
    stored_input: bool,
    /// What the early admission of a passing body held, and for which model: raised as a body
    /// without `content-length` turns out larger.
    early: Option<(u64, Option<String>)>,
    /// The last byte of a passing body's output so far, kept back until the body ends.
    lagging: Vec<u8>,
    /// The model an admission found unpriced (see [`Refusal::Unpriced`]).
    unpriced_model: Option<String>,
    /// A budget would have refused the call, but its tier is in shadow mode: it went on
    /// holding nothing (`Phase::Unmetered`), counted `would_deny`.
    would_deny: bool,
    /// The budget sets the peek at the request headers read, with their CAS: the admission of
    /// the whole body (a held one, or one that came in a single chunk) starts from them instead
    /// of reading them again (one `get` fewer per set; BENCHMARKS.md §2). An early admission of
    /// a passing body reads afresh and drops them.
    peeked: Peeked,
    /// The instant the request headers were decided at (the request limits' reading): a body
    /// Envoy held since is admitted at it, without a clock reading of its own.
    headers_at: Option<Nanos>,
    /// The instant the last admission was decided at: a refusal's instants (Anthropic's
    /// resets) are computed from it, so they agree with its waits.
    decided_at: Option<Nanos>,
}

impl LlmCall {
    /// A call on tier `tier` by `identity`, whose request limits decided `requests`.
    pub fn new(
        tier: usize,
        identity: impl Into<crate::scope::Caller>,
        api: ApiKind,
        requests: Decision,
    ) -> LlmCall {
        LlmCall {
            tier,
            identity: identity.into(),
            api,
            requests,
            phase: Phase::ReadingRequest {
                holding: true,
                copy: BodyCopy::default(),
            },
            path_model: None,
            model: None,
            estimate: 0,
            estimated_input: 0,
            reservation: None,
            settled_budgets: Vec::new(),
            tokens: None,
            usage_added: false,
            remover: None,
            rewriter: None,
            rewrites: false,
            content_length: None,
            stored_input: false,
            early: None,
            lagging: Vec::new(),
            unpriced_model: None,
            would_deny: false,
            peeked: Peeked::new(),
            headers_at: None,
            decided_at: None,
        }
    }

    /// The same call, for a request whose path names its model (see
    /// [`ApiKind::model_in_path`]): that model's budgets apply whatever the body says.
    #[must_use]
    pub fn with_path_model(mut self, model: Option<String>) -> LlmCall {
        self.path_model = model;
        self
    }

    /// Where the call is.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The budgets' states to report, once a budget decided.
    pub fn tokens(&self) -> Option<&Decision> {
        self.tokens.as_ref()
    }

    /// The budgets (index in the tier, the caller's slot) the call's settlement charged; empty
    /// before it settles.
    pub fn settled_budgets(&self) -> &[(usize, Slot)] {
        &self.settled_budgets
    }

    /// The model the request named, once its body is read.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// What the call was estimated to cost (what reserve mode holds).
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// Whether the call is admitted and waits for its response (so the response headers
    /// matter: otherwise the filter need not read them).
    pub fn awaits_response(&self) -> bool {
        matches!(self.phase, Phase::Admitted)
    }

    /// The error format of a refusal.
    pub fn style(&self) -> ErrorStyle {
        match self.api {
            ApiKind::AnthropicMessages => ErrorStyle::Anthropic,
            api if api.is_gemini() => ErrorStyle::Gemini,
            api if api.is_bedrock() => ErrorStyle::Bedrock,
            ApiKind::OllamaChat | ApiKind::OllamaGenerate => ErrorStyle::Ollama,
            _ => ErrorStyle::OpenAi,
        }
    }

    // ---- events ----------------------------------------------------------------------------

    /// The request headers of an admitted LLM request (request limits passed, the API known).
    ///
    /// A request without a body is admitted at once on its estimate from nothing. Otherwise a
    /// caller whose budgets cannot pay even the least this call can cost is refused here,
    /// before anything goes upstream; the body is then held (small enough to buffer, with room
    /// for the rewrite) or followed as it passes, and a body that may be rewritten announces
    /// its original length plus the rewrite's fixed size (unless headers are held: its exact
    /// length is then set when it is read). The verdict is [`Verdict::Hold`] only with
    /// `hold_headers` and a small body.
    pub fn on_request_headers<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        content_length: Option<u64>,
        end_of_stream: bool,
    ) -> RequestStep {
        let policy = env.policy;
        let (Some(tier), Some(llm)) = (policy.tiers().get(self.tier), policy.llm()) else {
            return RequestStep::go();
        };
        if end_of_stream {
            self.unreadable_request(llm, 0);
            return self.admission_step(env, None, None);
        }
        self.content_length = content_length;
        let now = (env.now)();
        self.headers_at = Some(now);
        self.decided_at = Some(now);
        if tier.enforcement == Enforcement::Enforce
            && self.refuse_early(policy, tier, now, env.store)
        {
            let mut step = RequestStep::verdict(Verdict::Refuse(Refusal::Denied));
            step.count = Some(Count::Denied);
            return step;
        }
        // Ask Envoy to buffer only a body known to fit, with room for the rewrite: Envoy adds
        // each read to a held body before calling us, so a body that outgrows its buffer limit
        // while held is answered 413 before the filter can let go.
        let small = content_length
            .is_some_and(|n| n.saturating_add(REWRITE_ROOM) <= llm.buffer_limit as u64);
        if let Phase::ReadingRequest { holding, .. } = &mut self.phase {
            *holding = small;
        }
        let hold = llm.hold_headers && small;
        // Headers held: the exact new length is set once the body is rewritten. Otherwise they
        // leave now, so a body that may be rewritten announces the original length plus the
        // rewrite's fixed size, which the rewrite then always produces exactly (padding with
        // spaces). Without a content-length, Envoy frames the body whatever its size.
        let exact = !hold && content_length.is_some() && self.may_rewrite(llm);
        self.follow_body(llm, exact, small);
        RequestStep {
            verdict: if hold {
                Verdict::Hold
            } else {
                Verdict::Continue
            },
            replace: None,
            content_length: content_length
                .filter(|_| exact)
                .map(|n| n.saturating_add(REWRITE_ROOM)),
            count: None,
        }
    }

    /// A request body event: `size` bytes offered (all of the buffered body while held),
    /// `end` the last. `read` returns those bytes (the host call); it is called only when the
    /// bytes are needed.
    ///
    /// A held body is left to Envoy until its end, then read, rewritten and admitted whole, at
    /// the instant its headers were decided (the filter's request-limit reading, so the clock is
    /// not read again): Envoy held the body since, and an earlier instant has refilled no more
    /// than a later one, so this admits nothing a reading at the body's end would refuse (it
    /// may refuse what that reading would admit, by at most what refills while the body
    /// arrives, and a refusal's wait counts from the headers; a budget that was full counts the
    /// call from its headers, as the request limits do). A body that passes is rewritten a
    /// chunk at a time (its last byte kept back until its end), admitted on its first chunk
    /// before that chunk is forwarded, topped up as a body without `content-length` grows, and
    /// admitted for the rest (its model's budgets, its own cap) at its end, each at its own
    /// instant. A held body that outgrows the buffer limit is followed as it passes from then
    /// on.
    pub fn on_request_body<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        size: usize,
        end: bool,
        read: impl FnOnce() -> Vec<u8>,
    ) -> RequestStep {
        let Some(llm) = env.policy.llm() else {
            return RequestStep::go();
        };
        if matches!(self.phase, Phase::Unmetered) {
            return match self.rewrite_chunk(&read(), end) {
                Ok(replace) => RequestStep {
                    replace,
                    ..RequestStep::go()
                },
                Err(e) => self.refuse_body(env, e),
            };
        }
        let Phase::ReadingRequest { holding, copy } = &mut self.phase else {
            return RequestStep::go();
        };
        let first = copy.seen == 0;
        if *holding {
            if size <= llm.buffer_limit {
                if !end {
                    return RequestStep::verdict(Verdict::Hold); // Envoy buffers it for us.
                }
                let body = read();
                self.read_request(llm, &body);
                let rewritten = match self.rewrite_chunk(&body, true) {
                    Ok(rewritten) => rewritten,
                    Err(e) => return self.refuse_body(env, e),
                };
                let mut step = self.admission_step(env, None, self.headers_at);
                step.content_length = rewritten
                    .as_ref()
                    .filter(|_| llm.hold_headers)
                    .map(|b| u64::try_from(b.len()).unwrap_or(u64::MAX));
                step.replace = rewritten;
                return step;
            }
            // Larger than we may ask Envoy to buffer: copy it as it passes instead.
            *holding = false;
        }
        let chunk = read();
        let rewritten = match self.rewrite_chunk(&chunk, end) {
            Ok(rewritten) => rewritten,
            Err(e) => return self.refuse_body(env, e),
        };
        let seen = match &mut self.phase {
            Phase::ReadingRequest { copy, .. } => {
                copy.push(&chunk, llm.max_request_body);
                copy.seen
            }
            _ => size,
        };
        // A body that passes is admitted on its first chunk, before any of it goes upstream (a
        // body that is all in its first chunk is simply read first), and one without
        // content-length again as it grows. An empty chunk decides nothing: the next one is
        // still the first.
        let early = match (first, end) {
            _ if size == 0 => None,
            (_, true) => None,
            (true, false) => Some(Early::First(size)),
            (false, false) => Some(Early::More(seen)),
        };
        let mut count = None;
        if early.is_some() {
            let step = self.admission_step(env, early, None);
            if step.verdict != Verdict::Continue {
                return step; // refused before this chunk goes upstream
            }
            count = step.count;
        }
        if !end {
            return RequestStep {
                verdict: Verdict::Continue,
                replace: rewritten,
                content_length: None,
                count,
            };
        }
        self.read_copied_request(llm);
        // What the first chunk did not decide (the model's own budgets, once the model is
        // known) is decided now; the body already went upstream, so a refusal resets it.
        let mut step = self.admission_step(env, None, None);
        step.replace = rewritten;
        step
    }

    /// The response headers. Decides how to follow the response: an error status costs
    /// nothing; an encoded or empty body costs per `on_missing_usage`; an event stream is
    /// scanned (and cleaned of what tollgate's `include_usage` added); JSON is copied, and held
    /// with its headers under `hold_headers` when it is known to fit.
    pub fn on_response_headers<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        head: &ResponseHead<'_>,
    ) -> ResponseStep {
        let Some(llm) = env.policy.llm() else {
            return ResponseStep::default();
        };
        if !self.awaits_response() {
            // A shadow tier's would-be refusal shows its budgets' state if the tier asks.
            return ResponseStep {
                decorate: self.would_deny,
                ..ResponseStep::default()
            };
        }
        if self.follow_response(env.policy, llm, head) {
            return ResponseStep {
                hold: true,
                ..ResponseStep::default()
            };
        }
        ResponseStep {
            drop_content_length: self.remover.is_some(),
            settled: if head.end_of_stream {
                self.settle(env, true)
            } else {
                None
            },
            decorate: true,
            ..ResponseStep::default()
        }
    }

    /// A response body event: `size` bytes offered, `end` the last; `read` returns them (the
    /// host call), called only when they are needed. Settles the call at the end.
    pub fn on_response_body<S: Store>(
        &mut self,
        env: &mut Env<'_, S>,
        size: usize,
        end: bool,
        read: impl FnOnce() -> Vec<u8>,
    ) -> ResponseStep {
        let Some(llm) = env.policy.llm() else {
            return ResponseStep::default();
        };
        let mut step = ResponseStep::default();
        match &mut self.phase {
            Phase::Streaming(scanner) => {
                let chunk = read();
                // The usage is read from the upstream's bytes, before any are taken out.
                scanner.feed(&chunk);
                // A chunk of whole events without `"usage"` is not copied nor compared.
                if let Some(remover) = self
                    .remover
                    .as_mut()
                    .filter(|r| !r.passes_unchanged(&chunk))
                {
                    let mut out = Vec::with_capacity(chunk.len());
                    remover.push(&chunk, &mut out);
                    if end {
                        remover.finish(&mut out);
                    }
                    // Replaces this chunk only; bytes of an unfinished event stay with the
                    // remover until a later chunk completes them.
                    step.replace = Some(out).filter(|out| *out != chunk);
                }
            }
            Phase::Json {
                holding: true,
                copy,
            } if size <= llm.buffer_limit => {
                if !end {
                    step.hold = true;
                    return step;
                }
                // Held whole: charge it, then let the headers out showing the charge.
                copy.push(&read(), llm.max_response_body);
                step.decorate = true;
            }
            Phase::Json { holding, copy } => {
                // Too large to hold: the headers go now, with the reservation's state.
                step.decorate = *holding;
                copy.push(&read(), llm.max_response_body);
                *holding = false;
            }
            Phase::Unreadable { .. } => {}
            _ => return step,
        }
        if end {
            step.settled = self.settle(env, true);
        }
        step
    }

    /// The stream is over (`on_log`). A call still unsettled here ended early: the client went
    /// away or the upstream reset. It is settled now, as a stream cut short.
    pub fn on_log<S: Store>(&mut self, env: &mut Env<'_, S>) -> Option<Settlement> {
        self.settle(env, false)
    }

    // ---- what the client sees --------------------------------------------------------------

    /// The rate-limit fields of this call's response (or refusal), plus Anthropic's own on
    /// `/v1/messages`, whose resets are instants: `now` is only called for those.
    /// A tier in shadow mode shows none unless it sets `shadow_headers`, and then never a
    /// wait (`retry-after`, `retry-after-ms`): nothing was refused.
    pub fn fields(&self, tier: &Tier, llm: &LlmSettings, now: impl FnOnce() -> Nanos) -> Fields {
        if tier.enforcement == Enforcement::Shadow {
            if !tier.shadow_headers {
                return Fields::new();
            }
            let mut fields = self.enforced_fields(tier, llm, now);
            fields.retain(|(name, _)| !name.starts_with("retry-after"));
            return fields;
        }
        self.enforced_fields(tier, llm, now)
    }

    /// Whether a budget would have refused this call in a shadow tier (it went on unmetered).
    pub fn would_deny(&self) -> bool {
        self.would_deny
    }

    fn enforced_fields(
        &self,
        tier: &Tier,
        llm: &LlmSettings,
        now: impl FnOnce() -> Nanos,
    ) -> Fields {
        let mut fields = headers::llm_fields(tier, Some(&self.requests), self.tokens.as_ref());
        if self.api == ApiKind::AnthropicMessages {
            let counted = headers::Counted::of(&llm.cost);
            let token_budgets = self
                .tokens
                .as_ref()
                .and_then(|d| headers::of_meter(tier, d, crate::budget::Meter::Tokens));
            let (requests, tokens) = (Some(&self.requests), token_budgets.as_ref());
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

    /// The body of a 429 for this call, in its API's error format.
    pub fn denial_body(&self, tier: &Tier) -> String {
        headers::llm_denial_body(
            self.style(),
            tier,
            Some(&self.requests),
            self.tokens.as_ref(),
        )
    }

    /// The body of the 400 refusing a model the price table does not price
    /// ([`Refusal::Unpriced`]), in its API's error format.
    pub fn unpriced_body(&self, model: &str) -> String {
        headers::unpriced_body(self.style(), model)
    }

    /// The instant the call's last admission was decided at (`None` before any): what a
    /// refusal's instants must be computed from, since its waits were (a held body is admitted
    /// at its headers' instant, earlier than the event that refuses it).
    pub fn decided_at(&self) -> Option<Nanos> {
        self.decided_at
    }

    /// When refused, how long until this call would pass.
    pub fn retry_after(&self) -> Option<Nanos> {
        headers::llm_retry_after(Some(&self.requests), self.tokens.as_ref())
    }

    /// What `on_store_failure` makes of a store that failed during admission.
    fn store_failed(policy: &Policy) -> Verdict {
        match policy.on_store_failure() {
            OnStoreFailure::Allow => Verdict::Continue,
            OnStoreFailure::Deny => Verdict::Refuse(Refusal::Unavailable),
        }
    }
}

/// An admission decided while a body passes, before the chunk in hand goes upstream.
#[derive(Clone, Copy, Debug)]
enum Early {
    /// On its first chunk, of this size.
    First(usize),
    /// On a later chunk of a body without `content-length`, this many bytes seen in all.
    More(usize),
}

#[cfg(test)]
mod shadow_tests;
#[cfg(test)]
mod tests;
