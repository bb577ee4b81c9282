//! A token budget's `model`: which models it counts ([`crate::model_match`]).
//!
//! - absent: every model, together;
//! - `"*"`: every model, each its own budget;
//! - `"gpt-4o"`: that model and its snapshots;
//! - `{"prefix": "gemini-1.5-pro"}`: every model whose name starts so;
//! - `["gpt-4o", "gpt-4o-2024-08-06", {"prefix": "…"}]`: one budget for all of them (aliases of
//!   one model, as the APIs and their paths name it).

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::vec::Vec;

use serde_json::Value;

use super::error::{err, ConfigError, Reason};
use super::json::{string, Obj};
use crate::budget::ModelScope;
use crate::llm::request::MAX_MODEL_LEN;
use crate::model_match::{ModelMatch, ModelName};

/// The most entries in one budget's `model` list.
const MAX_MODEL_NAMES: usize = 64;
const PREFIX_FIELDS: &[&str] = &["prefix"];

/// One entry: a name (not `"*"`) or `{"prefix": "…"}`, 1 to [`MAX_MODEL_LEN`] bytes.
fn entry(v: &Value, path: &str) -> Result<ModelName, ConfigError> {
    let (text, at, name) = if v.is_object() {
        let o = Obj::new(v, path, PREFIX_FIELDS)?;
        let at = o.at("prefix");
        (string(o.req("prefix")?, &at)?, at, false)
    } else {
        (string(v, path)?, path.to_owned(), true)
    };
    if text.is_empty() {
        return err(at, Reason::Empty);
    }
    if text.len() > MAX_MODEL_LEN {
        return err(
            at,
            Reason::Invalid {
                why: "a model name is at most 256 bytes",
            },
        );
    }
    if name && text == "*" {
        return err(
            at,
            Reason::Invalid {
                why: "\"*\" (a budget per model) stands alone, not in a list",
            },
        );
    }
    Ok(if name {
        ModelName::Name(text.to_owned())
    } else {
        ModelName::Prefix(text.to_owned())
    })
}

/// Reads a budget's `model` (`v` absent: every model together).
pub(super) fn parse_model(v: Option<&Value>, path: &str) -> Result<ModelScope, ConfigError> {
    let entries = match v {
        None => return Ok(ModelScope::All),
        Some(Value::String(s)) if s == "*" => return Ok(ModelScope::Each),
        Some(Value::String(s)) if s.is_empty() => return err(path, Reason::Empty),
        // One name, as before lists and prefixes: any length is accepted (a name longer than a
        // request's model can be never matches).
        Some(Value::String(s)) => return Ok(ModelScope::Only(ModelMatch::name(s))),
        Some(Value::Array(list)) => {
            if list.len() > MAX_MODEL_NAMES {
                return err(
                    path,
                    Reason::TooMany {
                        max: MAX_MODEL_NAMES,
                    },
                );
            }
            list.iter()
                .enumerate()
                .map(|(i, e)| entry(e, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other @ Value::Object(_)) => alloc::vec![entry(other, path)?],
        Some(_) => {
            return err(
                path,
                Reason::WrongType {
                    expected:
                        "a model name, \"*\", {\"prefix\": …} or a list of names and prefixes",
                },
            )
        }
    };
    match ModelMatch::new(entries) {
        Some(m) => Ok(ModelScope::Only(m)),
        None => err(path, Reason::Empty),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::{String, ToString};

    use crate::budget::ModelScope;
    use crate::model_match::{ModelMatch, ModelName};
    use crate::Policy;

    fn with_model(model: &str) -> Result<Policy, crate::ConfigError> {
        let text = alloc::format!(
            r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":1000,"per":"hour","model":{model}}}]}}]}}"#
        );
        Policy::from_json(text.as_bytes())
    }

    #[test]
    fn a_model_is_a_name_a_prefix_or_a_list_of_them() {
        let scope = |m: &str| with_model(m).unwrap().tiers()[0].budgets[0].scope.clone();
        let name = |n: &str| ModelName::Name(String::from(n));
        let prefix = |n: &str| ModelName::Prefix(String::from(n));
        assert_eq!(scope(r#""*""#), ModelScope::Each);
        assert_eq!(
            scope(r#""gpt-4o""#),
            ModelScope::Only(ModelMatch::name("gpt-4o"))
        );
        assert_eq!(
            scope(r#"{"prefix":"gemini-"}"#),
            ModelScope::Only(ModelMatch::new(alloc::vec![prefix("gemini-")]).unwrap())
        );
        assert_eq!(
            scope(r#"["gpt-4o","gpt-4o-2024-08-06",{"prefix":"gpt-4o-audio"}]"#),
            ModelScope::Only(
                ModelMatch::new(alloc::vec![
                    name("gpt-4o"),
                    name("gpt-4o-2024-08-06"),
                    prefix("gpt-4o-audio")
                ])
                .unwrap()
            )
        );
    }

    #[test]
    fn a_bad_model_names_its_path() {
        let long = alloc::format!(r#"["{}"]"#, "m".repeat(257));
        let many = alloc::format!("[{}]", ["\"m\""; 65].join(","));
        for (model, expected) in [
            (r#""""#, "tiers[0].tokens[0].model: "),
            ("[]", "tiers[0].tokens[0].model: "),
            (r#"["gpt-4o",""]"#, "tiers[0].tokens[0].model[1]: "),
            (r#"["gpt-4o","*"]"#, "tiers[0].tokens[0].model[1]: "),
            (r#"[{"prefix":""}]"#, "tiers[0].tokens[0].model[0].prefix: "),
            (r#"{"prefix":7}"#, "tiers[0].tokens[0].model.prefix: "),
            (r#"{"suffix":"x"}"#, "tiers[0].tokens[0].model.suffix: "),
            (r#"{}"#, "tiers[0].tokens[0].model.prefix: "),
            ("[3]", "tiers[0].tokens[0].model[0]: "),
            ("true", "tiers[0].tokens[0].model: "),
            (long.as_str(), "tiers[0].tokens[0].model[0]: "),
            (many.as_str(), "tiers[0].tokens[0].model: "),
        ] {
            let e = with_model(model).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{model}: {e}");
        }
    }
}
