//! One HTTP stream: decide on the request headers, decorate or refuse; for LLM tiers, follow
//! the bodies (see [`crate::llm`]).

use std::rc::Rc;

use policy_core::headers;
use policy_core::policy::OnStoreFailure;
use policy_core::table::{Placement, TableError};
use policy_core::tier::Tier;
use policy_core::{Nanos, Outcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use crate::attributes::Request;
use crate::host;
use crate::llm::{Admission, LlmStream, Phase};
use crate::metrics::Event;
use crate::reply;
use crate::root::Plugin;
use crate::shared::SharedData;
use policy_core::llm::{ApiKind, MAX_STREAM_USAGE_GROWTH};

/// Bytes a request body may grow by when asked to report stream usage.
const REWRITE_ROOM: u64 = MAX_STREAM_USAGE_GROWTH as u64;

/// A stream's state between request and response.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    plugin: Rc<Plugin>,
    /// Headers to add to the response of an admitted request.
    pending: headers::Fields,
    /// Set for a request on a tier with token budgets.
    llm: Option<LlmStream>,
    grpc: bool,
}

impl Stream {
    pub fn new(id: u32, plugin: Rc<Plugin>) -> Stream {
        Stream {
            id,
            plugin,
            pending: Vec::new(),
            llm: None,
            grpc: false,
        }
    }

    fn now(&self) -> Nanos {
        host::clock()
    }

    fn log(&self, level: LogLevel, msg: &str) {
        let _ = host::log(level, &format!("tollgate[{}]: {msg}", self.id));
    }

    fn tier(&self, index: usize) -> Option<&Tier> {
        self.plugin.policy.tiers().get(index)
    }

    /// Admits the LLM request against its token budgets; replies itself when refused.
    /// Returns whether the stream may go on.
    fn admit_tokens(&mut self) -> bool {
        let plugin = Rc::clone(&self.plugin);
        let now = self.now();
        let (Some(llm), Some(settings)) = (self.llm.as_mut(), plugin.policy.llm()) else {
            return true;
        };
        let Some(tier) = plugin.policy.tiers().get(llm.tier) else {
            return true;
        };
        match llm.admit(&plugin.policy, tier, now) {
            Admission::Admitted => {
                plugin.metrics.count(llm.tier, Event::Allowed);
                true
            }
            Admission::Denied => {
                plugin.metrics.count(llm.tier, Event::Denied);
                let fields = llm.fields(tier, settings, || now);
                let body = headers::llm_denial_body(
                    llm.style(),
                    tier,
                    Some(&llm.requests),
                    llm.tokens.as_ref(),
                );
                let (wait, max_wait) = (llm.retry_after(), settings.max_client_wait);
                reply::llm_rate_limited(self.grpc, fields, &body, wait, max_wait);
                false
            }
            Admission::Contended => {
                plugin.metrics.count(llm.tier, Event::Denied);
                self.llm = None;
                reply::contended(self.grpc);
                false
            }
            Admission::StoreFailed => {
                plugin.metrics.count(llm.tier, Event::StoreFailure);
                self.llm = None;
                match plugin.policy.on_store_failure() {
                    OnStoreFailure::Allow => true,
                    OnStoreFailure::Deny => {
                        reply::unavailable(self.grpc);
                        false
                    }
                }
            }
        }
    }

    /// Settles the LLM stream at its end (complete or not).
    fn settle(&mut self, complete: bool) {
        let plugin = Rc::clone(&self.plugin);
        let Some(settings) = plugin.policy.llm() else {
            return;
        };
        let Some(llm) = self.llm.as_mut() else {
            return;
        };
        let Some(cost) = llm.final_cost(settings, complete) else {
            return;
        };
        self.settle_at(cost);
    }

    fn settle_at(&mut self, cost: u64) {
        let plugin = Rc::clone(&self.plugin);
        let now = self.now();
        let Some(llm) = self.llm.as_mut() else {
            return;
        };
        let Some(tier) = plugin.policy.tiers().get(llm.tier) else {
            return;
        };
        if let Some((reserved, charged)) = llm.settle(&plugin.policy, tier, cost, now) {
            plugin
                .metrics
                .add(llm.tier, Event::TokensReserved, reserved);
            plugin.metrics.add(llm.tier, Event::TokensCharged, charged);
            plugin.metrics.add(
                llm.tier,
                Event::TokensRefunded,
                reserved.saturating_sub(charged),
            );
            if let Some(model) = llm.model() {
                plugin.metrics.add_model(llm.tier, model, charged);
            }
        }
    }

    /// The body chunk Envoy offers, without a host call for an empty one (Envoy ends many
    /// bodies with an empty end-of-stream callback).
    fn body_bytes(&self, size: usize, request: bool) -> Vec<u8> {
        if size == 0 {
            return Vec::new();
        }
        let bytes = if request {
            host::buffer(BufferType::HttpRequestBody, 0, size)
                .ok()
                .flatten()
        } else {
            host::buffer(BufferType::HttpResponseBody, 0, size)
                .ok()
                .flatten()
        };
        bytes.unwrap_or_default()
    }

