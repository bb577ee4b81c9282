//! One HTTP stream: decide on the request headers, decorate or refuse; for LLM tiers, follow
//! the bodies (see [`crate::llm`]).

use std::rc::Rc;

use policy_core::global::scoped;
use policy_core::global::strict_tokens::TokenCheck;
use policy_core::global::{strict, GlobalMode, OnUnavailable};
use policy_core::headers;
use policy_core::policy::OnStoreFailure;
use policy_core::table::{Placement, TableError};
use policy_core::tier::{Enforcement, Tier, Verdict};
use policy_core::{Attributes, Nanos, Outcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use crate::attributes::Request;
use crate::global_strict::{self, Pending, PendingTokens, Resolution};
use crate::host;
use crate::metrics::Event;
use crate::plugin::Plugin;
use crate::record::{self, Record};
use crate::reply;
use crate::shared::SharedData;
use policy_core::llm::{ApiKind, LlmCall};

/// A stream's state between request and response.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    pub(crate) plugin: Rc<Plugin>,
    /// Headers to add to the response of an admitted request (LLM tiers' fields).
    pending: headers::Fields,
    /// The request-limit fields to write on the response, from the decision that admitted it.
    decided: Option<Decided>,
    /// Set for a request on a tier with token budgets.
    pub(crate) llm: Option<LlmCall>,
    pub(crate) grpc: bool,
    /// Strict global mode: the check the request is held for.
    strict: Option<Pending>,
    /// Strict global mode, an LLM call: the token check the request is held for.
    pub(crate) tokens_check: Option<PendingTokens>,
    /// Strict global mode, an LLM call the service admitted: what it reserved, for the
    /// settlement's correction.
    pub(crate) tokens_reserved: Option<TokenCheck>,
    /// The request headers ended the stream (a request without a body), for a decision made
    /// after a strict check.
    headers_end: bool,
    /// The request's access-log record, once a tier decided (see [`crate::record`]).
    pub(crate) record: Option<Record>,
}

impl Stream {
    pub fn new(id: u32, plugin: Rc<Plugin>) -> Stream {
        Stream {
            id,
            plugin,
            pending: Vec::new(),
            decided: None,
            llm: None,
            grpc: false,
            strict: None,
            tokens_check: None,
            tokens_reserved: None,
            headers_end: false,
            record: None,
        }
    }

    fn now(&self) -> Nanos {
        host::clock()
    }

    fn log(&self, level: LogLevel, msg: &str) {
        let _ = host::log(level, &format!("tollgate[{}]: {msg}", self.id));
    }

    /// Whom a local reply answers: with `request`, the reply takes the request's id from the
    /// headers already read instead of asking the host again.
    pub(crate) fn client<'a>(&self, request: Option<&'a Request>) -> reply::Client<'a> {
        reply::Client {
            grpc: self.grpc,
            headers: request.map(Attributes::headers),
        }
    }

    pub(crate) fn tier(&self, index: usize) -> Option<&Tier> {
        self.plugin.policy.tiers().get(index)
    }

    /// Sets the fields on the response, one host call each, replacing any the upstream sent
    /// (two `x-ratelimit-remaining` lines would leave clients to pick one). Measured in Envoy,
    /// five replace calls cost ~3 µs less per request than reading the whole map and writing it
    /// back (BENCHMARKS.md).
    pub(crate) fn add_response_fields(&self, fields: headers::Fields) {
        for (name, value) in fields {
            let _ = host::set_header(MapType::HttpResponseHeaders, name, Some(&value));
        }
    }

    /// Sets a request-limit decision's fields on the response, as [`Self::add_response_fields`]
    /// would, written here from the tier's constant text and the decision's numbers: nothing is
    /// formatted or allocated at the request, and nothing per field at the response.
    fn add_decided_fields(&self, decided: &Decided) {
        let Some(tier) = self.tier(decided.tier) else {
            return;
        };
        let mut scratch = self.plugin.text_buffer();
        let fields =
            headers::RequestFields::new(tier, &decided.decision, decided.retry_after, &mut scratch);
        fields.each(|name, value| {
            let _ = host::set_header(MapType::HttpResponseHeaders, name, Some(value));
        });
    }
}

