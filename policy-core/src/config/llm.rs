//! The LLM parts of a policy: a tier's token budgets and the `llm` settings.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::Value;

use super::error::{err, ConfigError, Reason};
use super::json::{array, boolean, positive, string, Obj};
use super::{rate, MAX_LIMITS};
use crate::bucket::MAX_AMOUNT;
use crate::budget::{Budget, LlmSettings, Meter, Mode, ModelScope, OnIncomplete, OnMissingUsage};
use crate::llm::cost::{Cost, CostSpec};
use crate::llm::request::MAX_MODEL_LEN;
use crate::llm::ApiKind;
use crate::model_match::ModelMatch;
use crate::time::Nanos;

const BUDGET_FIELDS: &[&str] = &[
    "tokens",
    "per",
    "burst",
    "name",
    "model",
    "reset",
    "utc_offset",
    "scope",
    "on_missing",
];
const LLM_FIELDS: &[&str] = &[
    "mode",
    "count",
    "default_max_tokens",
    "max_request_body_bytes",
    "max_response_body_bytes",
    "on_missing_usage",
    "on_incomplete",
    "inject_stream_usage",
    "strip_accept_encoding",
    "buffer_limit_bytes",
    "hold_headers",
    "max_client_wait_seconds",
    "routes",
    "deployments",
];
const ROUTE_FIELDS: &[&str] = &["path_prefix", "api"];
/// The most `llm.routes` and `llm.deployments` entries: each request looks through them.
const MAX_LLM_ROUTES: usize = 64;

/// The default of `llm.max_client_wait_seconds`: a minute. The SDKs retry a 429 twice by
/// default, so a caller may block for twice this; both SDKs' own backoff is at most 8 s, and
/// `openai` already refuses a `retry-after` past 120 s.
const DEFAULT_MAX_CLIENT_WAIT_SECONDS: u64 = 60;

/// A name usable in headers and keys, made from a model name (which may hold `/`, `:`, `@`…).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

pub(super) fn parse_budgets(v: &Value, path: &str, tier: &str) -> Result<Vec<Budget>, ConfigError> {
    let raw = array(v, path)?;
    if raw.is_empty() {
        return err(path, Reason::Empty);
    }
    if raw.len() > MAX_LIMITS {
        return err(path, Reason::TooMany { max: MAX_LIMITS });
    }
    let mut budgets: Vec<Budget> = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let bpath = format!("{path}[{i}]");
        // A spend budget is a token budget whose cells are micro-units (config/price.rs).
        let spend = super::price::spend_as_tokens(b, &bpath)?;
        let (b, meter) = match &spend {
            Some(v) => (v, Meter::Spend),
            None => (b, Meter::Tokens),
        };
        let (rate, explicit, per) = rate(b, &bpath, "tokens", BUDGET_FIELDS)?;
        let o = Obj::new(b, &bpath, BUDGET_FIELDS)?;
        let scope = super::model::parse_model(o.opt("model"), &o.at("model"))?;
        let bname = explicit.unwrap_or_else(|| {
            let model = match &scope {
                ModelScope::All => String::new(),
                ModelScope::Each => String::from("-each-model"),
                ModelScope::Only(m) => format!("-{}", sanitize(&m.label())),
            };
            let unit = match meter {
                Meter::Tokens => "tokens",
                Meter::Spend => "spend",
            };
            let full = format!("{tier}-{unit}{model}-{per}");
            sanitize(&full)
        });
        if budgets.iter().any(|x| x.name == bname) {
            return err(format!("{bpath}.name"), Reason::Duplicate { name: bname });
        }
        budgets.push(Budget {
            name: bname,
            meter,
            currency: String::new(),
            scope,
            rate,
            rivals: Vec::new(),
        });
    }
    // A model two budgets take goes to the one that takes it more strongly (an exact name, then
    // a snapshot of a name, then the longest prefix): each budget knows the others' `model`.
    // Only budgets of one meter compete: a per-minute token cap naming `gpt-4o-mini` must not
    // lift a money budget for the prefix `gpt-4o` off that model.
    let named: Vec<(usize, Meter, ModelMatch)> = budgets
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match &b.scope {
            ModelScope::Only(m) => Some((i, b.meter, m.clone())),
            _ => None,
        })
        .collect();
    for (i, b) in budgets.iter_mut().enumerate() {
        if matches!(b.scope, ModelScope::Only(_)) {
            b.rivals = named
                .iter()
                .filter(|(j, meter, _)| *j != i && *meter == b.meter)
                .map(|(_, _, m)| m.clone())
                .collect();
        }
    }
    Ok(budgets)
}

