//! One HTTP stream: decide on the request headers, decorate or refuse; for LLM tiers, follow
//! the bodies (see [`crate::llm`]).

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use policy_core::headers;
use policy_core::policy::OnStoreFailure;
use policy_core::table::Placement;
use policy_core::tier::Tier;
use policy_core::{Nanos, Outcome};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::attributes::Request;
use crate::llm::{Admission, LlmStream, Phase};
use crate::metrics::Event;
use crate::reply;
use crate::root::Plugin;
use crate::shared::SharedData;

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
        let ns = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Nanos(ns)
    }

    fn log(&self, level: LogLevel, msg: &str) {
        let _ = hostcalls::log(level, &format!("tollgate[{}]: {msg}", self.id));
    }

    fn tier(&self, index: usize) -> Option<&Tier> {
        self.plugin.policy.tiers().get(index)
    }

    /// Admits the LLM request against its token budgets; replies itself when refused.
    /// Returns whether the stream may go on.
    fn admit_tokens(&mut self) -> bool {
        let plugin = Rc::clone(&self.plugin);
        let now = self.now();
        let Some(llm) = self.llm.as_mut() else {
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
                let fields = llm.fields(tier);
                let body = headers::llm_denial_body(
                    llm.style(),
                    tier,
                    Some(&llm.requests),
                    llm.tokens.as_ref(),
                );
                reply::llm_rate_limited(self.grpc, fields, &body);
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

    /// Adds the fields to the response headers in two host calls (read the map, write it back)
    /// rather than one call per field: the request path's host calls are its main cost.
    fn add_response_fields(&self, fields: headers::Fields) {
        if fields.is_empty() {
            return;
        }
        let mut pairs = self.get_http_response_headers_bytes();
        pairs.extend(
            fields
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.into_bytes())),
        );
        let view: Vec<(&str, &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        self.set_http_response_headers_bytes(view);
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
                    self.log(LogLevel::Debug, &format!("denied by tier {}", tier.name));
                    if llm_tier {
                        let path = request.path();
                        let stream = LlmStream::new(i, identity, &path, decision);
                        let body = headers::llm_denial_body(
                            stream.style(),
                            tier,
                            Some(&stream.requests),
                            None,
                        );
                        reply::llm_rate_limited(self.grpc, stream.fields(tier), &body);
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
                self.llm = Some(LlmStream::new(i, identity, &request.path(), decision));
                if plugin.policy.llm().is_some_and(|l| l.strip_accept_encoding) {
                    self.set_http_request_header("accept-encoding", None);
                }
                if end_of_stream {
                    if let (Some(llm), Some(settings)) = (self.llm.as_mut(), plugin.policy.llm()) {
                        llm.unreadable_request(settings, 0);
                    }
                    return if self.admit_tokens() {
                        Action::Continue
                    } else {
                        Action::Pause
                    };
                }
                // Hold the headers until the body is read: the body may have to be rewritten,
                // and then content-length with it.
                Action::Pause
            }
            Outcome::Ambiguous { tier, error } => {
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::Ambiguous);
                self.log(LogLevel::Debug, &format!("refused: {error:?}"));
                reply::ambiguous(self.grpc, &error);
                Action::Pause
            }
            Outcome::StoreFailed { tier, error } => {
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::StoreFailure);
                self.log(
                    LogLevel::Warn,
                    &format!("state store failed for tier {}: {error:?}", tier.name),
                );
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
        let Some(llm) = self.llm.as_mut() else {
            return Action::Continue;
        };
        if !matches!(llm.phase, Phase::ReadingRequest) {
            return Action::Continue;
        }
        if !end_of_stream && body_size <= settings.max_request_body {
            return Action::Pause;
        }
        if body_size > settings.max_request_body {
            llm.unreadable_request(settings, body_size);
        } else {
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            if let Some(llm) = self.llm.as_mut() {
                if let Some(rewritten) = llm.read_request(settings, &body) {
                    self.set_http_request_body(0, body_size, &rewritten);
                    self.set_http_request_header(
                        "content-length",
                        Some(&rewritten.len().to_string()),
                    );
                }
            }
        }
        if self.admit_tokens() {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        if let (Some(settings), Some(llm)) = (plugin.policy.llm(), self.llm.as_ref()) {
            if matches!(llm.phase, Phase::Admitted) {
                let status = self.get_http_response_header_bytes(":status");
                let content_type = self.get_http_response_header_bytes("content-type");
                let encoded = self
                    .get_http_response_header_bytes("content-encoding")
                    .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
                if let Some(llm) = self.llm.as_mut() {
                    llm.on_response_headers(
                        settings,
                        status.as_deref(),
                        content_type.as_deref(),
                        encoded,
                        end_of_stream,
                    );
                }
                if matches!(self.llm.as_ref().map(|l| &l.phase), Some(Phase::Buffering)) {
                    return Action::Pause;
                }
                if end_of_stream {
                    self.settle(true);
                }
                if let Some(tier) = self
                    .llm
                    .as_ref()
                    .and_then(|l| self.tier(l.tier).map(|t| l.fields(t)))
                {
                    self.add_response_fields(tier);
                }
                return Action::Continue;
            }
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
                let chunk = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
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
            Phase::Buffering => {
                if !end_of_stream && body_size <= settings.max_response_body {
                    return Action::Pause;
                }
                let cost = if end_of_stream && body_size <= settings.max_response_body {
                    let body = self
                        .get_http_response_body(0, body_size)
                        .unwrap_or_default();
                    self.llm
                        .as_ref()
                        .map_or(0, |l| l.json_cost(settings, &body))
                } else {
                    self.llm
                        .as_ref()
                        .map_or(0, |l| l.missing_usage_charge(settings))
                };
                if end_of_stream {
                    self.settle_at(cost);
                } else if let Some(llm) = self.llm.as_mut() {
                    // Too large to hold: let it through and charge it when it ends.
                    llm.phase = Phase::Unreadable { charge: cost };
                }
                if let Some(fields) = self
                    .llm
                    .as_ref()
                    .and_then(|l| self.tier(l.tier).map(|t| l.fields(t)))
                {
                    self.add_response_fields(fields);
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