/// What an admitted request's response carries: its tier's request-limit fields for the
/// decision, written when the response comes (BENCHMARKS.md §2, "constant field text per tier").
#[derive(Debug)]
struct Decided {
    /// The tier's position in the policy.
    tier: usize,
    decision: policy_core::Decision,
    /// Whether a refusal's `Retry-After` is sent: not for a shadow tier's refusal, which let the
    /// request through.
    retry_after: bool,
}

/// The local decision (local and sync modes, and strict mode's `local` fallback).
impl Stream {
    /// Decides `request` from this Envoy's buckets: admits it (starting an LLM call on a tier
    /// with token budgets), or answers it. What the headers callback returns.
    fn decide(&mut self, request: &Request, end_of_stream: bool, now: Nanos) -> Action {
        let plugin = Rc::clone(&self.plugin);
        match plugin.policy.check(request, now, &mut SharedData) {
            Outcome::Unmatched => Action::Continue,
            Outcome::Decided {
                tier,
                index: i,
                decision,
                placement,
                caller,
            } => {
                if placement == Placement::Shared {
                    plugin.metrics.count(i, Event::Saturated);
                }
                let llm_tier = !tier.budgets.is_empty() && plugin.policy.llm().is_some();
                let verdict = tier.verdict(&decision);
                let cost = tier.cost_of(request);
                if plugin.policy.records() {
                    // Off (`"records": false`), the request saves the record's host call and its
                    // hashing; the LLM path publishes only a record that exists.
                    let scope = plugin.policy.record_hash(i, &caller.id);
                    let scopes = plugin.policy.scope_hashes(tier, &caller);
                    let verdict = match verdict {
                        Verdict::Allow => record::Verdict::Allowed,
                        Verdict::Deny => record::Verdict::Denied,
                        Verdict::WouldDeny => record::Verdict::WouldDeny,
                    };
                    if llm_tier {
                        // An LLM call's settlement adds to its record: the stream keeps it.
                        let rec = Record::new(&tier.name, scope, verdict, cost).with_scopes(scopes);
                        rec.publish();
                        self.record = Some(rec);
                    } else {
                        record::publish_decided(&tier.name, scope, verdict, cost, &scopes);
                    }
                }
                if verdict == Verdict::WouldDeny {
                    // Shadow mode: counted and let through; headers only if the tier asks.
                    plugin.metrics.count(i, Event::WouldDeny);
                    self.decided = shadow_fields(tier, i, decision);
                    return Action::Continue;
                }
                if verdict == Verdict::Deny {
                    plugin.metrics.count(i, Event::Denied);
                    if let (true, Some(settings)) = (llm_tier, plugin.policy.llm()) {
                        let api = settings.api_of(&request.path());
                        let stream = LlmCall::new(i, caller, api, decision);
                        let body = stream.denial_body(tier);
                        let mut fields = stream.fields(tier, settings, || now);
                        let style = stream.style().headers();
                        fields.extend(style.iter().map(|&(n, v)| (n, v.into())));
                        let (wait, max_wait) = (stream.retry_after(), settings.max_client_wait);
                        reply::llm_rate_limited(
                            self.client(Some(request)),
                            fields,
                            &body,
                            wait,
                            max_wait,
                        );
                    } else {
                        reply::rate_limited(self.client(Some(request)), tier, &decision);
                    }
                    return Action::Pause;
                }
                if let (Some(global), true) =
                    (&plugin.global, tier.global && !tier.limits.is_empty())
                {
                    // Sync mode: what this Envoy admitted (the request's cost in cells), for the
                    // next round. In strict mode, only an LLM tier's request limits (which are
                    // not checked per request); a strict tier's limits decided here are its
                    // `local` fallback, not sent. Every bucket the request counted in is
                    // recorded: the tier's own and each scope's (README "Scopes").
                    let synced = global.mode() == GlobalMode::Sync || !tier.budgets.is_empty();
                    if synced {
                        for key in scoped::limit_keys(&plugin.policy, i, (&caller).into()) {
                            global.record(key, cost);
                        }
                    }
                }
                if !llm_tier {
                    plugin.metrics.count(i, Event::Allowed);
                    if tier.enforcement == Enforcement::Enforce || tier.shadow_headers {
                        self.decided = Some(Decided {
                            tier: i,
                            decision,
                            retry_after: true,
                        });
                    }
                    return Action::Continue;
                }
                let path = request.path();
                let api = plugin
                    .policy
                    .llm()
                    .map_or(ApiKind::Unknown, |settings| settings.api_of(&path));
                let Some(settings) = plugin.policy.llm().filter(|_| api != ApiKind::Unknown) else {
                    // Not a completion API (e.g. listing models): request limits only.
                    plugin.metrics.count(i, Event::Allowed);
                    if tier.enforcement == Enforcement::Enforce || tier.shadow_headers {
                        self.pending = headers::llm_fields(tier, Some(&decision), None);
                    }
                    return Action::Continue;
                };
                let call = LlmCall::new(i, caller, api, decision)
                    .with_path_model(settings.model_in_path(&path));
                // A request without the header, or asking for `identity` only, already gets an
                // unencoded answer: its header is left alone and the host call saved.
                let (content_length, encodings) = request.llm_view();
                if settings.strip_accept_encoding && encodings {
                    let _ = host::set_header(MapType::HttpRequestHeaders, "accept-encoding", None);
                }
                self.start_llm(call, content_length, end_of_stream, now)
            }
            Outcome::MissingScope { index, missing, .. } => {
                plugin.metrics.count(index, Event::MissingScope);
                // A shadow tier refuses nothing, a missing scope included: counted, let through.
                let shadow = self
                    .tier(index)
                    .is_some_and(|t| t.enforcement == Enforcement::Shadow);
                if shadow {
                    plugin.metrics.count(index, Event::WouldDeny);
                    return Action::Continue;
                }
                reply::missing_scope(self.client(Some(request)), &missing);
                Action::Pause
            }
            Outcome::Ambiguous { index, error, .. } => {
                plugin.metrics.count(index, Event::Ambiguous);
                reply::ambiguous(self.client(Some(request)), &error);
                Action::Pause
            }
            Outcome::StoreFailed {
                index,
                error: TableError::Contended,
                ..
            } => {
                // Lost every CAS race: the key is being written as fast as we can read it. That
                // is heavy traffic on one key, which must not turn into unmetered traffic.
                plugin.metrics.count(index, Event::Contended);
                reply::contended(self.client(Some(request)));
                Action::Pause
            }
            Outcome::StoreFailed { tier, index, error } => {
                plugin.metrics.count(index, Event::StoreFailure);
                if plugin.warn_due(now) {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "state store failed for tier {}: {error} (logged at most once a second per worker)",
                            tier.name
                        ),
                    );
                }
                match plugin.policy.on_store_failure() {
                    OnStoreFailure::Allow => Action::Continue,
                    OnStoreFailure::Deny => {
                        reply::unavailable(self.client(Some(request)));
                        Action::Pause
                    }
                }
            }
        }
    }
}

