//! The price table (`prices`) and spend budgets (`{"spend": "50.00", "per": "month"}` in a
//! tier's `tokens`).
//!
//! ```json
//! "prices": {
//!   "currency": "USD",
//!   "models": [
//!     {"model": "gpt-4o-mini", "input": "0.15", "cached_input": "0.075", "output": "0.60"},
//!     {"prefix": "claude-sonnet-4", "input": "3", "output": "15",
//!      "cached_input": "0.30", "cache_creation": "3.75"}
//!   ],
//!   "unpriced": "refuse"
//! }
//! ```
//!
//! Prices are per million tokens, written as strings so they are read exactly (see
//! [`crate::llm::price`]). A spend budget is read as a token budget whose cells are micro-units:
//! whatever window fields a token budget takes, a spend budget takes too.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde_json::{Map, Value};

use super::error::{err, ConfigError, Reason};
use super::json::{array, string, Obj};
use crate::bucket::MAX_AMOUNT;
use crate::budget::Meter;
use crate::llm::price::{parse_decimal, ModelMatch, Price, PriceTable, Unpriced, MICROS};
use crate::llm::request::MAX_MODEL_LEN;
use crate::tier::Tier;

const PRICES_FIELDS: &[&str] = &["currency", "models", "unpriced"];
const ENTRY_FIELDS: &[&str] = &[
    "model",
    "prefix",
    "input",
    "cached_input",
    "cache_creation",
    "output",
    "reasoning",
];
const DEFAULT_FIELDS: &[&str] = &[
    "input",
    "cached_input",
    "cache_creation",
    "output",
    "reasoning",
];
/// The most price-table entries: each call looks through them once.
const MAX_PRICES: usize = 256;
/// The dearest price a part may have: a million per million tokens (one unit per token).
const MAX_PRICE: u64 = MICROS * MICROS;

/// `prices`.
pub(super) fn parse_prices(v: &Value, path: &str) -> Result<PriceTable, ConfigError> {
    let o = Obj::new(v, path, PRICES_FIELDS)?;
    let cpath = o.at("currency");
    let currency = string(o.req("currency")?, &cpath)?;
    if !(3..=8).contains(&currency.len()) || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return err(
            cpath,
            Reason::Invalid {
                why: "must be a currency code of 3 to 8 capital letters, such as \"USD\"",
            },
        );
    }
    let mpath = o.at("models");
    let list = array(o.req("models")?, &mpath)?;
    if list.len() > MAX_PRICES {
        return err(mpath, Reason::TooMany { max: MAX_PRICES });
    }
    let mut models: Vec<(ModelMatch, Price)> = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let epath = format!("{mpath}[{i}]");
        let e = Obj::new(e, &epath, ENTRY_FIELDS)?;
        let matcher = match (e.opt("model"), e.opt("prefix")) {
            (Some(m), None) => ModelMatch::Exact(model_name(m, &e.at("model"))?),
            (None, Some(p)) => ModelMatch::Prefix(model_name(p, &e.at("prefix"))?),
            _ => {
                return err(
                    epath,
                    Reason::Invalid {
                        why: "must have exactly one of: model, prefix",
                    },
                )
            }
        };
        if models.iter().any(|(m, _)| *m == matcher) {
            let name = match &matcher {
                ModelMatch::Exact(n) | ModelMatch::Prefix(n) => n.clone(),
            };
            return err(epath, Reason::Duplicate { name });
        }
        models.push((matcher, price(&e)?));
    }
    let unpriced = match o.opt("unpriced") {
        None => Unpriced::Refuse,
        Some(Value::String(s)) if s == "refuse" => Unpriced::Refuse,
        Some(d @ Value::Object(_)) => {
            Unpriced::Charge(price(&Obj::new(d, &o.at("unpriced"), DEFAULT_FIELDS)?)?)
        }
        Some(_) => {
            return err(
                o.at("unpriced"),
                Reason::Invalid {
                    why: "must be \"refuse\" or a price object such as {\"input\": \"10\", \"output\": \"30\"}",
                },
            )
        }
    };
    Ok(PriceTable::new(currency.to_owned(), models, unpriced))
}

fn model_name(v: &Value, path: &str) -> Result<String, ConfigError> {
    let s = string(v, path)?;
    if s.is_empty() || s.len() > MAX_MODEL_LEN {
        return err(
            path,
            Reason::Invalid {
                why: "must be 1 to 256 bytes",
            },
        );
    }
    Ok(s.to_owned())
}

