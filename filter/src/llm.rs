//! The LLM side of a stream, as glue: read what Envoy offers (headers, body chunks), feed it to
//! policy-core's [`LlmCall`] state machine, and apply what it decides — go on, hold, refuse,
//! replace a chunk, set `content-length`, decorate the response, count the settlement. Every
//! decision (phases, admission, what a response costs, when to settle) is in
//! `policy_core::llm::lifecycle`, where it is tested natively.
//!
//! The host is read only when a decision needs it: a body chunk through a closure the state
//! machine calls, the clock at most once per event (see [`once_clock`]).

use std::cell::OnceCell;
use std::rc::Rc;

use policy_core::budget::Amount;
use policy_core::global::descriptor::{BucketKey, TableId};
use policy_core::global::strict_tokens;
use policy_core::global::OnUnavailable;
use policy_core::llm::lifecycle::{
    Count, Env, Refusal, RequestStep, ResponseHead, ResponseStep, Settlement, Verdict,
};
use policy_core::llm::LlmCall;
use policy_core::tier::Enforcement;
use policy_core::Nanos;
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use crate::global_strict::{self, PendingTokens, Resolution};
use crate::host;
use crate::http::Stream;
use crate::metrics::{Event, ModelStat};
use crate::record::Record;
use crate::reply;
use crate::shared::SharedData;

/// A clock read lazily and at most once: every decision of one event sees the same instant,
/// and an event that decides nothing costs no host call.
fn once_clock(cell: &OnceCell<Nanos>) -> impl Fn() -> Nanos + '_ {
    || *cell.get_or_init(host::clock)
}

