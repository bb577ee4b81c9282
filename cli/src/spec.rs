//! The YAML test-file format of `tollgate test`, and its validation against the policy.
//!
//! A file is a list of cases; a case is a list of steps, each one action (`send`, `llm`,
//! `advance`, `reconfigure`) with optional expectations on what that action got back. Unknown
//! fields are errors, and so is a tier or a header the policy in effect does not have, so a typo
//! fails loudly instead of passing silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use policy_core::Policy;
use serde::Deserialize;
use serde_json::Value;

/// One test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Simulated Envoy workers (VM instances sharing one store); 4 unless set.
    #[serde(default)]
    pub workers: Option<usize>,
    /// The cases, run in order, each on a fresh store and clock.
    pub cases: Vec<Case>,
}

/// One test case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the output.
    pub name: String,
    /// Overrides the file's worker count.
    #[serde(default)]
    pub workers: Option<usize>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// One step: exactly one action, and what to expect of it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Send plain requests.
    #[serde(default)]
    pub send: Option<Send>,
    /// Make LLM calls whose upstream reports a usage.
    #[serde(default)]
    pub llm: Option<Llm>,
    /// Move the virtual clock forward.
    #[serde(default)]
    pub advance: Option<Scalar>,
    /// Configure every worker with an edited policy.
    #[serde(default)]
    pub reconfigure: Option<Reconfigure>,
    /// What the step's responses must show.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// `send:` N plain requests, round-robin over the workers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    /// How many (1 unless set).
    #[serde(default = "one")]
    pub count: u64,
    /// `GET` unless set.
    #[serde(default = "get")]
    pub method: String,
    /// `/` unless set.
    #[serde(default = "root")]
    pub path: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Scalar>,
    /// A request body.
    #[serde(default)]
    pub body: Option<String>,
    /// The client address (`source.address`).
    #[serde(default)]
    pub client: Option<String>,
    /// What the upstream answers (200 unless set).
    #[serde(default)]
    pub upstream_status: Option<u32>,
}

/// The API an LLM call speaks; decides the path and the request and response bodies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Openai,
    /// `POST /v1/messages`.
    Anthropic,
}

/// Token usage the upstream reports.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub input: u64,
    /// Completion tokens.
    #[serde(default)]
    pub output: u64,
}

/// `llm:` N calls to an LLM API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// `openai` unless set.
    #[serde(default = "openai")]
    pub api: Api,
    /// The `model` field.
    pub model: String,
    /// The client's output cap (`max_tokens`); absent means none.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The prompt text ("Hello" unless set); its size is part of the estimate (bytes / 4).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Scalar>,
    /// How many calls (1 unless set).
    #[serde(default = "one")]
    pub count: u64,
    /// All calls reach the filter before any answer comes back (as concurrent clients would).
    #[serde(default)]
    pub concurrent: bool,
    /// The usage each response reports; absent: the response reports none.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Cut the stream after this many events (the upstream resets).
    #[serde(default)]
    pub cut_after: Option<usize>,
    /// The upstream's status (200 unless set).
    #[serde(default)]
    pub upstream_status: Option<u32>,
}

/// `reconfigure:` the policy edited in place (`set`) or replaced by another file (`file`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconfigure {
    /// A policy file, relative to the test file.
    #[serde(default)]
    pub file: Option<String>,
    /// `dotted.path.0.field: value` edits applied to the policy in effect.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
}

/// Expectations on a step's responses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// How many responses had each status (every status seen must be listed).
    #[serde(default)]
    pub status: Option<BTreeMap<u32, u64>>,
    /// The tier that decided every response.
    #[serde(default)]
    pub tier: Option<String>,
    /// The last response.
    #[serde(default)]
    pub last: Option<ExpectResponse>,
    /// The first refused (429) response.
    #[serde(default)]
    pub first_refused: Option<ExpectResponse>,
}

/// Expectations on one response.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectResponse {
    /// Its status.
    #[serde(default)]
    pub status: Option<u32>,
    /// Header values (exact).
    #[serde(default)]
    pub headers: BTreeMap<String, Scalar>,
    /// `retry-after`, in seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// `x-ratelimit-remaining` (requests).
    #[serde(default)]
    pub remaining: Option<u64>,
    /// `x-ratelimit-remaining-tokens`.
    #[serde(default)]
    pub remaining_tokens: Option<u64>,
    /// The tier that decided it.
    #[serde(default)]
    pub tier: Option<String>,
    /// A JSON subset of its body: every field given must be there with that value.
    #[serde(default)]
    pub body: Option<Value>,
}

