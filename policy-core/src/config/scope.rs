//! Parsing the `scope` and `on_missing` of a tier's limits and token budgets ([`crate::scope`]).
//!
//! Kept apart from the rest of the tier's parsing: it runs once the tier is built, reads the
//! same JSON entries again for these two fields, and gives each scoped limit a table of its own
//! (a scope's budgets share a budget set: `budget_sets.rs`, which runs after this).

use alloc::format;
use alloc::vec::Vec;

use serde_json::Value;

use super::error::{err, ConfigError, Reason};
use super::json::string;
use super::{parse_identity, rates_tag};
use crate::scope::{LimitScope, OnMissing, Scope, ScopeUse, Scoping};
use crate::table::Table;
use crate::tier::Tier;

const ON_MISSING_WORDS: &[&str] = &["refuse", "skip"];

/// Reads `scope` / `on_missing` of every entry of `limits` (the tier's `limits` JSON) and
/// `tokens` and sets up the tier's [`Scoping`]: scoped limits leave the tier's table (which is
/// rebuilt for the others, identical to before when none is scoped) for one of their own.
pub(super) fn attach(
    tier: &mut Tier,
    path: &str,
    limits: &[Value],
    tokens: &[Value],
    max_keys: u32,
) -> Result<(), ConfigError> {
    let mut scopes: Vec<Scope> = Vec::new();
    let mut limit_uses = Vec::with_capacity(limits.len());
    for (i, v) in limits.iter().enumerate() {
        limit_uses.push(scope_use(v, &format!("{path}.limits[{i}]"), &mut scopes)?);
    }
    let mut budget_uses = Vec::with_capacity(tokens.len());
    for (i, v) in tokens.iter().enumerate() {
        budget_uses.push(scope_use(v, &format!("{path}.tokens[{i}]"), &mut scopes)?);
    }
    if scopes.is_empty() {
        return Ok(());
    }
    let sets_for = |scope: &Scope| {
        if scope.source.is_shared() {
            1
        } else {
            max_keys
        }
    };
    let mut scoped_limits = Vec::with_capacity(limit_uses.len());
    for (limit, using) in tier.limits.iter().zip(&limit_uses) {
        scoped_limits.push(match *using {
            Some(using) => {
                let scope = scopes.get(using.scope);
                let label = scope.map_or("", |s| s.label.as_str());
                Some(LimitScope {
                    using,
                    table: Table::new(
                        format!("tollgate/r/{}/{}@{label}/", tier.name, limit.name),
                        scope.map_or(max_keys, sets_for),
                        1,
                        rates_tag(core::iter::once(&limit.rate)),
                    ),
                })
            }
            None => None,
        });
    }
    if scoped_limits.iter().any(Option::is_some) {
        // The tier's own table keeps only the limits that count its identity.
        let own: Vec<_> = tier
            .limits
            .iter()
            .zip(&scoped_limits)
            .filter(|(_, s)| s.is_none())
            .map(|(l, _)| &l.rate)
            .collect();
        let keys = if tier.identity.is_shared() {
            1
        } else {
            max_keys
        };
        tier.table = Table::new(
            format!("tollgate/r/{}/", tier.name),
            keys,
            own.len(),
            rates_tag(own.iter().copied()),
        );
    }
    tier.scoping = Scoping {
        scopes,
        limits: scoped_limits,
        budgets: budget_uses,
    };
    Ok(())
}

/// One entry's `scope` (added to `scopes` unless an equal one is there) and `on_missing`.
fn scope_use(
    v: &Value,
    path: &str,
    scopes: &mut Vec<Scope>,
) -> Result<Option<ScopeUse>, ConfigError> {
    // The entry's other fields were checked when it was parsed; only these two are read here.
    let Value::Object(map) = v else {
        return Ok(None);
    };
    let on_missing = match map.get("on_missing").filter(|v| !v.is_null()) {
        None => None,
        Some(w) => Some(match string(w, &format!("{path}.on_missing"))? {
            "refuse" => OnMissing::Refuse,
            "skip" => OnMissing::Skip,
            _ => {
                return err(
                    format!("{path}.on_missing"),
                    Reason::NotOneOf {
                        expected: ON_MISSING_WORDS,
                    },
                )
            }
        }),
    };
    let Some(raw) = map.get("scope").filter(|v| !v.is_null()) else {
        if on_missing.is_some() {
            return err(
                format!("{path}.on_missing"),
                Reason::Invalid {
                    why: "applies only to a limit with a \"scope\"",
                },
            );
        }
        return Ok(None);
    };
    let spath = format!("{path}.scope");
    let source = parse_identity(raw, &spath)?;
    let scope = match scopes.iter().position(|s| s.source == source) {
        Some(i) => i,
        None => {
            scopes.push(Scope::new(source));
            scopes.len() - 1
        }
    };
    Ok(Some(ScopeUse {
        scope,
        on_missing: on_missing.unwrap_or_default(),
    }))
}