/// The body chunk Envoy offers, without a host call for an empty one (Envoy ends many bodies
/// with an empty end-of-stream callback). A chunk that cannot be read reads as empty.
fn body_bytes(size: usize, buffer: BufferType) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    host::buffer(buffer, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn event(count: Count) -> Event {
    match count {
        Count::Allowed => Event::Allowed,
        Count::Denied => Event::Denied,
        Count::WouldDeny => Event::WouldDeny,
        Count::Contended => Event::Contended,
        Count::StoreFailure => Event::StoreFailure,
    }
}

impl Stream {
    /// Feeds the call (if there is one) one event, with the policy, shared data and `clock`.
    fn feed<R>(
        &mut self,
        clock: &dyn Fn() -> Nanos,
        event: impl FnOnce(&mut LlmCall, &mut Env<'_, SharedData>) -> R,
    ) -> Option<R> {
        let plugin = Rc::clone(&self.plugin);
        let call = self.llm.as_mut()?;
        let mut env = Env {
            policy: &plugin.policy,
            store: &mut SharedData,
            now: clock,
        };
        Some(event(call, &mut env))
    }

    /// Starts following an LLM call whose request limits admitted it, at its request headers
    /// (read at `now`).
    pub(crate) fn start_llm(
        &mut self,
        call: LlmCall,
        content_length: Option<u64>,
        end_of_stream: bool,
        now: Nanos,
    ) -> Action {
        let clock = move || now;
        self.llm = Some(call);
        match self.feed(&clock, |call, env| {
            call.on_request_headers(env, content_length, end_of_stream)
        }) {
            Some(step) => self.apply_request(step, 0, &clock),
            None => Action::Continue,
        }
    }

    /// A request body event of an LLM call.
    pub(crate) fn llm_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let cell = OnceCell::new();
        let clock = once_clock(&cell);
        let read = || body_bytes(body_size, BufferType::HttpRequestBody);
        match self.feed(&clock, |call, env| {
            call.on_request_body(env, body_size, end_of_stream, read)
        }) {
            Some(step) => self.apply_request(step, body_size, &clock),
            None => Action::Continue,
        }
    }

    /// The response headers of an LLM call; `None` when the call is not waiting for its
    /// response (refused, failed open, or its request still going): the stream is then
    /// decorated as any other.
    pub(crate) fn llm_response_headers(&mut self, end_of_stream: bool) -> Option<Action> {
        self.plugin.policy.llm()?;
        if !self.llm.as_ref().is_some_and(LlmCall::awaits_response) {
            return None;
        }
        // One crossing for the four fields instead of a `proxy_get_header_map_value` each
        // (BENCHMARKS.md §2).
        let [status, content_type, encoding, length] = host::header_values(
            MapType::HttpResponseHeaders,
            [
                ":status",
                "content-type",
                "content-encoding",
                "content-length",
            ],
        )
        .unwrap_or_default();
        let encoded = encoding.is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        let content_length = length.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok());
        let head = ResponseHead {
            status: status.as_deref(),
            content_type: content_type.as_deref(),
            content_length,
            encoded,
            end_of_stream,
        };
        let cell = OnceCell::new();
        let clock = once_clock(&cell);
        let step = self.feed(&clock, |call, env| call.on_response_headers(env, &head))?;
        Some(self.apply_response(step, 0, &clock))
    }

    /// A response body event of an LLM call.
    pub(crate) fn llm_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let cell = OnceCell::new();
        let clock = once_clock(&cell);
        let read = || body_bytes(body_size, BufferType::HttpResponseBody);
        match self.feed(&clock, |call, env| {
            call.on_response_body(env, body_size, end_of_stream, read)
        }) {
            Some(step) => self.apply_response(step, body_size, &clock),
            None => Action::Continue,
        }
    }

    /// The stream is over: settles an LLM call that ended early (client gone, upstream reset).
    pub(crate) fn llm_log(&mut self) {
        let cell = OnceCell::new();
        let clock = once_clock(&cell);
        if let Some(settlement) = self.feed(&clock, |call, env| call.on_log(env)).flatten() {
            self.count_settlement(settlement);
        }
    }

    /// Applies a request step: the replacement body, the `content-length`, then the verdict.
    fn apply_request(
        &mut self,
        step: RequestStep,
        body_size: usize,
        now: &dyn Fn() -> Nanos,
    ) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let Some(call) = self.llm.as_ref() else {
            return Action::Continue;
        };
        // Strict global mode: the call's last admission took its local holds; the service is
        // asked for them too before the request goes on (counted once it answers).
        let global_check = step.verdict == Verdict::Continue
            && step.count == Some(Count::Allowed)
            && strict_tokens::applies(&plugin.policy, call.tier);
        if let (Some(count), false) = (step.count, global_check) {
            plugin.metrics.count(call.tier, event(count));
        }
        if step.count == Some(Count::WouldDeny) {
            // A shadow tier's budget would have refused it: its record says so.
            self.record = self.record.as_ref().map(Record::would_deny);
            if let Some(record) = &self.record {
                record.publish();
            }
        }
        if let Some(bytes) = &step.replace {
            let _ = host::set_buffer(BufferType::HttpRequestBody, 0, body_size, bytes);
        }
        if let Some(length) = step.content_length {
            let _ = host::set_header(
                MapType::HttpRequestHeaders,
                "content-length",
                Some(&policy_core::decimal::number(length)),
            );
        }
        if global_check {
            return self.start_tokens_check(now);
        }
        match step.verdict {
            Verdict::Continue => Action::Continue,
            Verdict::Hold => Action::Pause,
            Verdict::Refuse(refusal) => {
                // The refusal's instants (Anthropic's resets) are those of the decision it
                // reports: a held body was decided at its headers' instant, not this event's.
                match call.decided_at() {
                    Some(at) => self.refuse(refusal, &move || at),
                    None => self.refuse(refusal, now),
                }
                Action::Pause
            }
        }
    }

    /// Answers a refused LLM call with a local reply (which resets a request already partly
    /// upstream).
    fn refuse(&self, refusal: Refusal, now: &dyn Fn() -> Nanos) {
        match refusal {
            Refusal::Denied => {
                if let Some(record) = &self.record {
                    record.denied().publish();
                }
                let llm = self.plugin.policy.llm();
                let Some((call, settings)) = self.llm.as_ref().zip(llm) else {
                    return;
                };
                let Some(tier) = self.tier(call.tier) else {
                    return;
                };
                let mut fields = call.fields(tier, settings, now);
                fields.extend(call.style().headers().iter().map(|&(n, v)| (n, v.into())));
                let body = call.denial_body(tier);
                let (wait, max_wait) = (call.retry_after(), settings.max_client_wait);
                reply::llm_rate_limited(self.client(None), fields, &body, wait, max_wait);
            }
            Refusal::Contended => reply::contended(self.client(None)),
            Refusal::Unavailable => reply::unavailable(self.client(None)),
            Refusal::BadBody(error) => reply::bad_request(self.client(None), &error.to_string()),
            Refusal::Unpriced(model) => {
                if let Some(call) = self.llm.as_ref() {
                    let headers = call.style().bad_request_headers();
                    reply::unpriced(self.client(None), headers, &call.unpriced_body(&model));
                }
            }
        }
    }

    /// Applies a response step: the replacement chunk, or the hold; then the headers, the
    /// settlement's metrics and the call's fields.
    fn apply_response(
        &mut self,
        step: ResponseStep,
        body_size: usize,
        now: &dyn Fn() -> Nanos,
    ) -> Action {
        if let Some(bytes) = &step.replace {
            // Replaces this chunk only: Envoy drains `body_size` bytes from the front of the
            // chunk's buffer and puts these in their place.
            let _ = host::set_buffer(BufferType::HttpResponseBody, 0, body_size, bytes);
        }
        if step.hold {
            return Action::Pause;
        }
        if step.drop_content_length {
            // The client gets fewer bytes than the upstream sent.
            let _ = host::set_header(MapType::HttpResponseHeaders, "content-length", None);
        }
        if let Some(settlement) = step.settled {
            self.count_settlement(settlement);
        }
        if step.decorate {
            self.add_llm_fields(now);
        }
        Action::Continue
    }

    fn count_settlement(&mut self, settlement: Settlement) {
        let reserved_globally = self.tokens_reserved.take();
        let Some(call) = self.llm.as_ref() else {
            return;
        };
        let metrics = &self.plugin.metrics;
        let Settlement {
            reserved,
            charged,
            spent,
            landed,
        } = settlement;
        let tier = self.tier(call.tier);
        let global_tier = tier.is_some_and(|t| t.global);
        let strict_tier = strict_tokens::applies(&self.plugin.policy, call.tier);
        if let (Some(global), true) = (&self.plugin.global, strict_tier) {
            // Strict mode: the correction of what the service reserved, through the next
            // round. A call the service did not take (refused, or its check failed) sends
            // nothing: nothing was reserved globally to correct.
            if let Some(check) = reserved_globally {
                let amount = Amount {
                    tokens: charged,
                    spend: spent,
                };
                global.settle(strict_tokens::settlement(
                    &self.plugin.policy,
                    &check,
                    amount,
                    host::clock(),
                ));
            }
        } else if let (Some(global), Some(tier), true) = (&self.plugin.global, tier, global_tier) {
            // Global mode records the real charge, once per budget the call held (also when
            // the local write failed: the tokens were spent all the same), each in its unit.
            let amount = Amount {
                tokens: charged,
                spend: spent,
            };
            for &(budget, slot) in call.settled_budgets() {
                let Some(meter) = tier.budgets.get(budget).map(|b| b.meter) else {
                    continue;
                };
                if let Ok(table) = u8::try_from(budget).map(TableId::Budget) {
                    global.record(BucketKey::new(call.tier, table, slot), amount.of(meter));
                }
            }
        }
        metrics.add(call.tier, Event::TokensReserved, reserved);
        if !landed {
            metrics.count(call.tier, Event::SettleFailures);
            return;
        }
        metrics.add(call.tier, Event::TokensCharged, charged);
        let prices = self.plugin.policy.prices();
        if prices.is_some() {
            metrics.add(call.tier, Event::SpendCharged, spent);
        }
        metrics.add(
            call.tier,
            Event::TokensRefunded,
            reserved.saturating_sub(charged),
        );
        if let Some(model) = call.model() {
            metrics.add_model(call.tier, model, ModelStat::TokensCharged, charged);
            if prices.is_some() {
                metrics.add_model(call.tier, model, ModelStat::SpendCharged, spent);
            }
        }
        if let Some(record) = &self.record {
            let mut record = record.with_tokens(call.model(), reserved, charged);
            if let Some(table) = prices {
                record = record.with_spend(spent, &table.currency);
            }
            record.publish();
        }
    }

    fn add_llm_fields(&self, now: &dyn Fn() -> Nanos) {
        let llm = self.plugin.policy.llm();
        let fields = self.llm.as_ref().and_then(|call| {
            let (tier, settings) = (self.tier(call.tier)?, llm?);
            Some(call.fields(tier, settings, now))
        });
        if let Some(fields) = fields {
            self.add_response_fields(fields);
        }
    }
}