/// A YAML scalar used as text (`x-user-id: 42` is the header value "42").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => f.write_str(s),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn one() -> u64 {
    1
}
fn get() -> String {
    "GET".to_owned()
}
fn root() -> String {
    "/".to_owned()
}
fn openai() -> Api {
    Api::Openai
}

/// A mistake in a test file: where (the YAML path) and what.
#[derive(Debug)]
pub struct SpecError {
    /// e.g. `cases[1].steps[0].send.headers.x-user-idd`, or `line 4 column 3` for bad YAML.
    pub at: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

impl std::error::Error for SpecError {}

fn err(at: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        at: at.into(),
        reason: reason.into(),
    }
}

/// Parses a test file's text. Malformed YAML or an unknown field names its line.
pub fn parse(text: &str) -> Result<TestFile, SpecError> {
    serde_norway::from_str(text).map_err(|e| {
        let at = e.location().map_or_else(
            || "(document)".to_owned(),
            |l| format!("line {} column {}", l.line(), l.column()),
        );
        // The message repeats the location; keep only the reason.
        let msg = e.to_string();
        let reason = msg
            .split_once(" at line ")
            .map_or(msg.as_str(), |(r, _)| r)
            .to_owned();
        err(at, reason)
    })
}

/// Parses a duration: a number of seconds, or `500ms`, `1.5s`, `60s`, `2m`, `1h`, `1d`.
pub fn duration(s: &Scalar) -> Option<Duration> {
    let (num, unit) = match s {
        Scalar::Int(i) => (u64::try_from(*i).ok()? as f64, 1.0),
        Scalar::Float(x) => (*x, 1.0),
        Scalar::Bool(_) => return None,
        Scalar::Text(t) => {
            let t = t.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (n, u) = t.split_at(split);
            let unit = match u.trim() {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "" | "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return None,
            };
            (n.parse::<f64>().ok()?, unit)
        }
    };
    let secs = num * unit;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Applies `path: value` (dotted; array indices as numbers) to a policy document. The parent
/// must exist; the last key of an object may be new.
pub fn set_path(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err("empty path".to_owned());
    };
    let mut at = doc;
    for (i, part) in parents.iter().enumerate() {
        let here = parts.get(..=i).unwrap_or_default().join(".");
        at = match at {
            Value::Object(map) => map
                .get_mut(*part)
                .ok_or_else(|| format!("the policy has no `{here}`"))?,
            Value::Array(items) => part
                .parse::<usize>()
                .ok()
                .and_then(|n| items.get_mut(n))
                .ok_or_else(|| format!("the policy has no `{here}`"))?,
            _ => return Err(format!("`{here}` is not an object or a list")),
        };
    }
    match at {
        Value::Object(map) => {
            map.insert((*last).to_owned(), value);
            Ok(())
        }
        Value::Array(items) => {
            let slot = last
                .parse::<usize>()
                .ok()
                .and_then(|n| items.get_mut(n))
                .ok_or_else(|| format!("the policy has no `{path}`"))?;
            *slot = value;
            Ok(())
        }
        _ => Err(format!("the parent of `{path}` is not an object or a list")),
    }
}

/// Request headers a test may send whatever the policy: ones a client or an LLM SDK always
/// sends and tollgate's own handling depends on.
const ALWAYS_SENDABLE: &[&str] = &[
    "content-type",
    "accept",
    "accept-encoding",
    "user-agent",
    "authorization",
    "content-length",
    "te",
];

/// Response headers tollgate writes for request limits.
const REQUEST_HEADERS: &[&str] = &[
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
];

/// Response headers tollgate writes for token budgets.
const TOKEN_HEADERS: &[&str] = &[
    "ratelimit-policy",
    "ratelimit",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-should-retry",
];

/// Response headers tollgate writes for spend budgets (besides the token budgets' own).
const SPEND_HEADERS: &[&str] = &[
    "x-ratelimit-limit-spend",
    "x-ratelimit-remaining-spend",
    "x-ratelimit-reset-spend",
];