    fn add_llm_fields(&self) {
        let llm = self.plugin.policy.llm();
        let fields = self.llm.as_ref().and_then(|l| {
            let (tier, settings) = (self.tier(l.tier)?, llm?);
            Some(l.fields(tier, settings, || self.now()))
        });
        if let Some(fields) = fields {
            self.add_response_fields(fields);
        }
    }

    /// Sets the fields on the response, one host call each, replacing any the upstream sent
    /// (two `x-ratelimit-remaining` lines would leave clients to pick one). Measured in Envoy,
    /// five replace calls cost ~3 µs less per request than reading the whole map and writing it
    /// back (BENCHMARKS.md).
    fn add_response_fields(&self, fields: headers::Fields) {
        for (name, value) in fields {
            let _ = host::set_header(MapType::HttpResponseHeaders, name, Some(&value));
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let request = Request::read();
        self.grpc = request.is_grpc();
        let now = self.now();
        match plugin.policy.check(&request, now, &mut SharedData) {
            Outcome::Unmatched => Action::Continue,
            Outcome::Decided {
                tier,
                decision,
                placement,
                identity,
            } => {
                let i = plugin.policy.tier_index(tier);
                if placement == Placement::Shared {
                    plugin.metrics.count(i, Event::Saturated);
                }
                let llm_tier = !tier.budgets.is_empty() && plugin.policy.llm().is_some();
                if !decision.allowed {
                    plugin.metrics.count(i, Event::Denied);
                    if let (true, Some(settings)) = (llm_tier, plugin.policy.llm()) {
                        let api = ApiKind::from_path(&request.path());
                        let stream = LlmStream::new(i, identity, api, decision);
                        let body = headers::llm_denial_body(
                            stream.style(),
                            tier,
                            Some(&stream.requests),
                            None,
                        );
                        let fields = stream.fields(tier, settings, || now);
                        let (wait, max_wait) = (stream.retry_after(), settings.max_client_wait);
                        reply::llm_rate_limited(self.grpc, fields, &body, wait, max_wait);
                    } else {
                        reply::rate_limited(self.grpc, tier, &decision);
                    }
                    return Action::Pause;
                }
                if !llm_tier {
                    plugin.metrics.count(i, Event::Allowed);
                    self.pending = headers::fields(tier, &decision);
                    return Action::Continue;
                }
                let api = ApiKind::from_path(&request.path());
                let Some(settings) = plugin.policy.llm().filter(|_| api != ApiKind::Unknown) else {
                    // Not a completion API (e.g. listing models): request limits only.
                    plugin.metrics.count(i, Event::Allowed);
                    self.pending = headers::llm_fields(tier, Some(&decision), None);
                    return Action::Continue;
                };
                let mut stream = LlmStream::new(i, identity, api, decision);
                if settings.strip_accept_encoding {
                    let _ = host::set_header(MapType::HttpRequestHeaders, "accept-encoding", None);
                }
                if end_of_stream {
                    stream.unreadable_request(settings, 0);
                    self.llm = Some(stream);
                    return if self.admit_tokens() {
                        Action::Continue
                    } else {
                        Action::Pause
                    };
                }
                // Ask Envoy to buffer only a body known to fit, with room for the rewrite: Envoy
                // adds each read to a held body before calling us, so a body that outgrows its
                // buffer limit while held is answered 413 before the filter can let go.
                let small = request.content_length().is_some_and(|n| {
                    n.saturating_add(REWRITE_ROOM) <= settings.buffer_limit as u64
                });
                if let Phase::ReadingRequest { holding, .. } = &mut stream.phase {
                    *holding = small;
                }
                let hold = settings.hold_headers && small;
                if small && !hold && stream.may_rewrite(settings) {
                    // The body may grow when asked to report usage, and the headers leave
                    // before it is read: let Envoy frame it instead of a stale content-length.
                    let _ = host::set_header(MapType::HttpRequestHeaders, "content-length", None);
                }
                self.llm = Some(stream);
                if hold {
                    // Envoy resumes a stream held at its headers only with
                    // allow_on_headers_stop_iteration, which `hold_headers` promises.
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Outcome::Ambiguous { tier, error } => {
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::Ambiguous);
                reply::ambiguous(self.grpc, &error);
                Action::Pause
            }
            Outcome::StoreFailed {
                tier,
                error: TableError::Contended,
            } => {
                // Lost every CAS race: the key is being written as fast as we can read it. That
                // is heavy traffic on one key, which must not turn into unmetered traffic.
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::Denied);
                reply::contended(self.grpc);
                Action::Pause
            }
            Outcome::StoreFailed { tier, error } => {
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::StoreFailure);
                if plugin.warn_due(now) {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "state store failed for tier {}: {error:?} (logged at most once a second per worker)",
                            tier.name
                        ),
                    );
                }
                match plugin.policy.on_store_failure() {
                    OnStoreFailure::Allow => Action::Continue,
                    OnStoreFailure::Deny => {
                        reply::unavailable(self.grpc);
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let Some(settings) = plugin.policy.llm() else {
            return Action::Continue;
        };
        let Some(Phase::ReadingRequest { holding, .. }) = self.llm.as_ref().map(|l| &l.phase)
        else {
            return Action::Continue;
        };
        if *holding {
            if body_size <= settings.buffer_limit {
                if !end_of_stream {
                    return Action::Pause; // Envoy buffers it for us.
                }
                let body = self.body_bytes(body_size, true);
                let rewritten = self
                    .llm
                    .as_mut()
                    .and_then(|l| l.read_request(settings, &body, true));
                if let Some(new_body) = rewritten {
                    let _ = host::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body);
                    if settings.hold_headers {
                        let _ = host::set_header(
                            MapType::HttpRequestHeaders,
                            "content-length",
                            Some(&new_body.len().to_string()),
                        );
                    }
                }
                return if self.admit_tokens() {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            // Larger than we may ask Envoy to buffer: copy it as it passes instead.
            if let Some(LlmStream {
                phase: Phase::ReadingRequest { holding, .. },
                ..
            }) = self.llm.as_mut()
            {
                *holding = false;
            }
        }
        let chunk = self.body_bytes(body_size, true);
        if let Some(LlmStream {
            phase: Phase::ReadingRequest { copy, .. },
            ..
        }) = self.llm.as_mut()
        {
            copy.push(&chunk, settings.max_request_body);
        }
        if !end_of_stream {
            return Action::Continue;
        }
        if let Some(llm) = self.llm.as_mut() {
            llm.read_copied_request(settings);
        }
        // The body already went upstream; a refusal now resets that request.
        if self.admit_tokens() {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let admitted = matches!(self.llm.as_ref().map(|l| &l.phase), Some(Phase::Admitted));
        if let (Some(settings), true) = (plugin.policy.llm(), admitted) {
            let status = host::header(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten();
            let content_type = host::header(MapType::HttpResponseHeaders, "content-type")
                .ok()
                .flatten();
            let encoded = host::header(MapType::HttpResponseHeaders, "content-encoding")
                .ok()
                .flatten()
                .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
            let length = host::header(MapType::HttpResponseHeaders, "content-length")
                .ok()
                .flatten()
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok());
            let hold = self.llm.as_mut().is_some_and(|l| {
                l.on_response_headers(
                    settings,
                    status.as_deref(),
                    content_type.as_deref(),
                    length,
                    encoded,
                    end_of_stream,
                )
            });
            if hold {
                return Action::Pause;
            }
            if end_of_stream {
                self.settle(true);
            }
            self.add_llm_fields();
            return Action::Continue;
        }
        let pending = std::mem::take(&mut self.pending);
        self.add_response_fields(pending);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let Some(settings) = plugin.policy.llm() else {
            return Action::Continue;
        };
        let Some(phase) = self.llm.as_ref().map(|l| &l.phase) else {
            return Action::Continue;
        };
        match phase {
            Phase::Streaming(_) => {
                let chunk = self.body_bytes(body_size, false);
                if let Some(LlmStream {
                    phase: Phase::Streaming(scanner),
                    ..
                }) = self.llm.as_mut()
                {
                    scanner.feed(&chunk);
                }
                if end_of_stream {
                    self.settle(true);
                }
                Action::Continue
            }
            Phase::Json { holding: true, .. } if body_size <= settings.buffer_limit => {
                if !end_of_stream {
                    return Action::Pause;
                }
                // Held whole: charge it, then let the headers out showing the charge.
                let body = self.body_bytes(body_size, false);
                if let Some(LlmStream {
                    phase: Phase::Json { copy, .. },
                    ..
                }) = self.llm.as_mut()
                {
                    copy.push(&body, settings.max_response_body);
                }
                self.settle(true);
                self.add_llm_fields();
                Action::Continue
            }
            Phase::Json { holding, .. } => {
                let was_holding = *holding;
                let chunk = self.body_bytes(body_size, false);
                if let Some(LlmStream {
                    phase: Phase::Json { copy, holding },
                    ..
                }) = self.llm.as_mut()
                {
                    copy.push(&chunk, settings.max_response_body);
                    *holding = false;
                }
                if end_of_stream {
                    self.settle(true);
                }
                if was_holding {
                    // Too large to hold: the headers go now, with the reservation's state.
                    self.add_llm_fields();
                }
                Action::Continue
            }
            Phase::Unreadable { .. } => {
                if end_of_stream {
                    self.settle(true);
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        // Still unsettled here means the stream ended early: client gone or upstream reset.
        self.settle(false);
    }
}