pub(super) fn default_llm() -> LlmSettings {
    LlmSettings {
        mode: Mode::Reserve,
        cost: Cost::TOTAL,
        default_max_tokens: 4096,
        max_request_body: 1 << 20,
        max_response_body: 256 << 10,
        on_missing_usage: OnMissingUsage::Reservation,
        on_incomplete: OnIncomplete::Received,
        inject_stream_usage: true,
        strip_accept_encoding: true,
        buffer_limit: 32 << 10,
        hold_headers: false,
        max_client_wait: Nanos::from_secs(DEFAULT_MAX_CLIENT_WAIT_SECONDS),
        routes: Vec::new(),
        deployments: Vec::new(),
    }
}

/// `llm.routes`: `[{"path_prefix": "/…", "api": "gemini_generate"}, …]`, longest prefix first.
fn parse_routes(v: &Value, path: &str) -> Result<Vec<(String, ApiKind)>, ConfigError> {
    let list = array(v, path)?;
    if list.len() > MAX_LLM_ROUTES {
        return err(
            path,
            Reason::TooMany {
                max: MAX_LLM_ROUTES,
            },
        );
    }
    let mut routes = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let o = Obj::new(r, &rpath, ROUTE_FIELDS)?;
        let ppath = o.at("path_prefix");
        let prefix = string(o.req("path_prefix")?, &ppath)?;
        if !prefix.starts_with('/') {
            return err(
                ppath,
                Reason::Invalid {
                    why: "must start with '/'",
                },
            );
        }
        let api = word(o.req("api")?, &o.at("api"), ApiKind::NAMES, ApiKind::NAMED)?;
        // Matched against the normalised `:path`, so normalised the same way.
        routes.push((crate::path::normalize_str(prefix), api));
    }
    routes.sort_by_key(|r| core::cmp::Reverse(r.0.len()));
    Ok(routes)
}

/// `llm.deployments`: `{"deployment name": "model", …}`.
fn parse_deployments(v: &Value, path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Value::Object(map) = v else {
        return err(
            path,
            Reason::WrongType {
                expected: "an object",
            },
        );
    };
    if map.len() > MAX_LLM_ROUTES {
        return err(
            path,
            Reason::TooMany {
                max: MAX_LLM_ROUTES,
            },
        );
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, model) in map {
        let mpath = format!("{path}.{name}");
        let model = string(model, &mpath)?;
        if name.is_empty() || model.is_empty() || model.len() > MAX_MODEL_LEN {
            return err(
                mpath,
                Reason::Invalid {
                    why: "deployment and model names must be 1 to 256 bytes",
                },
            );
        }
        out.push((name.clone(), model.to_owned()));
    }
    Ok(out)
}

fn word<T: Copy>(
    v: &Value,
    path: &str,
    choices: &'static [&'static str],
    values: &[T],
) -> Result<T, ConfigError> {
    let s = string(v, path)?;
    match choices
        .iter()
        .position(|c| *c == s)
        .and_then(|i| values.get(i))
    {
        Some(t) => Ok(*t),
        None => err(path, Reason::NotOneOf { expected: choices }),
    }
}

