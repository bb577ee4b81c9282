//! Parsing a policy: JSON in, a [`Policy`] that cannot hold a bad value out.
//!
//! Parse, don't validate: everything is checked once, here, so the request path never re-checks.
//! The JSON is walked by hand rather than through `#[derive(Deserialize)]` so that every error
//! names the exact path (`tiers[1].limits[0].requests`) and an unknown field anywhere is refused:
//! a misspelt `burts` silently ignored is a limit that is not the one the operator wrote.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::Value;

mod budget_sets;
mod calendar;
mod error;
mod global;
mod json;
mod llm;
mod model;
mod output;
mod price;
mod scope;

pub use calendar::RESET_WORDS;
pub use error::{ConfigError, Reason};

use error::err;
use json::{array, boolean, header_name, name, positive, string, Obj};
use llm::{default_llm, parse_budgets, parse_llm};

use crate::bucket::{Rate, RateError, MAX_AMOUNT};
use crate::budget::Mode;
use crate::hash::Seed;
use crate::identity::IdentitySource;
use crate::pattern::{Pattern, PatternError};
use crate::table::Table;
use crate::tier::{CostRule, Enforcement, Limit, Matcher, Tier, ValueTest};
use crate::time::Nanos;

pub use crate::policy::{OnStoreFailure, Policy};

/// Keys tracked per tier unless the policy says otherwise.
pub const DEFAULT_MAX_KEYS: u32 = 65_536;
/// The most keys one tier may track (16 Mi: about 400 MB of shared data for one limit).
pub const MAX_KEYS_LIMIT: u32 = 1 << 24;
/// The most limits one tier may have.
pub const MAX_LIMITS: usize = 8;
/// The most tiers a policy may have.
pub const MAX_TIERS: usize = 64;

/// The period of a window word. A month is 30 days, as billing windows usually are.
pub fn period(word: &str) -> Option<Nanos> {
    let secs = match word {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        _ => return None,
    };
    Some(Nanos::from_secs(secs))
}

/// The window words a limit accepts.
pub const PERIODS: &[&str] = &["second", "minute", "hour", "day", "week", "month"];

/// Parses a `{ "<amount field>": N, "per": "minute", "burst": M, "name": "…" }` limit, or a
/// calendar quota `{ "<amount field>": N, "reset": "month", "utc_offset": "+01:00" }`.
pub fn rate(
    v: &Value,
    path: &str,
    amount_field: &'static str,
    fields: &'static [&'static str],
) -> Result<(Rate, Option<String>, &'static str), ConfigError> {
    let o = Obj::new(v, path, fields)?;
    let amount = positive(o.req(amount_field)?, &o.at(amount_field), MAX_AMOUNT)?;
    let name = o.opt("name").map(|n| name(n, &o.at("name"))).transpose()?;
    if let Some((quota, word)) = calendar::quota(&o, amount, amount_field)? {
        return Ok((quota, name, word));
    }
    let per_path = o.at("per");
    let per_word = string(o.req("per")?, &per_path)?;
    let Some(per) = PERIODS.iter().copied().find(|p| *p == per_word) else {
        return err(per_path, Reason::NotOneOf { expected: PERIODS });
    };
    let burst = match o.opt("burst") {
        Some(b) => positive(b, &o.at("burst"), MAX_AMOUNT)?,
        None => amount,
    };
    let period = period(per).unwrap_or(Nanos::SECOND);
    let rate = Rate::new(amount, period, burst).map_err(|e| ConfigError {
        path: match e {
            RateError::Burst => o.at("burst"),
            _ => o.at(amount_field),
        },
        reason: Reason::NotPositive,
    })?;
    Ok((rate, name, per))
}