/// One price object: `input` and `output` required, the others defaulting as `llm.count`'s
/// weights do (cached input and cache creation at the input price, reasoning at the output
/// price).
fn price(o: &Obj<'_>) -> Result<Price, ConfigError> {
    let part = |field: &str| -> Result<Option<u64>, ConfigError> {
        let Some(v) = o.opt(field) else {
            return Ok(None);
        };
        let path = o.at(field);
        let Value::String(text) = v else {
            return err(
                path,
                Reason::Invalid {
                    why: "must be a decimal number written as a string, such as \"0.15\" (a JSON number would be read through floating point)",
                },
            );
        };
        parse_decimal(text, MAX_PRICE)
            .map(Some)
            .map_err(|e| ConfigError {
                path,
                reason: Reason::Refused {
                    detail: format!("{e} (a price per million tokens, at most 1000000)"),
                },
            })
    };
    let input = part("input")?.map_or_else(|| err(o.at("input"), Reason::Missing), Ok)?;
    let output = part("output")?.map_or_else(|| err(o.at("output"), Reason::Missing), Ok)?;
    Ok(Price::from_millionths(
        input,
        part("cached_input")?.unwrap_or(input),
        part("cache_creation")?.unwrap_or(input),
        output,
        part("reasoning")?.unwrap_or(output),
    ))
}

/// A spend budget entry read as the token budget it is: `spend` (and `burst`) in micro-units
/// under `tokens`, every other field as written. `None`: not a spend budget.
pub(super) fn spend_as_tokens(v: &Value, path: &str) -> Result<Option<Value>, ConfigError> {
    let Value::Object(map) = v else {
        return Ok(None);
    };
    let Some(spend) = map.get("spend") else {
        return Ok(None);
    };
    if map.contains_key("tokens") {
        return err(
            path,
            Reason::Invalid {
                why: "must have exactly one of: tokens, spend",
            },
        );
    }
    let mut out: Map<String, Value> = map.clone();
    out.remove("spend");
    out.insert(
        "tokens".to_owned(),
        amount(spend, &format!("{path}.spend"))?,
    );
    if let Some(burst) = map.get("burst") {
        out.insert("burst".to_owned(), amount(burst, &format!("{path}.burst"))?);
    }
    Ok(Some(Value::Object(out)))
}

/// An amount of money as micro-units: a positive decimal string up to the bucket's range.
fn amount(v: &Value, path: &str) -> Result<Value, ConfigError> {
    let text = string(v, path).map_err(|_| ConfigError {
        path: path.to_owned(),
        reason: Reason::Invalid {
            why: "must be an amount written as a string, such as \"50.00\"",
        },
    })?;
    match parse_decimal(text, MAX_AMOUNT) {
        Ok(0) => err(path, Reason::NotPositive),
        Ok(n) => Ok(Value::from(n)),
        Err(e) => err(
            path,
            Reason::Refused {
                detail: format!("{e} (at most 1099511.627776)"),
            },
        ),
    }
}

