//! The root context: one per worker VM. Parses the policy once and prepares shared state.

use std::rc::Rc;
use std::time::Duration;

use policy_core::Policy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

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

impl Context for Root {}

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
        self.plugin = Some(Rc::new(Plugin::new(policy, metrics)));
        if let Err(e) = host::set_tick_period(Duration::from_secs(1)) {
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