const TOP_FIELDS: &[&str] = &[
    "tiers",
    "max_keys",
    "on_store_failure",
    "hash_secret",
    "llm",
    "global",
    "mode",
    "prices",
    // The output switches (`output`).
    "x_ratelimit_headers",
    "records",
];
const TIER_FIELDS: &[&str] = &[
    "name",
    "match",
    "identity",
    "limits",
    "tokens",
    "max_keys",
    "global",
    "costs",
    "mode",
    "shadow_headers",
];
const COST_FIELDS: &[&str] = &["match", "cost"];
/// The most cost rules one tier may have.
pub const MAX_COST_RULES: usize = 32;
const MATCH_FIELDS: &[&str] = &["headers", "path_prefix", "methods"];
const HEADER_FIELDS: &[&str] = &["name", "present", "exact", "prefix", "regex"];
const LIMIT_FIELDS: &[&str] = &[
    "requests",
    "per",
    "burst",
    "name",
    "reset",
    "utc_offset",
    "scope",
    "on_missing",
];
const IDENTITY_FIELDS: &[&str] = &["header", "case_sensitive", "metadata"];
const METADATA_FIELDS: &[&str] = &["filter", "path"];
const IDENTITY_WORDS: &[&str] = &["shared", "client_address"];
const FAILURE_WORDS: &[&str] = &["allow", "deny"];
const MODE_WORDS: &[&str] = &["enforce", "shadow"];

/// What `tollgate-check` and `tollgate check` report for the policy `text` read from `name`:
/// `Ok` with the summary line of a valid policy, `Err` with `name: path: reason`.
///
/// # Errors
/// The policy is invalid; the message names the file, the path and the reason.
pub fn check_report(
    name: &str,
    text: &[u8],
) -> Result<alloc::string::String, alloc::string::String> {
    match Policy::from_json(text) {
        Ok(policy) => {
            let (keys, bytes) = policy.footprint();
            let global = match policy.global() {
                None => alloc::string::String::new(),
                Some(g) => {
                    let names: Vec<&str> = policy
                        .tiers()
                        .iter()
                        .filter(|t| t.global)
                        .map(|t| t.name.as_str())
                        .collect();
                    let mode = match g.mode {
                        crate::global::GlobalMode::Sync => "sync",
                        crate::global::GlobalMode::Strict => "strict",
                    };
                    alloc::format!(
                        "; global ({mode}, cluster {}, domain {}, every {} ms): {}",
                        g.cluster,
                        g.domain,
                        g.sync_interval.0 / 1_000_000,
                        if names.is_empty() {
                            alloc::string::String::from("no tier")
                        } else {
                            names.join(", ")
                        }
                    )
                }
            };
            Ok(alloc::format!(
                "{name}: valid: {} tiers; at most {keys} shared-data keys, {bytes} bytes of values{global}",
                policy.tiers().len()
            ))
        }
        Err(e) => Err(alloc::format!("{name}: {e}")),
    }
}

// Parsing lives here, beside the rest of the config code, so that `policy` (the decisions) does
// not depend on `config` (the parser): config builds a Policy, never the other way round.
impl Policy {
    /// Parses a policy from JSON (see [`crate::config`]).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the path and the reason of the first mistake.
    pub fn from_json(text: &[u8]) -> Result<Policy, ConfigError> {
        parse(text)
    }
}

