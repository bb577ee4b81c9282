//! One HTTP stream: decide on the request headers, decorate or refuse; for LLM tiers, follow
//! the bodies (see [`crate::llm`]).

use std::rc::Rc;

use policy_core::headers;
use policy_core::policy::OnStoreFailure;
use policy_core::table::{Placement, TableError};
use policy_core::tier::{Enforcement, Tier, Verdict};
use policy_core::{Nanos, Outcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};

use crate::attributes::Request;
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
    /// Headers to add to the response of an admitted request.
    pending: headers::Fields,
    /// Set for a request on a tier with token budgets.
    pub(crate) llm: Option<LlmCall>,
    pub(crate) grpc: bool,
    /// The request's access-log record, once a tier decided (see [`crate::record`]).
    pub(crate) record: Option<Record>,
}

impl Stream {
    pub fn new(id: u32, plugin: Rc<Plugin>) -> Stream {
        Stream {
            id,
            plugin,
            pending: Vec::new(),
            llm: None,
            grpc: false,
            record: None,
        }
    }

    fn now(&self) -> Nanos {
        host::clock()
    }

    fn log(&self, level: LogLevel, msg: &str) {
        let _ = host::log(level, &format!("tollgate[{}]: {msg}", self.id));
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
                let verdict = tier.verdict(&decision);
                let rec = Record::new(
                    &tier.name,
                    plugin.policy.scope_hash(tier, &identity),
                    match verdict {
                        Verdict::Allow => record::Verdict::Allowed,
                        Verdict::Deny => record::Verdict::Denied,
                        Verdict::WouldDeny => record::Verdict::WouldDeny,
                    },
                    tier.cost_of(&request),
                );
                rec.publish();
                self.record = Some(rec);
                if verdict == Verdict::WouldDeny {
                    // Shadow mode: counted and let through; headers only if the tier asks.
                    plugin.metrics.count(i, Event::WouldDeny);
                    if tier.shadow_headers {
                        self.pending = headers::fields(tier, &decision);
                        // Nothing was refused: no client should wait.
                        self.pending.retain(|(name, _)| *name != "retry-after");
                    }
                    return Action::Continue;
                }
                if verdict == Verdict::Deny {
                    plugin.metrics.count(i, Event::Denied);
                    if let (true, Some(settings)) = (llm_tier, plugin.policy.llm()) {
                        let api = ApiKind::from_path(&request.path());
                        let stream = LlmCall::new(i, identity, api, decision);
                        let body = stream.denial_body(tier);
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
                    if tier.enforcement == Enforcement::Enforce || tier.shadow_headers {
                        self.pending = headers::fields(tier, &decision);
                    }
                    return Action::Continue;
                }
                let api = ApiKind::from_path(&request.path());
                let Some(settings) = plugin.policy.llm().filter(|_| api != ApiKind::Unknown) else {
                    // Not a completion API (e.g. listing models): request limits only.
                    plugin.metrics.count(i, Event::Allowed);
                    self.pending = headers::llm_fields(tier, Some(&decision), None);
                    return Action::Continue;
                };
                let call = LlmCall::new(i, identity, api, decision);
                if settings.strip_accept_encoding {
                    let _ = host::set_header(MapType::HttpRequestHeaders, "accept-encoding", None);
                }
                self.start_llm(call, request.content_length(), end_of_stream, now)
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
                    .count(plugin.policy.tier_index(tier), Event::Contended);
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
        self.llm_request_body(body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(action) = self.llm_response_headers(end_of_stream) {
            return action;
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