/// Response headers any response may be checked for.
const ANY_RESPONSE: &[&str] = &["content-type", "grpc-status", "grpc-message"];

/// What a policy offers a test to refer to.
#[derive(Debug)]
pub struct Vocabulary {
    /// Tier names.
    pub tiers: BTreeSet<String>,
    /// Quota-policy name (as in `RateLimit-Policy`) → tier name.
    pub quota_tier: BTreeMap<String, String>,
    /// Request headers the policy reads.
    pub request_headers: BTreeSet<String>,
    /// Response headers the filter can write under this policy.
    pub response_headers: BTreeSet<String>,
}

impl Vocabulary {
    /// What `policy` offers.
    pub fn of(policy: &Policy) -> Self {
        let mut v = Self {
            tiers: BTreeSet::new(),
            quota_tier: BTreeMap::new(),
            request_headers: BTreeSet::new(),
            response_headers: ANY_RESPONSE.iter().map(|s| (*s).to_owned()).collect(),
        };
        for tier in policy.tiers() {
            v.tiers.insert(tier.name.clone());
            for m in &tier.matchers {
                v.request_headers.insert(m.header.clone());
            }
            // The tier's identity and its limits' and budgets' scopes (a team's `x-team-id`).
            let scopes = tier.scoping.scopes.iter().map(|s| &s.source);
            for source in std::iter::once(&tier.identity).chain(scopes) {
                if let policy_core::identity::IdentitySource::Header { name, .. } = source {
                    v.request_headers.insert(name.clone());
                }
            }
            for l in &tier.limits {
                v.quota_tier.insert(l.name.clone(), tier.name.clone());
            }
            for b in &tier.budgets {
                v.quota_tier.insert(b.name.clone(), tier.name.clone());
            }
            if !tier.limits.is_empty() {
                // `"x_ratelimit_headers": false` drops the `x-ratelimit-*` fields.
                v.response_headers.extend(
                    REQUEST_HEADERS
                        .iter()
                        .filter(|s| tier.x_ratelimit_headers || !s.starts_with("x-ratelimit-"))
                        .map(|s| (*s).to_owned()),
                );
            }
            if !tier.budgets.is_empty() {
                v.response_headers
                    .extend(TOKEN_HEADERS.iter().map(|s| (*s).to_owned()));
            }
            if tier
                .budgets
                .iter()
                .any(|b| b.meter == policy_core::budget::Meter::Spend)
            {
                v.response_headers
                    .extend(SPEND_HEADERS.iter().map(|s| (*s).to_owned()));
            }
        }
        v
    }

    fn tier(&self, at: &str, name: &str) -> Result<(), SpecError> {
        if self.tiers.contains(name) {
            Ok(())
        } else {
            Err(err(
                at,
                format!(
                    "the policy has no tier `{name}` (its tiers: {})",
                    join(&self.tiers)
                ),
            ))
        }
    }

    fn request_header(&self, at: &str, name: &str) -> Result<(), SpecError> {
        let name = name.to_ascii_lowercase();
        if self.request_headers.contains(&name) || ALWAYS_SENDABLE.contains(&name.as_str()) {
            Ok(())
        } else {
            Err(err(
                at,
                format!(
                    "the policy reads no request header `{name}` (it reads: {})",
                    join(&self.request_headers)
                ),
            ))
        }
    }

    fn response_header(&self, at: &str, name: &str) -> Result<(), SpecError> {
        let name = name.to_ascii_lowercase();
        if self.response_headers.contains(&name) {
            Ok(())
        } else {
            Err(err(
                at,
                format!("tollgate writes no response header `{name}` under this policy"),
            ))
        }
    }

    fn response(&self, at: &str, r: &ExpectResponse) -> Result<(), SpecError> {
        for name in r.headers.keys() {
            self.response_header(&format!("{at}.headers.{name}"), name)?;
        }
        if r.retry_after.is_some() {
            self.response_header(&format!("{at}.retry_after"), "retry-after")?;
        }
        if r.remaining.is_some() {
            self.response_header(&format!("{at}.remaining"), "x-ratelimit-remaining")?;
        }
        if r.remaining_tokens.is_some() {
            self.response_header(
                &format!("{at}.remaining_tokens"),
                "x-ratelimit-remaining-tokens",
            )?;
        }
        if let Some(t) = &r.tier {
            self.tier(&format!("{at}.tier"), t)?;
        }
        Ok(())
    }
}

fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        return "none".to_owned();
    }
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The policy in effect before each step of a case, resolved and validated up front: every
/// `reconfigure` gives a valid policy, and every tier and header the steps name exists in it.
pub fn plan(
    file: &TestFile,
    policy: &Value,
    tests_dir: &Path,
) -> Result<Vec<Vec<Value>>, SpecError> {
    let mut plans = Vec::with_capacity(file.cases.len());
    if file.cases.is_empty() {
        return Err(err("cases", "no cases"));
    }
    for (ci, case) in file.cases.iter().enumerate() {
        let case_at = format!("cases[{ci}]");
        if case.steps.is_empty() {
            return Err(err(format!("{case_at}.steps"), "no steps"));
        }
        let mut current = policy.clone();
        let mut vocab = vocabulary(&current, &case_at)?;
        let mut before = Vec::with_capacity(case.steps.len());
        for (si, step) in case.steps.iter().enumerate() {
            let at = format!("{case_at}.steps[{si}]");
            before.push(current.clone());
            let actions = [
                step.send.is_some(),
                step.llm.is_some(),
                step.advance.is_some(),
                step.reconfigure.is_some(),
            ];
            if actions.iter().filter(|a| **a).count() != 1 {
                return Err(err(
                    &at,
                    "a step has exactly one of send, llm, advance, reconfigure",
                ));
            }
            if let Some(send) = &step.send {
                for name in send.headers.keys() {
                    vocab.request_header(&format!("{at}.send.headers.{name}"), name)?;
                }
            }
            if let Some(llm) = &step.llm {
                for name in llm.headers.keys() {
                    vocab.request_header(&format!("{at}.llm.headers.{name}"), name)?;
                }
                if llm.cut_after.is_some() && !llm.stream {
                    return Err(err(
                        format!("{at}.llm.cut_after"),
                        "only a stream (stream: true) can be cut after N events",
                    ));
                }
            }
            if let Some(d) = &step.advance {
                if duration(d).is_none() {
                    return Err(err(
                        format!("{at}.advance"),
                        format!("`{d}` is not a duration (e.g. 60s, 500ms, 2m, 1h)"),
                    ));
                }
            }
            if let Some(re) = &step.reconfigure {
                let re_at = format!("{at}.reconfigure");
                if let Some(path) = &re.file {
                    let full = tests_dir.join(path);
                    let text = std::fs::read(&full).map_err(|e| {
                        err(
                            format!("{re_at}.file"),
                            format!("{}: cannot read: {e}", full.display()),
                        )
                    })?;
                    current = serde_json::from_slice(&text).map_err(|e| {
                        err(
                            format!("{re_at}.file"),
                            format!("{}: not JSON: {e}", full.display()),
                        )
                    })?;
                }
                for (path, value) in &re.set {
                    set_path(&mut current, path, value.clone())
                        .map_err(|reason| err(format!("{re_at}.set.{path}"), reason))?;
                }
                vocab = vocabulary(&current, &re_at)?;
            }
            if let Some(expect) = &step.expect {
                let ex_at = format!("{at}.expect");
                if step.advance.is_some() || step.reconfigure.is_some() {
                    return Err(err(
                        ex_at,
                        "only send and llm steps get responses to expect things of",
                    ));
                }
                if let Some(t) = &expect.tier {
                    vocab.tier(&format!("{ex_at}.tier"), t)?;
                }
                if let Some(r) = &expect.last {
                    vocab.response(&format!("{ex_at}.last"), r)?;
                }
                if let Some(r) = &expect.first_refused {
                    vocab.response(&format!("{ex_at}.first_refused"), r)?;
                }
            }
        }
        before.push(current);
        plans.push(before);
    }
    Ok(plans)
}