/// The headers of a request a shadow tier would have refused: none unless the tier asks for
/// them, and never `Retry-After` (nothing was refused: no client should wait).
fn shadow_fields(tier: &Tier, index: usize, decision: policy_core::Decision) -> Option<Decided> {
    tier.shadow_headers.then_some(Decided {
        tier: index,
        decision,
        retry_after: false,
    })
}

/// Strict global mode ([`global_strict`]).
impl Stream {
    /// Holds a request of a global-strict tier for its check: `None` when the request is not on
    /// such a tier (then it is decided locally).
    fn start_strict(&mut self, request: &Request, now: Nanos) -> Option<Action> {
        let plugin = Rc::clone(&self.plugin);
        let (tier, caller) = strict::select(&plugin.policy, request)?;
        let cost = plugin.policy.tiers().get(tier)?.cost_of(request);
        let check = strict::check(&plugin.policy, tier, &caller, cost)?;
        plugin.metrics.count(tier, Event::GlobalChecks);
        match global_strict::send(&plugin, &check) {
            Ok(token) => {
                self.strict = Some(Pending { token, check });
                Some(Action::Pause)
            }
            Err(reason) => {
                let fallback = global_strict::fallback(&plugin);
                Some(self.strict_unavailable(tier, &reason, fallback, now))
            }
        }
    }