/// Gives each spend budget the price table's currency; a spend budget needs a price table, so
/// without one the first spend budget is refused by its path.
pub(super) fn check_spend(
    tiers: &mut [Tier],
    tiers_path: &str,
    prices: Option<&PriceTable>,
) -> Result<(), ConfigError> {
    if let Some(table) = prices {
        for b in tiers.iter_mut().flat_map(|t| t.budgets.iter_mut()) {
            if b.meter == Meter::Spend {
                b.currency.clone_from(&table.currency);
            }
        }
        return Ok(());
    }
    for (i, t) in tiers.iter().enumerate() {
        if let Some(j) = t.budgets.iter().position(|b| b.meter == Meter::Spend) {
            return err(
                format!("{tiers_path}[{i}].tokens[{j}].spend"),
                Reason::Invalid {
                    why: "a spend budget needs a price table: add a top-level \"prices\"",
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::ToString;

    use crate::budget::Meter;
    use crate::llm::price::Unpriced;
    use crate::Policy;

    fn with(budget: &str, prices: &str) -> Result<Policy, crate::ConfigError> {
        let text = alloc::format!(
            r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":1000,"per":"hour"}},{budget}]}}]{prices}}}"#
        );
        Policy::from_json(text.as_bytes())
    }

    const PRICES: &str =
        r#","prices":{"currency":"EUR","models":[{"model":"m","input":"0.15","output":"0.6"}]}"#;

    #[test]
    fn a_token_budget_naming_a_model_does_not_lift_a_spend_budget_off_it() {
        // Only budgets of one meter compete for a model: the exact token cap on `m-mini` takes
        // it from the token budget for the prefix `m`, never from the spend budget for it.
        let p = with(
            r#"{"spend":"10","per":"day","model":{"prefix":"m"}},
               {"tokens":50,"per":"minute","model":"m-mini"},
               {"tokens":500,"per":"minute","model":{"prefix":"m"},"name":"m-tokens"}"#,
            PRICES,
        )
        .unwrap();
        let budgets = &p.tiers()[0].budgets;
        assert_eq!(budgets[1].meter, Meter::Spend);
        assert!(
            budgets[1].applies(Some("m-mini")),
            "the spend budget still counts m-mini"
        );
        assert!(budgets[2].applies(Some("m-mini")));
        assert!(
            !budgets[3].applies(Some("m-mini")),
            "the token prefix yields to the exact name"
        );
        assert!(budgets[3].applies(Some("m-large")));
    }

    #[test]
    fn a_spend_budget_is_a_budget_of_micro_units_in_the_tables_currency() {
        let p = with(r#"{"spend":"50","per":"month"}"#, PRICES).unwrap();
        let b = &p.tiers()[0].budgets[1];
        assert_eq!(b.meter, Meter::Spend);
        assert_eq!(b.rate.amount(), 50_000_000);
        assert_eq!(b.currency, "EUR");
        assert_eq!(b.name, "free-spend-month");
        assert_eq!(p.tiers()[0].budgets[0].meter, Meter::Tokens);
        let t = p.prices().unwrap();
        assert_eq!(t.unpriced, Unpriced::Refuse, "refuse by default");
        assert_eq!(
            t.price(Some("m")).unwrap().parts(),
            [150_000, 150_000, 150_000, 600_000, 600_000],
            "cached input and cache writes at the input price, reasoning at the output price"
        );
        let p = with(
            r#"{"spend":"0.5","per":"day","burst":"1.25","model":"m"}"#,
            PRICES,
        )
        .unwrap();
        let b = &p.tiers()[0].budgets[1];
        assert_eq!((b.rate.amount(), b.rate.burst()), (500_000, 1_250_000));
    }

    #[test]
    fn mistakes_name_their_path() {
        for (budget, prices, message) in [
            (
                r#"{"spend":"50","per":"month"}"#,
                "",
                "tiers[0].tokens[1].spend: a spend budget needs a price table",
            ),
            (
                r#"{"spend":50,"per":"month"}"#,
                PRICES,
                "tiers[0].tokens[1].spend: must be an amount written as a string",
            ),
            (
                r#"{"spend":"0","per":"month"}"#,
                PRICES,
                "tiers[0].tokens[1].spend: must be greater than 0",
            ),
            (
                r#"{"spend":"1099511.627777","per":"month"}"#,
                PRICES,
                "tiers[0].tokens[1].spend: is too large",
            ),
            (
                r#"{"spend":"5","tokens":5,"per":"month"}"#,
                PRICES,
                "tiers[0].tokens[1]: must have exactly one of: tokens, spend",
            ),
            (
                r#"{"spend":"5","per":"fortnight"}"#,
                PRICES,
                "tiers[0].tokens[1].per: ",
            ),
            (
                r#"{"tokens":5,"per":"day"}"#,
                r#","prices":{"currency":"usd","models":[]}"#,
                "prices.currency: must be a currency code",
            ),
            (
                r#"{"tokens":5,"per":"day"}"#,
                r#","prices":{"currency":"USD","models":[{"model":"m","input":0.15,"output":"1"}]}"#,
                "prices.models[0].input: must be a decimal number written as a string",
            ),
            (
                r#"{"tokens":5,"per":"day"}"#,
                r#","prices":{"currency":"USD","models":[{"model":"m","input":"0.0000001","output":"1"}]}"#,
                "prices.models[0].input: must have at most 6 decimal places",
            ),
            (
                r#"{"tokens":5,"per":"day"}"#,
                r#","prices":{"currency":"USD","models":[{"model":"m","input":"1"}]}"#,
                "prices.models[0].output: required field is missing",
            ),
            (
                r#"{"tokens":5,"per":"day"}"#,
                r#","prices":{"currency":"USD","models":[{"model":"m","prefix":"m","input":"1","output":"1"}]}"#,
                "prices.models[0]: must have exactly one of: model, prefix",
            ),
            (
                r#"{"tokens":5,"per":"day"}"#,
                r#","prices":{"currency":"USD","models":[],"unpriced":"free"}"#,
                "prices.unpriced: must be \"refuse\" or a price object",
            ),
        ] {
            let e = with(budget, prices).unwrap_err().to_string();
            assert!(e.starts_with(message), "{budget} {prices}: {e}");
        }
    }
}