/// Parses a policy from its JSON text, exactly as Envoy hands over the plugin configuration.
pub fn parse(text: &[u8]) -> Result<Policy, ConfigError> {
    let root: Value = serde_json::from_slice(text).map_err(|e| ConfigError {
        path: "$".into(),
        reason: Reason::InvalidJson {
            line: e.line(),
            column: e.column(),
            detail: e.to_string(),
        },
    })?;
    let top = Obj::new(&root, "$", TOP_FIELDS)?;
    let max_keys = match top.opt("max_keys") {
        Some(v) => positive(v, &top.at("max_keys"), u64::from(MAX_KEYS_LIMIT))? as u32,
        None => DEFAULT_MAX_KEYS,
    };
    let on_store_failure = match top.opt("on_store_failure") {
        None => OnStoreFailure::Allow,
        Some(v) => match string(v, &top.at("on_store_failure"))? {
            "allow" => OnStoreFailure::Allow,
            "deny" => OnStoreFailure::Deny,
            _ => {
                return err(
                    top.at("on_store_failure"),
                    Reason::NotOneOf {
                        expected: FAILURE_WORDS,
                    },
                )
            }
        },
    };
    let secret = match top.opt("hash_secret") {
        Some(v) => string(v, &top.at("hash_secret"))?.as_bytes(),
        None => &[],
    };
    let llm = top
        .opt("llm")
        .map(|v| parse_llm(v, &top.at("llm")))
        .transpose()?;
    let global = top
        .opt("global")
        .map(|v| global::parse_global(v, &top.at("global")))
        .transpose()?;
    let mode = match top.opt("mode") {
        Some(v) => parse_mode(v, &top.at("mode"))?,
        None => Enforcement::Enforce,
    };
    let output = output::parse(&top)?;
    let tiers_path = top.at("tiers");
    let list = array(top.req("tiers")?, &tiers_path)?;
    if list.is_empty() {
        return err(tiers_path, Reason::Empty);
    }
    if list.len() > MAX_TIERS {
        return err(tiers_path, Reason::TooMany { max: MAX_TIERS });
    }
    let mut tiers: Vec<Tier> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let tpath = format!("{tiers_path}[{i}]");
        let tier = parse_tier(v, &tpath, max_keys, global.is_some(), mode)?;
        if tier.global {
            global::check_tier(&tier, &tpath)?;
        }
        if tiers.iter().any(|t| t.name == tier.name) {
            return err(
                format!("{tiers_path}[{i}].name"),
                Reason::Duplicate { name: tier.name },
            );
        }
        tiers.push(tier);
    }
    for tier in &mut tiers {
        tier.x_ratelimit_headers = output.x_ratelimit_headers;
    }
    let prices = top
        .opt("prices")
        .map(|v| price::parse_prices(v, &top.at("prices")))
        .transpose()?;
    price::check_spend(&mut tiers, &tiers_path, prices.as_ref())?;
    let any_budget = tiers.iter().any(|t| !t.budgets.is_empty());
    let llm = match llm {
        Some(l) => Some(l),
        None if any_budget => Some(default_llm()),
        None => None,
    };
    if llm.as_ref().is_some_and(|l| l.mode == Mode::ChargeAfter) {
        // Charge-after holds nothing at admission, so a call whose settlement comes after its
        // period rolled over would be charged to a period that is over: nowhere.
        for (i, tier) in tiers.iter().enumerate() {
            if let Some(j) = tier
                .budgets
                .iter()
                .position(|b| b.rate.calendar_of().is_some())
            {
                return err(
                    format!("{tiers_path}[{i}].tokens[{j}].reset"),
                    Reason::Invalid {
                        why:
                            "a calendar quota needs llm.mode \"reserve\" (with \"charge_after\" a \
                              call settled after its period ended would be charged nowhere)",
                    },
                );
            }
        }
    }
    Ok(
        Policy::new(tiers, on_store_failure, Seed::derive(secret), llm)
            .with_global(global)
            .with_prices(prices)
            .with_records(output.records),
    )
}

/// `"enforce"` or `"shadow"`.
fn parse_mode(v: &Value, path: &str) -> Result<Enforcement, ConfigError> {
    match string(v, path)? {
        "enforce" => Ok(Enforcement::Enforce),
        "shadow" => Ok(Enforcement::Shadow),
        _ => err(
            path,
            Reason::NotOneOf {
                expected: MODE_WORDS,
            },
        ),
    }
}

