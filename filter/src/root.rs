//! The root context: one per worker VM. Parses the policy once and prepares shared state.

use std::rc::Rc;
use std::time::Duration;

use policy_core::Policy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::global::SyncRounds;
use crate::host;
use crate::http::Stream;
use crate::metrics::Metrics;
use crate::plugin::Plugin;
use crate::shared::SharedData;

/// The worker's root context.
#[derive(Debug, Default)]
pub struct Root {
    plugin: Option<Rc<Plugin>>,
}

/// Logs at error level, once, with the reason: what an operator reads when Envoy refuses the
/// filter.
fn refuse(reason: &str) -> bool {
    let _ = host::log(
        LogLevel::Error,
        &format!("tollgate: invalid configuration: {reason}"),
    );
    false
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(p) = &self.plugin {
            if let Some(global) = &p.global {
                global.on_reply(
                    &p.policy,
                    token_id,
                    status_code,
                    response_size,
                    host::clock(),
                );
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let text = match host::plugin_configuration() {
            Ok(text) => text,
            Err(e) => return refuse(&format!("$: cannot read the plugin configuration: {e}")),
        };
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return refuse("$: no configuration: set the policy JSON as the plugin configuration (EnvoyExtensionPolicy wasm[].config)");
        };
        let policy = match Policy::from_json(&text) {
            Ok(p) => p,
            Err(e) => return refuse(&e.to_string()),
        };
        if let Err(e) = policy.init_store(&mut SharedData) {
            return refuse(&format!(
                "$: cannot create the state table in shared data: {e}"
            ));
        }
        let (keys, bytes) = policy.footprint();
        let _ = host::log(
            LogLevel::Info,
            &format!(
                "tollgate: policy loaded: {} tiers, state table of {keys} shared-data keys ({bytes} bytes of values)",
                policy.tiers().len()
            ),
        );
        let metrics = Metrics::define(policy.tiers().iter().map(|t| t.name.as_str()));
        let global = match SyncRounds::start(&policy, &text, host::clock()) {
            Ok(g) => g,
            Err(e) => return refuse(&e.to_string()),
        };
        if let Some(g) = policy.global() {
            let _ = host::log(
                LogLevel::Info,
                &match (g.mode, &global) {
                    (policy_core::global::GlobalMode::Strict, Some(_)) => format!(
                        "tollgate: global strict mode via cluster {}: one check per request or LLM call (timeout {} ms, on_unavailable {:?}); token settlements sent every {} ms",
                        g.cluster,
                        g.timeout.0 / 1_000_000,
                        g.on_unavailable,
                        g.sync_interval.0 / 1_000_000
                    ),
                    (_, Some(_)) => format!(
                        "tollgate: global sync mode via cluster {} every {} ms",
                        g.cluster,
                        g.sync_interval.0 / 1_000_000
                    ),
                    (policy_core::global::GlobalMode::Strict, None) => format!(
                        "tollgate: global strict mode via cluster {}: one check per request (timeout {} ms, on_unavailable {:?})",
                        g.cluster,
                        g.timeout.0 / 1_000_000,
                        g.on_unavailable
                    ),
                    (_, None) => String::from("tollgate: global section, but no global tier"),
                },
            );
        }
        let tick = global
            .as_ref()
            .map_or(Duration::from_secs(1), SyncRounds::tick_period);
        self.plugin = Some(Rc::new(Plugin::new(policy, metrics).with_global(global)));
        if let Err(e) = host::set_tick_period(tick) {
            // Limits still hold; only the counters stay in the VM, unflushed.
            let _ = host::log(
                LogLevel::Warn,
                &format!("tollgate: no tick, metrics will not be flushed: {e}"),
            );
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(p) = &self.plugin {
            p.metrics.flush();
            if let Some(global) = &p.global {
                global.on_tick(&p.policy, host::clock());
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(Stream::new(context_id, plugin)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