/// Strict global mode for token budgets ([`global_strict`], [`strict_tokens`]).
impl Stream {
    /// Asks the service for the holds the call was just admitted with, holding the request
    /// until the answer. A call with nothing to check goes on as admitted.
    fn start_tokens_check(&mut self, now: &dyn Fn() -> Nanos) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let Some(call) = self.llm.as_ref() else {
            return Action::Continue;
        };
        let tier = call.tier;
        let Some(check) = strict_tokens::check(
            &plugin.policy,
            tier,
            call.holds(),
            call.global_ask_cap(&plugin.policy),
        ) else {
            plugin.metrics.count(tier, Event::Allowed);
            return Action::Continue;
        };
        plugin.metrics.count(tier, Event::GlobalChecks);
        match global_strict::send_message(&plugin, &check.message) {
            Ok(token) => {
                self.tokens_check = Some(PendingTokens { token, check });
                Action::Pause
            }
            Err(reason) => {
                let fallback = global_strict::fallback(&plugin);
                self.tokens_unavailable(tier, &reason, fallback, now)
            }
        }
    }

    /// The answer to a token check (or the call's end: a timeout is gRPC status 4).
    pub(crate) fn llm_tokens_answer(&mut self, token: u32, status: u32, size: usize) {
        let Some(pending) = self.tokens_check.take_if(|p| p.token == token) else {
            return;
        };
        let plugin = Rc::clone(&self.plugin);
        let now = host::clock();
        let clock = move || now;
        let body = if status == 0 {
            host::buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .ok()
                .flatten()
        } else {
            None
        };
        let i = pending.check.tier;
        let shadow = self
            .tier(i)
            .is_some_and(|t| t.enforcement == Enforcement::Shadow);
        let resolution =
            global_strict::resolve_tokens(&plugin, &pending, status, body.as_deref(), now);
        // Unlike a request check's, the answer is not folded into the local budgets: it
        // includes other replicas' reservations in flight, which their settlements give back
        // later; kept in a local bucket (a fold only ever raises it) they would refuse calls
        // the budget has room for. The local budgets count this replica's own calls only, so
        // they never refuse what the service would take.
        let action = match resolution {
            Resolution::Admit(decision) => {
                if let Some(call) = self.llm.as_mut() {
                    call.admitted_globally(decision);
                }
                plugin.metrics.count(i, Event::Allowed);
                self.tokens_reserved = Some(pending.check);
                Action::Continue
            }
            Resolution::Refuse(_) if shadow => {
                // Shadow mode: counted and let through, settled locally only (the service
                // reserved nothing); its record says what enforcing would have done.
                plugin.metrics.count(i, Event::WouldDeny);
                self.record = self.record.as_ref().map(Record::would_deny);
                if let Some(record) = &self.record {
                    record.publish();
                }
                Action::Continue
            }
            Resolution::Refuse(decision) => {
                plugin.metrics.count(i, Event::Denied);
                plugin.metrics.count(i, Event::GlobalOverLimit);
                self.feed(&clock, |call, env| call.withdraw(env, Some(decision)));
                self.refuse(Refusal::Denied, &clock);
                Action::Pause
            }
            Resolution::Unavailable { reason, fallback } => {
                self.tokens_unavailable(i, &reason, fallback, &clock)
            }
        };
        if action == Action::Continue {
            if let Err(e) = host::continue_request() {
                let _ = host::log(
                    LogLevel::Error,
                    &format!("tollgate: could not resume the request: {e}"),
                );
            }
        }
    }

    /// The token check of tier `tier` got no usable answer: applies `fallback` (counted, and
    /// logged at most once a second per worker). `local` and `allow` keep the local admission
    /// (its holds are settled locally only); `deny` gives them back and answers 503.
    fn tokens_unavailable(
        &mut self,
        tier: usize,
        reason: &str,
        fallback: OnUnavailable,
        now: &dyn Fn() -> Nanos,
    ) -> Action {
        let plugin = Rc::clone(&self.plugin);
        plugin.metrics.count(tier, Event::GlobalUnavailable);
        if plugin.warn_due(now()) {
            let _ = host::log(
                LogLevel::Warn,
                &format!("tollgate: strict token check failed, on_unavailable {fallback:?} applies: {reason} (logged at most once a second per worker)"),
            );
        }
        let shadow = self
            .tier(tier)
            .is_some_and(|t| t.enforcement == Enforcement::Shadow);
        match fallback {
            OnUnavailable::Local | OnUnavailable::Allow => {
                plugin.metrics.count(tier, Event::Allowed);
                Action::Continue
            }
            OnUnavailable::Deny if shadow => {
                plugin.metrics.count(tier, Event::WouldDeny);
                Action::Continue
            }
            OnUnavailable::Deny => {
                self.feed(now, |call, env| call.withdraw(env, None));
                if let Some(record) = &self.record {
                    record.denied().publish();
                }
                reply::unavailable(self.client(None));
                Action::Pause
            }
        }
    }
}
