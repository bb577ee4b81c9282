//! Which models a per-model token budget counts: the names an operator writes in a budget's
//! `model` (one name, a list of aliases, a prefix, or a list mixing them), and, when several
//! budgets of a tier take the same model, which of them wins.
//!
//! A model reaches a budget by one name, however the call named it: in the body (OpenAI,
//! Anthropic, Ollama), in the path (Gemini, Vertex AI, an Azure deployment mapped by
//! `llm.deployments`). Providers publish one model under several names — a base name and dated
//! snapshots (`gpt-4o`, `gpt-4o-2024-08-06`), version suffixes (`gemini-1.5-pro-002`), publisher
//! prefixes (`google/gemini-2.0-flash-001` on Vertex AI's OpenAI-compatible endpoint) — so a
//! budget for a model must be able to name all of them, or a caller escapes it by picking another
//! name for the same model.
//!
//! How strongly one entry takes a model ([`Strength`], strongest first):
//! 1. its exact name (case counts), written alone or in a list;
//! 2. a snapshot of a name it lists ([`base_model`]: `-YYYY-MM-DD`, `-YYYYMMDD`, `@YYYYMMDD`,
//!    `-latest`);
//! 3. a prefix it lists, a longer prefix before a shorter one.
//!
//! Of a tier's budgets that name models, a model counts against those that take it most
//! strongly: a budget for `gpt-4o-mini` takes `gpt-4o-mini` from a budget for the prefix
//! `gpt-4o`, and a budget naming `gpt-4o-2024-08-06` takes that snapshot from the budget for
//! `gpt-4o`. Budgets that take it equally strongly all count it (a per-minute and a per-day budget
//! for one model). Budgets without `model`, and `"*"`, count every model besides.

use alloc::string::String;
use alloc::vec::Vec;

use crate::budget::base_model;

/// One entry of a budget's `model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelName {
    /// A model name: the model itself and its snapshots.
    Name(String),
    /// `{"prefix": "…"}`: every model whose name starts with it.
    Prefix(String),
}

/// How strongly a budget's `model` takes a model name; a stronger match wins over a weaker one
/// of another budget of the tier. Ordered weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Under a prefix of this many bytes.
    Prefix(usize),
    /// A snapshot of a listed name.
    Snapshot,
    /// A listed name exactly.
    Exact,
}

/// The models one budget counts: at least one [`ModelName`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelMatch {
    names: Vec<ModelName>,
}

impl ModelMatch {
    /// A matcher of `names`; `None` when there is none (the config refuses an empty list).
    pub fn new(names: Vec<ModelName>) -> Option<ModelMatch> {
        (!names.is_empty()).then_some(ModelMatch { names })
    }

    /// A matcher of one model name (and its snapshots), as `"model": "gpt-4o"` writes it.
    pub fn name(name: &str) -> ModelMatch {
        ModelMatch {
            names: alloc::vec![ModelName::Name(String::from(name))],
        }
    }

    /// The entries, as written.
    pub fn names(&self) -> &[ModelName] {
        &self.names
    }

    /// The name a budget is called by default: its first entry (a prefix followed by `*`).
    pub fn label(&self) -> String {
        match self.names.first() {
            Some(ModelName::Name(n)) => n.clone(),
            Some(ModelName::Prefix(p)) => alloc::format!("{p}*"),
            None => String::new(),
        }
    }

    /// How strongly this matcher takes `model`, if at all: its strongest entry.
    pub fn strength(&self, model: &str) -> Option<Strength> {
        self.names
            .iter()
            .filter_map(|entry| match entry {
                ModelName::Name(n) if n == model => Some(Strength::Exact),
                ModelName::Name(n) if base_model(model) == n => Some(Strength::Snapshot),
                ModelName::Name(_) => None,
                ModelName::Prefix(p) => model
                    .starts_with(p.as_str())
                    .then_some(Strength::Prefix(p.len())),
            })
            .max()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn of(entries: &[(&str, bool)]) -> ModelMatch {
        let names = entries
            .iter()
            .map(|(n, prefix)| {
                if *prefix {
                    ModelName::Prefix(String::from(*n))
                } else {
                    ModelName::Name(String::from(*n))
                }
            })
            .collect();
        ModelMatch::new(names).unwrap()
    }

    #[test]
    fn names_snapshots_and_prefixes_take_a_model_in_that_order() {
        let m = of(&[
            ("gpt-4o", false),
            ("gpt-4o-2024-08-06", false),
            ("gpt-4", true),
        ]);
        assert_eq!(m.strength("gpt-4o"), Some(Strength::Exact));
        assert_eq!(m.strength("gpt-4o-2024-08-06"), Some(Strength::Exact));
        assert_eq!(m.strength("gpt-4o-2024-11-20"), Some(Strength::Snapshot));
        assert_eq!(m.strength("gpt-4o-latest"), Some(Strength::Snapshot));
        assert_eq!(m.strength("gpt-4o-mini"), Some(Strength::Prefix(5)));
        assert_eq!(m.strength("gpt-4-0613"), Some(Strength::Prefix(5)));
        assert_eq!(m.strength("GPT-4o"), None, "case counts");
        assert_eq!(m.strength("o3"), None);
        assert_eq!(m.strength(""), None);
        assert!(Strength::Exact > Strength::Snapshot);
        assert!(Strength::Snapshot > Strength::Prefix(usize::MAX));
        assert!(Strength::Prefix(7) > Strength::Prefix(6));
    }

    #[test]
    fn a_label_is_the_first_entry() {
        assert_eq!(of(&[("gpt-4o", false), ("x", true)]).label(), "gpt-4o");
        assert_eq!(of(&[("gemini-1.5-", true)]).label(), "gemini-1.5-*");
        assert_eq!(ModelMatch::name("llama3.2").label(), "llama3.2");
        assert_eq!(ModelMatch::new(Vec::new()), None);
    }
}