fn parse_tier(
    v: &Value,
    path: &str,
    default_keys: u32,
    global_section: bool,
    default_mode: Enforcement,
) -> Result<Tier, ConfigError> {
    let o = Obj::new(v, path, TIER_FIELDS)?;
    let name = name(o.req("name")?, &o.at("name"))?;
    let global =
        match global::tier_flag(o.opt("global"), &o.at("global"))? {
            Some(true) if !global_section => return err(
                o.at("global"),
                Reason::Invalid {
                    why:
                        "needs the policy's top-level \"global\" section (which names the service)",
                },
            ),
            Some(flag) => flag,
            None => global_section,
        };
    let (matchers, path_prefix, methods) = match o.opt("match") {
        Some(m) => parse_match(m, &o.at("match"))?,
        None => (Vec::new(), None, Vec::new()),
    };
    let identity = parse_identity(o.req("identity")?, &o.at("identity"))?;
    let limits_path = o.at("limits");
    let has_tokens = o.opt("tokens").is_some();
    let empty = Vec::new();
    let raw = match o.opt("limits") {
        Some(l) => array(l, &limits_path)?,
        None if has_tokens => &empty,
        None => return err(limits_path, Reason::Missing),
    };
    if raw.is_empty() && !has_tokens {
        return err(limits_path, Reason::Empty);
    }
    if raw.len() > MAX_LIMITS {
        return err(limits_path, Reason::TooMany { max: MAX_LIMITS });
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        let lpath = format!("{limits_path}[{i}]");
        let (rate, explicit, per) = rate(l, &lpath, "requests", LIMIT_FIELDS)?;
        let lname = explicit.unwrap_or_else(|| {
            if raw.len() == 1 {
                name.clone()
            } else {
                format!("{name}-{per}")
            }
        });
        if limits.iter().any(|x| x.name == lname) {
            return err(format!("{lpath}.name"), Reason::Duplicate { name: lname });
        }
        limits.push(Limit { name: lname, rate });
    }
    let max_keys = match o.opt("max_keys") {
        Some(v) => positive(v, &o.at("max_keys"), u64::from(MAX_KEYS_LIMIT))? as u32,
        None => default_keys,
    };
    let keys = if identity.is_shared() { 1 } else { max_keys };
    let table = Table::new(
        format!("tollgate/r/{name}/"),
        keys,
        limits.len(),
        layout_tag(&limits),
    );
    let budgets = match o.opt("tokens") {
        Some(b) => parse_budgets(b, &o.at("tokens"), &name)?,
        None => Vec::new(),
    };
    let costs = match o.opt("costs") {
        Some(c) => parse_costs(c, &o.at("costs"), &limits)?,
        None => Vec::new(),
    };
    let enforcement = match o.opt("mode") {
        Some(m) => parse_mode(m, &o.at("mode"))?,
        None => default_mode,
    };
    let shadow_headers = match o.opt("shadow_headers") {
        Some(v) => boolean(v, &o.at("shadow_headers"))?,
        None => false,
    };
    if shadow_headers && enforcement != Enforcement::Shadow {
        return err(
            o.at("shadow_headers"),
            Reason::Invalid {
                why: "applies only to a tier in shadow mode",
            },
        );
    }
    let mut tier = Tier {
        name,
        matchers,
        path_prefix,
        methods,
        identity,
        limits,
        table,
        budgets,
        budget_sets: Vec::new(),
        global,
        costs,
        enforcement,
        shadow_headers,
        scoping: crate::scope::Scoping::default(),
        x_ratelimit_headers: true,
        text: crate::tier_text::TierText::default(),
    };
    let tokens_raw = match o.opt("tokens") {
        Some(t) => array(t, &o.at("tokens"))?.as_slice(),
        None => &[],
    };
    scope::attach(&mut tier, path, raw, tokens_raw, max_keys)?;
    budget_sets::group(&mut tier, max_keys);
    Ok(tier)
}

