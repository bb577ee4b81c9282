//! Which of a tier's budgets share a shared-data value ([`BudgetSet`]).
//!
//! Runs once the tier's budgets and their scopes are parsed. Budgets that count the same key —
//! the tier's identity, or one scope's identity — go into one set; the budgets kept per model
//! (`"model": "*"`) count a key that includes the model, so they form a set of their own beside
//! it. A tier has at most [`MAX_LIMITS`](super::MAX_LIMITS) budgets, which one set always holds.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::rates_tag;
use crate::budget::{BudgetSet, ModelScope};
use crate::table::{column_tag, BudgetTable, MAX_CELLS};
use crate::tier::Tier;

/// Sets up `tier.budget_sets`, each sized for `max_keys` callers (one set when every caller
/// counts one shared key).
pub(super) fn group(tier: &mut Tier, max_keys: u32) {
    // What a set's budgets share: the scope they count (None: the tier's identity), and
    // whether they are kept per model.
    type Key = (Option<usize>, bool);
    // Each set's key and its members, in budget order.
    let mut groups: Vec<(Key, Vec<usize>)> = Vec::new();
    for (i, budget) in tier.budgets.iter().enumerate() {
        let scope = tier
            .scoping
            .budgets
            .get(i)
            .and_then(|u| u.as_ref())
            .map(|u| u.scope);
        let key = (scope, budget.scope == ModelScope::Each);
        match groups
            .iter_mut()
            .find(|(k, m)| *k == key && m.len() < MAX_CELLS)
        {
            Some((_, members)) => members.push(i),
            None => groups.push((key, alloc::vec![i])),
        }
    }
    let mut sets: Vec<BudgetSet> = Vec::with_capacity(groups.len());
    for ((scope, per_model), members) in groups {
        let (label, shared) = match scope.and_then(|s| tier.scoping.scopes.get(s)) {
            Some(s) => (format!("@{}", s.label), s.source.is_shared()),
            None => (String::from("caller"), tier.identity.is_shared()),
        };
        let mut prefix = format!(
            "tollgate/b/{}/{label}{}/",
            tier.name,
            if per_model { "/each-model" } else { "" }
        );
        if sets.iter().any(|s| s.table.key(0).starts_with(&prefix)) {
            // Two scopes with one label (a header and a metadata key of that name).
            prefix = format!("{prefix}{}/", scope.unwrap_or_default());
        }
        let keys = if shared && !per_model { 1 } else { max_keys };
        let columns = members
            .iter()
            .filter_map(|&i| tier.budgets.get(i))
            .map(|b| column_tag(&b.name, rates_tag(core::iter::once(&b.rate))))
            .collect();
        sets.push(BudgetSet {
            members,
            per_model,
            table: BudgetTable::new(prefix, keys, columns),
        });
    }
    tier.budget_sets = sets;
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec::Vec;

    use crate::config::parse;

    fn sets(json: &str) -> Vec<(Vec<usize>, bool, u32, String)> {
        let p = parse(json.as_bytes()).unwrap();
        p.tiers()[0]
            .budget_sets
            .iter()
            .map(|s| {
                (
                    s.members.clone(),
                    s.per_model,
                    s.table.sets(),
                    s.table.key(0),
                )
            })
            .collect()
    }

    use alloc::string::String;

    #[test]
    fn budgets_counting_one_key_share_a_set() {
        let got = sets(
            r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},"max_keys":64,
                "tokens":[{"tokens":1000,"per":"day"},
                          {"tokens":500,"per":"hour","model":"gpt-4o"},
                          {"tokens":400,"per":"minute","model":"*","name":"each"},
                          {"tokens":9,"per":"minute","model":"*","name":"each2"},
                          {"tokens":100,"per":"day","scope":{"header":"x-team-id"},"name":"t1"},
                          {"tokens":50,"per":"hour","scope":{"header":"x-team-id"},"name":"t2"},
                          {"tokens":10,"per":"hour","scope":"shared","name":"org"}]}]}"#,
        );
        assert_eq!(
            got,
            [
                (
                    alloc::vec![0, 1],
                    false,
                    8,
                    String::from("tollgate/b/free/caller/0")
                ),
                (
                    alloc::vec![2, 3],
                    true,
                    8,
                    String::from("tollgate/b/free/caller/each-model/0")
                ),
                (
                    alloc::vec![4, 5],
                    false,
                    8,
                    String::from("tollgate/b/free/@x-team-id/0")
                ),
                (
                    alloc::vec![6],
                    false,
                    1,
                    String::from("tollgate/b/free/@shared/0")
                ),
            ]
        );
    }

    #[test]
    fn a_shared_identity_needs_one_set_except_per_model() {
        let got = sets(
            r#"{"tiers":[{"name":"all","identity":"shared",
                "tokens":[{"tokens":1000,"per":"day"},{"tokens":400,"per":"minute","model":"*"}]}]}"#,
        );
        assert_eq!(got[0].2, 1);
        assert!(got[1].2 > 1, "per model: one key per model");
    }
}