fn vocabulary(policy: &Value, at: &str) -> Result<Vocabulary, SpecError> {
    let text = serde_json::to_vec(policy).map_err(|e| err(at, e.to_string()))?;
    let parsed = Policy::from_json(&text)
        .map_err(|e| err(at, format!("the policy here is invalid: {e}")))?;
    Ok(Vocabulary::of(&parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        let d = |s: &str| duration(&Scalar::Text(s.to_owned()));
        assert_eq!(d("600ms"), Some(Duration::from_millis(600)));
        assert_eq!(d("60s"), Some(Duration::from_secs(60)));
        assert_eq!(d("2m"), Some(Duration::from_secs(120)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(duration(&Scalar::Int(3)), Some(Duration::from_secs(3)));
        assert_eq!(d("soon"), None);
        assert_eq!(d("5 fortnights"), None);
        assert_eq!(duration(&Scalar::Int(-1)), None);
    }

    #[test]
    fn set_path_edits_only_what_exists() {
        let mut p = json!({ "tiers": [{ "limits": [{ "requests": 1 }] }] });
        set_path(&mut p, "tiers.0.limits.0.requests", json!(5)).unwrap();
        assert_eq!(p["tiers"][0]["limits"][0]["requests"], json!(5));
        set_path(&mut p, "tiers.0.max_keys", json!(64)).unwrap();
        assert_eq!(p["tiers"][0]["max_keys"], json!(64));
        assert_eq!(
            set_path(&mut p, "tiers.3.limits", json!([])).unwrap_err(),
            "the policy has no `tiers.3`"
        );
        assert!(set_path(&mut p, "tiers.0.limits.2", json!(1)).is_err());
    }

    #[test]
    fn without_x_ratelimit_headers_a_test_cannot_expect_them() {
        let tier = json!([{ "name": "t", "identity": "shared",
                            "limits": [{ "requests": 1, "per": "second" }] }]);
        let on = vocabulary(&json!({ "tiers": tier }), "$").unwrap();
        assert!(on.response_headers.contains("x-ratelimit-remaining"));
        let off = json!({ "x_ratelimit_headers": false, "tiers": tier });
        let off = vocabulary(&off, "$").unwrap();
        assert!(!off.response_headers.contains("x-ratelimit-remaining"));
        assert!(off.response_headers.contains("ratelimit"));
        assert!(off.response_headers.contains("retry-after"));
    }

    #[test]
    fn a_step_has_exactly_one_action() {
        let file =
            parse("cases:\n  - name: x\n    steps:\n      - { advance: 1s, send: {} }\n").unwrap();
        let policy = json!({ "tiers": [{ "name": "t", "identity": "shared",
                                         "limits": [{ "requests": 1, "per": "second" }] }] });
        let e = plan(&file, &policy, Path::new(".")).unwrap_err();
        assert_eq!(e.at, "cases[0].steps[0]");
    }

    #[test]
    fn a_scope_header_may_be_sent_and_spend_headers_checked() {
        let file = parse(concat!(
            "cases:\n  - name: x\n    steps:\n",
            "      - llm: { model: m, headers: { x-user-id: a, x-team-id: t } }\n",
            "        expect: { last: { headers: { x-ratelimit-remaining-spend: 1.000000 USD,\n",
            "                                     x-should-retry: 'false' } } }\n",
        ))
        .unwrap();
        let policy = json!({
            "tiers": [{ "name": "t", "identity": { "header": "x-user-id" },
                        "tokens": [{ "spend": "1", "per": "day",
                                     "scope": { "header": "x-team-id" } }] }],
            "prices": { "currency": "USD",
                        "models": [{ "model": "m", "input": "1", "output": "1" }] }
        });
        plan(&file, &policy, Path::new(".")).unwrap();
        // Without the scope, the team header is a typo the policy never reads.
        let mut unscoped = policy.clone();
        unscoped["tiers"][0]["tokens"][0]
            .as_object_mut()
            .unwrap()
            .remove("scope");
        let e = plan(&file, &unscoped, Path::new(".")).unwrap_err();
        assert_eq!(e.at, "cases[0].steps[0].llm.headers.x-team-id");
        // A token budget's tier writes no spend headers.
        let tokens = json!({ "tiers": [{ "name": "t", "identity": { "header": "x-user-id" },
                                         "tokens": [{ "tokens": 1, "per": "day",
                                                      "scope": { "header": "x-team-id" } }] }] });
        let e = plan(&file, &tokens, Path::new(".")).unwrap_err();
        assert!(e.at.ends_with("x-ratelimit-remaining-spend"), "{e}");
    }
}