/// Parses a tier's `costs`: ordered `{"match": {…}, "cost": N}` rules. A cost must fit in every
/// request limit's burst: a request costing more could never pass, however long it waited.
fn parse_costs(v: &Value, path: &str, limits: &[Limit]) -> Result<Vec<CostRule>, ConfigError> {
    let list = array(v, path)?;
    if limits.is_empty() {
        return err(
            path,
            Reason::Invalid {
                why: "needs request limits to charge (a tier with only token budgets has none)",
            },
        );
    }
    if list.len() > MAX_COST_RULES {
        return err(
            path,
            Reason::TooMany {
                max: MAX_COST_RULES,
            },
        );
    }
    let mut rules = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let o = Obj::new(r, &rpath, COST_FIELDS)?;
        let (matchers, path_prefix, methods) = parse_match(o.req("match")?, &o.at("match"))?;
        let cpath = o.at("cost");
        let cost = positive(o.req("cost")?, &cpath, MAX_AMOUNT)?;
        if let Some(l) = limits.iter().find(|l| cost > l.rate.burst()) {
            return err(
                cpath,
                Reason::Refused {
                    detail: format!(
                        "{cost} is more than limit {:?} can ever admit at once (its burst is {}): \
                         such a request would always be refused",
                        l.name,
                        l.rate.burst()
                    ),
                },
            );
        }
        rules.push(CostRule {
            matchers,
            path_prefix,
            methods,
            cost,
        });
    }
    Ok(rules)
}

/// Identifies the rates a table's states were computed with.
fn layout_tag(limits: &[Limit]) -> u64 {
    rates_tag(limits.iter().map(|l| &l.rate))
}

pub(super) fn rates_tag<'r>(rates: impl Iterator<Item = &'r Rate>) -> u64 {
    let mut parts: Vec<u8> = Vec::new();
    for r in rates {
        parts.extend_from_slice(&r.amount().to_le_bytes());
        parts.extend_from_slice(&r.period().0.to_le_bytes());
        parts.extend_from_slice(&r.burst().to_le_bytes());
        if let Some(c) = r.calendar_of() {
            parts.extend_from_slice(&c.tag());
        }
    }
    Seed([0; 16]).slot(&[&parts], 1).fingerprint
}

type MatchParts = (Vec<Matcher>, Option<String>, Vec<String>);

fn parse_match(v: &Value, path: &str) -> Result<MatchParts, ConfigError> {
    let o = Obj::new(v, path, MATCH_FIELDS)?;
    let mut matchers = Vec::new();
    if let Some(h) = o.opt("headers") {
        let hpath = o.at("headers");
        for (i, m) in array(h, &hpath)?.iter().enumerate() {
            matchers.push(parse_matcher(m, &format!("{hpath}[{i}]"))?);
        }
    }
    let path_prefix = match o.opt("path_prefix") {
        Some(p) => {
            let ppath = o.at("path_prefix");
            let s = string(p, &ppath)?;
            if !s.starts_with('/') {
                return err(
                    ppath,
                    Reason::Invalid {
                        why: "must start with '/'",
                    },
                );
            }
            // Matched against the normalised `:path`, so normalised the same way.
            Some(crate::path::normalize_str(s))
        }
        None => None,
    };
    let mut methods = Vec::new();
    if let Some(m) = o.opt("methods") {
        let mpath = o.at("methods");
        for (i, x) in array(m, &mpath)?.iter().enumerate() {
            let ipath = format!("{mpath}[{i}]");
            let s = string(x, &ipath)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()) {
                return err(
                    ipath,
                    Reason::Invalid {
                        why: "must be an uppercase HTTP method such as GET",
                    },
                );
            }
            methods.push(s.to_owned());
        }
    }
    Ok((matchers, path_prefix, methods))
}

fn parse_matcher(v: &Value, path: &str) -> Result<Matcher, ConfigError> {
    let o = Obj::new(v, path, HEADER_FIELDS)?;
    let header = header_name(o.req("name")?, &o.at("name"))?;
    let tests: Vec<&str> = ["present", "exact", "prefix", "regex"]
        .into_iter()
        .filter(|t| o.opt(t).is_some())
        .collect();
    let [which] = tests.as_slice() else {
        return err(path, Reason::OneTestRequired);
    };
    let tpath = o.at(which);
    let raw = o.req(which)?;
    let test = match *which {
        "present" => ValueTest::Present(boolean(raw, &tpath)?),
        "exact" => ValueTest::Exact(string(raw, &tpath)?.as_bytes().to_vec()),
        "prefix" => ValueTest::Prefix(string(raw, &tpath)?.as_bytes().to_vec()),
        _ => ValueTest::Regex(regex(string(raw, &tpath)?, &tpath)?),
    };
    Ok(Matcher { header, test })
}