pub(super) fn parse_llm(v: &Value, path: &str) -> Result<LlmSettings, ConfigError> {
    let o = Obj::new(v, path, LLM_FIELDS)?;
    let mut l = default_llm();
    if let Some(m) = o.opt("mode") {
        l.mode = word(
            m,
            &o.at("mode"),
            &["reserve", "charge_after"],
            &[Mode::Reserve, Mode::ChargeAfter],
        )?;
    }
    if let Some(c) = o.opt("count") {
        let cpath = o.at("count");
        let spec: CostSpec = serde_json::from_value(c.clone()).map_err(|e| ConfigError {
            path: cpath.clone(),
            reason: Reason::Refused {
                detail: e.to_string(),
            },
        })?;
        l.cost = Cost::from_spec(&spec).map_err(|e| ConfigError {
            path: cpath.clone(),
            reason: Reason::Refused {
                detail: e.to_string(),
            },
        })?;
    }
    if let Some(n) = o.opt("default_max_tokens") {
        l.default_max_tokens = positive(n, &o.at("default_max_tokens"), MAX_AMOUNT)?;
    }
    let body_max = 64 << 20;
    if let Some(n) = o.opt("max_request_body_bytes") {
        l.max_request_body = positive(n, &o.at("max_request_body_bytes"), body_max)? as usize;
    }
    if let Some(n) = o.opt("max_response_body_bytes") {
        l.max_response_body = positive(n, &o.at("max_response_body_bytes"), body_max)? as usize;
    }
    if let Some(m) = o.opt("on_missing_usage") {
        l.on_missing_usage = word(
            m,
            &o.at("on_missing_usage"),
            &["reservation", "nothing"],
            &[OnMissingUsage::Reservation, OnMissingUsage::Nothing],
        )?;
    }
    if let Some(m) = o.opt("on_incomplete") {
        l.on_incomplete = word(
            m,
            &o.at("on_incomplete"),
            &["received", "reservation"],
            &[OnIncomplete::Received, OnIncomplete::Reservation],
        )?;
    }
    if let Some(b) = o.opt("inject_stream_usage") {
        l.inject_stream_usage = boolean(b, &o.at("inject_stream_usage"))?;
    }
    if let Some(b) = o.opt("strip_accept_encoding") {
        l.strip_accept_encoding = boolean(b, &o.at("strip_accept_encoding"))?;
    }
    if let Some(n) = o.opt("buffer_limit_bytes") {
        l.buffer_limit = positive(n, &o.at("buffer_limit_bytes"), body_max)? as usize;
    }
    if let Some(b) = o.opt("hold_headers") {
        l.hold_headers = boolean(b, &o.at("hold_headers"))?;
    }
    if let Some(n) = o.opt("max_client_wait_seconds") {
        // Up to a day: a longer "wait and retry" is a refusal in all but name.
        let secs = positive(n, &o.at("max_client_wait_seconds"), 86_400)?;
        l.max_client_wait = Nanos::from_secs(secs);
    }
    if let Some(r) = o.opt("routes") {
        l.routes = parse_routes(r, &o.at("routes"))?;
    }
    if let Some(d) = o.opt("deployments") {
        l.deployments = parse_deployments(d, &o.at("deployments"))?;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::ToString;

    use crate::time::Nanos;
    use crate::Policy;

    fn with_llm(llm: &str) -> Result<Policy, crate::ConfigError> {
        let text = alloc::format!(
            r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":1000,"per":"hour"}}]}}],"llm":{llm}}}"#
        );
        Policy::from_json(text.as_bytes())
    }

    #[test]
    fn max_client_wait_defaults_to_a_minute_and_is_configurable() {
        let p = with_llm("{}").unwrap();
        assert_eq!(p.llm().unwrap().max_client_wait, Nanos::from_secs(60));
        let p = with_llm(r#"{"max_client_wait_seconds":5}"#).unwrap();
        assert_eq!(p.llm().unwrap().max_client_wait, Nanos::from_secs(5));
    }

    #[test]
    fn a_bad_max_client_wait_names_its_path() {
        for (value, reason) in [
            ("0", "must be greater than 0"),
            ("86401", "86400"),
            ("\"60s\"", "positive whole number"),
        ] {
            let e = with_llm(&alloc::format!(r#"{{"max_client_wait_seconds":{value}}}"#))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("llm.max_client_wait_seconds: "), "{e}");
            assert!(e.contains(reason), "{e}");
        }
    }

    #[test]
    fn routes_name_the_api_of_a_path_and_deployments_map_to_models() {
        use crate::llm::ApiKind;
        let p = with_llm(
            r#"{"routes":[{"path_prefix":"/llm","api":"ollama_chat"},
                          {"path_prefix":"/llm/gem%69ni/","api":"gemini_generate"}],
                "deployments":{"prod-chat":"gpt-4o-mini"}}"#,
        )
        .unwrap();
        let l = p.llm().unwrap();
        for (path, api) in [
            ("/llm/gemini/flash?key=1", ApiKind::GeminiGenerate),
            ("/llm/gemini", ApiKind::GeminiGenerate),
            ("/llm/x", ApiKind::OllamaChat),
            ("/llmx/v1/messages", ApiKind::AnthropicMessages),
            ("/LLM/x", ApiKind::Unknown),
            ("/v1/chat/completions", ApiKind::OpenAiChat),
        ] {
            assert_eq!(l.api_of(path), api, "{path}");
        }
        assert_eq!(
            l.model_in_path("/openai/deployments/prod-chat/chat/completions")
                .as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            l.model_in_path("/openai/deployments/other/chat/completions")
                .as_deref(),
            Some("other")
        );
        assert_eq!(l.model_in_path("/v1/chat/completions"), None);
        for (llm, message) in [
            (
                r#"{"routes":[{"path_prefix":"/x","api":"bedrock"}]}"#,
                "llm.routes[0].api: ",
            ),
            (
                r#"{"routes":[{"path_prefix":"x","api":"ollama_chat"}]}"#,
                "llm.routes[0].path_prefix: must start with '/'",
            ),
            (
                r#"{"routes":[{"api":"ollama_chat"}]}"#,
                "llm.routes[0].path_prefix: ",
            ),
            (r#"{"routes":{}}"#, "llm.routes: "),
            (r#"{"deployments":{"a":""}}"#, "llm.deployments.a: "),
            (r#"{"deployments":[]}"#, "llm.deployments: "),
        ] {
            let e = with_llm(llm).unwrap_err().to_string();
            assert!(e.starts_with(message), "{llm}: {e}");
        }
    }
}
