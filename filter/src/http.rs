//! One HTTP stream: decide on the request headers, decorate or refuse.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use policy_core::headers;
use policy_core::policy::OnStoreFailure;
use policy_core::table::Placement;
use policy_core::{Nanos, Outcome};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::attributes::Request;
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
}

impl Stream {
    pub fn new(id: u32, plugin: Rc<Plugin>) -> Stream {
        Stream {
            id,
            plugin,
            pending: Vec::new(),
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
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let request = Request::read();
        let now = self.now();
        let outcome = plugin.policy.check(&request, now, &mut SharedData);
        let tier_index = |tier: &policy_core::tier::Tier| {
            plugin
                .policy
                .tiers()
                .iter()
                .position(|t| core::ptr::eq(t, tier))
                .unwrap_or(0)
        };
        match outcome {
            Outcome::Unmatched => Action::Continue,
            Outcome::Decided {
                tier,
                decision,
                placement,
            } => {
                let i = tier_index(tier);
                if placement == Placement::Shared {
                    plugin.metrics.count(i, Event::Saturated);
                }
                if decision.allowed {
                    plugin.metrics.count(i, Event::Allowed);
                    self.pending = headers::fields(tier, &decision);
                    Action::Continue
                } else {
                    plugin.metrics.count(i, Event::Denied);
                    self.log(LogLevel::Debug, &format!("denied by tier {}", tier.name));
                    reply::rate_limited(&request, tier, &decision);
                    Action::Pause
                }
            }
            Outcome::Ambiguous { tier, error } => {
                plugin.metrics.count(tier_index(tier), Event::Ambiguous);
                self.log(LogLevel::Debug, &format!("refused: {error:?}"));
                reply::ambiguous(&request, &error);
                Action::Pause
            }
            Outcome::StoreFailed { tier, error } => {
                plugin.metrics.count(tier_index(tier), Event::StoreFailure);
                self.log(
                    LogLevel::Warn,
                    &format!("state store failed for tier {}: {error:?}", tier.name),
                );
                match plugin.policy.on_store_failure() {
                    OnStoreFailure::Allow => Action::Continue,
                    OnStoreFailure::Deny => {
                        reply::unavailable(&request);
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.pending) {
            self.add_http_response_header(name, &value);
        }
        Action::Continue
    }
}