/// Compiles a header-value regex, refusing one whose matching cost is not bounded
/// (see [`crate::pattern`]).
fn regex(pattern: &str, path: &str) -> Result<Pattern, ConfigError> {
    Pattern::new(pattern).map_err(|e| ConfigError {
        path: path.to_owned(),
        reason: match e {
            PatternError::Syntax(detail) | PatternError::Other(detail) => {
                Reason::InvalidRegex { detail }
            }
            other => Reason::Refused {
                detail: other.to_string(),
            },
        },
    })
}

fn parse_identity(v: &Value, path: &str) -> Result<IdentitySource, ConfigError> {
    if let Value::String(word) = v {
        return match word.as_str() {
            "shared" => Ok(IdentitySource::Shared),
            "client_address" => Ok(IdentitySource::ClientAddress),
            _ => err(
                path,
                Reason::NotOneOf {
                    expected: IDENTITY_WORDS,
                },
            ),
        };
    }
    let o = Obj::new(v, path, IDENTITY_FIELDS)?;
    match (o.opt("header"), o.opt("metadata")) {
        (Some(h), None) => {
            let name = header_name(h, &o.at("header"))?;
            let case_sensitive = match o.opt("case_sensitive") {
                Some(c) => boolean(c, &o.at("case_sensitive"))?,
                None => false,
            };
            Ok(IdentitySource::Header {
                name,
                case_sensitive,
            })
        }
        (None, Some(m)) => {
            if o.opt("case_sensitive").is_some() {
                return err(o.at("case_sensitive"), Reason::Invalid { why: "applies only to a header identity" });
            }
            let mpath = o.at("metadata");
            let mo = Obj::new(m, &mpath, METADATA_FIELDS)?;
            let filter = string(mo.req("filter")?, &mo.at("filter"))?;
            if filter.is_empty() {
                return err(mo.at("filter"), Reason::Empty);
            }
            let ppath = mo.at("path");
            let keys = array(mo.req("path")?, &ppath)?;
            if keys.is_empty() {
                return err(ppath, Reason::Empty);
            }
            let mut path_keys = Vec::with_capacity(keys.len());
            for (i, k) in keys.iter().enumerate() {
                path_keys.push(string(k, &format!("{ppath}[{i}]"))?.to_owned());
            }
            Ok(IdentitySource::Metadata {
                filter: filter.to_owned(),
                path: path_keys,
            })
        }
        _ => err(path, Reason::Invalid { why: "must be \"shared\", \"client_address\", or an object with exactly one of: header, metadata" }),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const TASK_API: &str = include_str!("../../../examples/task-api-policy.json");

    fn error(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_task_api_example_parses() {
        let p = parse(TASK_API.as_bytes()).unwrap();
        let names: Vec<&str> = p.tiers().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["premium", "authenticated", "anonymous"]);
        assert_eq!(p.tiers()[1].limits[0].rate.amount(), 100);
        assert_eq!(p.tiers()[2].table.sets(), 1, "a shared tier needs one set");
    }

    #[test]
    fn a_zero_limit_names_its_path() {
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute"}]},
            {"name":"b","identity":"shared","limits":[{"requests":0,"per":"minute"}]}]}"#,
        );
        assert_eq!(e, "tiers[1].limits[0].requests: must be greater than 0");
    }

    #[test]
    fn an_invalid_regex_names_its_path() {
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute"}],
            "match":{"headers":[{"name":"x","regex":"("}]}}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].match.headers[0].regex: invalid regular expression: unclosed group"
        );
    }

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute","burts":2}]}]}"#,
        );
        assert!(
            e.starts_with("tiers[0].limits[0].burts: unknown field"),
            "{e}"
        );
        let e = error(r#"{"tier":[]}"#);
        assert!(e.starts_with("tier: unknown field"), "{e}");
    }

    #[test]
    fn empty_and_missing_tiers_are_refused() {
        assert_eq!(error(r#"{"tiers":[]}"#), "tiers: must not be empty");
        assert_eq!(error(r#"{}"#), "tiers: required field is missing");
    }

    #[test]
    fn invalid_json_says_where() {
        let e = error("{\"tiers\": [,]}");
        assert!(e.starts_with("$: invalid JSON at line 1 column"), "{e}");
        assert!(error("").starts_with("$: invalid JSON"));
    }

    #[test]
    fn duplicate_tier_names_are_refused() {
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute"}]},
            {"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute"}]}]}"#,
        );
        assert_eq!(e, "tiers[1].name: duplicate name \"a\"");
    }

    #[test]
    fn wrong_words_and_types_are_explained() {
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"fortnight"}]}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].limits[0].per: must be one of: second, minute, hour, day, week, month"
        );
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":"10","per":"minute"}]}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].limits[0].requests: must be a positive whole number"
        );
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"everyone","limits":[{"requests":1,"per":"minute"}]}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].identity: must be one of: shared, client_address"
        );
        let e = error(
            r#"{"tiers":[{"name":"a","identity":{"header":"X-User"},"limits":[{"requests":1,"per":"minute"}]}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].identity.header: must be a lowercase HTTP header name"
        );
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute"}],
            "match":{"headers":[{"name":"x","exact":"a","prefix":"b"}]}}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].match.headers[0]: must have exactly one of: present, exact, prefix, regex"
        );
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1e3,"per":"minute"}]}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].limits[0].requests: must be a positive whole number"
        );
        let e = error(
            r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":2199023255552,"per":"minute"}]}]}"#,
        );
        assert_eq!(
            e,
            "tiers[0].limits[0].requests: must be at most 1099511627776"
        );
    }

    /// Holds 100 tokens for `alice` under `policy` (over `store`) and returns what is left.
    fn hold_100(policy: &str, store: &mut crate::MemoryStore) -> u64 {
        use crate::policy::TokenOutcome;
        let p = parse(policy.as_bytes()).unwrap();
        p.init_store(store).unwrap();
        let tier = p.tiers().iter().find(|t| !t.budgets.is_empty()).unwrap();
        let now = Nanos::from_secs(1_700_000_000);
        match p.admit_tokens(
            tier,
            b"alice",
            Some("gpt-4o"),
            crate::budget::Amount::tokens(100),
            now,
            store,
        ) {
            TokenOutcome::Admitted { decision, .. } => decision.limits[0].remaining,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_budgets_survive_unrelated_edits_and_reset_on_their_own() {
        let base = r#"{"tiers":[{"name":"llm","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":1000,"per":"week"}]}]}"#;
        let edited = r#"{ "on_store_failure": "deny", "llm": {"default_max_tokens": 512},
            "tiers": [ {"name":"first","identity":"shared","limits":[{"requests":1,"per":"minute"}]},
                       {"name": "llm", "identity": {"header": "x-user-id"},
                        "tokens": [ {"tokens": 1000, "per": "week"} ]} ] }"#;
        let mut store = crate::MemoryStore::new();
        assert_eq!(hold_100(base, &mut store), 900);
        assert_eq!(hold_100(edited, &mut store), 800, "kept across the edit");
        let renamed = base.replace(r#""llm""#, r#""llm2""#);
        assert_eq!(
            hold_100(&renamed, &mut store),
            900,
            "a renamed tier starts afresh"
        );
        let resized = base.replace("1000", "2000");
        assert_eq!(
            hold_100(&resized, &mut store),
            1900,
            "new limits start afresh"
        );
    }

    #[test]
    fn several_limits_get_distinct_default_names() {
        let p = parse(
            br#"{"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":100,"per":"minute"},{"requests":1000,"per":"hour"}]}]}"#,
        )
        .unwrap();
        let names: Vec<&str> = p.tiers()[0]
            .limits
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["u-minute", "u-hour"]);
        let e = error(
            r#"{"tiers":[{"name":"u","identity":"shared",
            "limits":[{"requests":100,"per":"minute"},{"requests":1000,"per":"minute"}]}]}"#,
        );
        assert_eq!(e, "tiers[0].limits[1].name: duplicate name \"u-minute\"");
    }

    #[test]
    fn cost_rules_are_checked_with_their_paths() {
        let tier = |costs: &str| {
            format!(
                r#"{{"tiers":[{{"name":"a","identity":"shared",
                "limits":[{{"requests":60,"per":"minute"}},{{"requests":100,"per":"hour","burst":5}}],
                "costs":{costs}}}]}}"#
            )
        };
        let ok = parse(tier(r#"[{"match":{"methods":["POST"]},"cost":5}]"#).as_bytes()).unwrap();
        assert_eq!(ok.tiers()[0].costs[0].cost, 5);
        assert_eq!(
            error(&tier(r#"[{"match":{},"cost":0}]"#)),
            "tiers[0].costs[0].cost: must be greater than 0"
        );
        assert_eq!(
            error(&tier(
                r#"[{"match":{},"cost":2},{"match":{"methods":["POST"]},"cost":6}]"#
            )),
            "tiers[0].costs[1].cost: 6 is more than limit \"a-hour\" can ever admit at once \
             (its burst is 5): such a request would always be refused"
        );
        assert_eq!(
            error(&tier(r#"[{"cost":2}]"#)),
            "tiers[0].costs[0].match: required field is missing"
        );
        assert_eq!(
            error(&tier(r#"[{"match":{"path_prefix":"api"},"cost":2}]"#)),
            "tiers[0].costs[0].match.path_prefix: must start with '/'"
        );
        assert!(error(&tier(r#"[{"match":{},"cost":2,"when":1}]"#))
            .starts_with("tiers[0].costs[0].when: unknown field"));
        assert_eq!(
            error(
                r#"{"tiers":[{"name":"a","identity":"shared","tokens":[{"tokens":10,"per":"day"}],
                "costs":[{"match":{},"cost":2}]}]}"#
            ),
            "tiers[0].costs: needs request limits to charge (a tier with only token budgets has none)"
        );
    }

    #[test]
    fn shadow_mode_is_set_per_policy_or_tier() {
        use crate::tier::Enforcement::{Enforce, Shadow};
        let modes = |json: &str| -> Vec<Enforcement> {
            parse(json.as_bytes())
                .unwrap()
                .tiers()
                .iter()
                .map(|t| t.enforcement)
                .collect()
        };
        let two = |top: &str, first: &str| {
            format!(
                r#"{{{top}"tiers":[{{"name":"a","identity":"shared",{first}"limits":[{{"requests":1,"per":"minute"}}]}},
                {{"name":"b","identity":"shared","limits":[{{"requests":1,"per":"minute"}}]}}]}}"#
            )
        };
        assert_eq!(modes(&two("", "")), [Enforce, Enforce]);
        assert_eq!(modes(&two("", r#""mode":"shadow","#)), [Shadow, Enforce]);
        assert_eq!(modes(&two(r#""mode":"shadow","#, "")), [Shadow, Shadow]);
        assert_eq!(
            modes(&two(r#""mode":"shadow","#, r#""mode":"enforce","#)),
            [Enforce, Shadow]
        );
        assert_eq!(
            error(&two("", r#""mode":"dry-run","#)),
            "tiers[0].mode: must be one of: enforce, shadow"
        );
        // Token budgets too (see llm/lifecycle/shadow_tests.rs).
        assert_eq!(
            modes(
                r#"{"mode":"shadow","tiers":[{"name":"a","identity":"shared","tokens":[{"tokens":10,"per":"day"}]}]}"#
            ),
            [Shadow]
        );
        assert_eq!(
            error(&two("", r#""shadow_headers":true,"#)),
            "tiers[0].shadow_headers: applies only to a tier in shadow mode"
        );
        let p = parse(two("", r#""mode":"shadow","shadow_headers":true,"#).as_bytes()).unwrap();
        assert!(p.tiers()[0].shadow_headers && !p.tiers()[1].shadow_headers);
    }
}