    /// The check of tier `tier` got no usable answer: applies `fallback` (counted, and logged at
    /// most once a second per worker). What the headers callback would return.
    fn strict_unavailable(
        &mut self,
        tier: usize,
        reason: &str,
        fallback: OnUnavailable,
        now: Nanos,
    ) -> Action {
        let plugin = Rc::clone(&self.plugin);
        plugin.metrics.count(tier, Event::GlobalUnavailable);
        if plugin.warn_due(now) {
            self.log(
                LogLevel::Warn,
                &format!("strict check failed, on_unavailable {fallback:?} applies: {reason} (logged at most once a second per worker)"),
            );
        }
        match fallback {
            OnUnavailable::Allow => {
                plugin.metrics.count(tier, Event::Allowed);
                Action::Continue
            }
            OnUnavailable::Deny
                if self
                    .tier(tier)
                    .is_some_and(|t| t.enforcement == Enforcement::Shadow) =>
            {
                // Shadow mode refuses nothing, not even for an outage: counted and let through.
                plugin.metrics.count(tier, Event::WouldDeny);
                Action::Continue
            }
            OnUnavailable::Deny => {
                reply::unavailable(self.client(None));
                Action::Pause
            }
            OnUnavailable::Local => self.decide(&Request::read(), self.headers_end, now),
        }
    }
}

impl Context for Stream {
    /// The answer to a strict check (or the call's end: a timeout is gRPC status 4).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if self
            .tokens_check
            .as_ref()
            .is_some_and(|p| p.token == token_id)
        {
            self.llm_tokens_answer(token_id, status_code, response_size);
            return;
        }
        let Some(pending) = self.strict.take_if(|p| p.token == token_id) else {
            return;
        };
        let plugin = Rc::clone(&self.plugin);
        let now = self.now();
        let body = if status_code == 0 {
            host::buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
        } else {
            None
        };
        let i = pending.check.tier;
        let Some(tier) = self.tier(i) else {
            // Cannot happen (the index is our own check's); never leave the request held.
            let _ = host::continue_request();
            return;
        };
        let resolution =
            global_strict::resolve(&plugin, &pending, status_code, body.as_deref(), now);
        if let Resolution::Admit(decision) | Resolution::Refuse(decision) = &resolution {
            // The local buckets follow the global state, for the `local` fallback; a failed
            // write only leaves that fallback's starting point older.
            let _ = strict::fold(
                &plugin.policy,
                &pending.check,
                decision,
                now,
                &mut SharedData,
            );
        }
        let action = match resolution {
            Resolution::Admit(decision) => {
                plugin.metrics.count(i, Event::Allowed);
                if tier.enforcement == Enforcement::Enforce || tier.shadow_headers {
                    self.decided = Some(Decided {
                        tier: i,
                        decision,
                        retry_after: true,
                    });
                }
                Action::Continue
            }
            Resolution::Refuse(decision) if tier.enforcement == Enforcement::Shadow => {
                // Shadow mode: counted and let through.
                plugin.metrics.count(i, Event::WouldDeny);
                self.decided = shadow_fields(tier, i, decision);
                Action::Continue
            }
            Resolution::Refuse(decision) => {
                plugin.metrics.count(i, Event::Denied);
                plugin.metrics.count(i, Event::GlobalOverLimit);
                reply::rate_limited(self.client(None), tier, &decision);
                Action::Pause
            }
            Resolution::Unavailable { reason, fallback } => {
                self.strict_unavailable(i, &reason, fallback, now)
            }
        };
        if action == Action::Continue {
            if let Err(e) = host::continue_request() {
                // Envoy would leave the request held until its stream timeout: say so.
                self.log(
                    LogLevel::Error,
                    &format!("could not resume the request: {e}"),
                );
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let request = Request::read();
        self.grpc = request.is_grpc();
        self.headers_end = end_of_stream;
        let now = self.now();
        if let Some(action) = self.start_strict(&request, now) {
            return action;
        }
        self.decide(&request, end_of_stream, now)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.strict.is_some() || self.tokens_check.is_some() {
            // Held for its strict check: a body chunk must not let the request go upstream
            // before the answer (with `allow_on_headers_stop_iteration`, Envoy would).
            return Action::Pause;
        }
        self.llm_request_body(body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(action) = self.llm_response_headers(end_of_stream) {
            return action;
        }
        if let Some(decided) = self.decided.take() {
            self.add_decided_fields(&decided);
        }
        let pending = std::mem::take(&mut self.pending);
        self.add_response_fields(pending);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.llm_response_body(body_size, end_of_stream)
    }

    fn on_log(&mut self) {
        // Still unsettled here means the stream ended early: client gone or upstream reset.
        self.llm_log();
    }
}
