//! What a call asks of and is charged to each budget, in tokens and in money.
//!
//! A spend budget is charged from the same usage as a token budget, by the same rules: the
//! estimate that reserve mode holds is the estimated input plus the output cap, priced at the
//! model's prices; the settlement is the usage the response reported (or what the rules
//! charge instead), priced the same way. The model is the one the budgets see: the path's,
//! else the body's; unknown, it is priced at the table's dearest ([`PriceTable::dearest`]).
//!
//! [`PriceTable::dearest`]: crate::llm::price::PriceTable::dearest

use alloc::string::String;

use crate::budget::{Amount, LlmSettings, Meter};
use crate::tier::Tier;
use crate::Policy;

use super::super::price::Price;
use super::super::Usage;
use super::LlmCall;

impl LlmCall {
    /// The price of the call's model, when the policy has a price table that prices it.
    pub(super) fn price(&self, policy: &Policy, model: Option<&str>) -> Option<Price> {
        policy.prices().and_then(|t| t.price(model))
    }

    /// The model the budgets see now.
    pub(super) fn budget_model(&self) -> Option<&str> {
        self.model.as_deref().or(self.path_model.as_deref())
    }

    /// What `input` estimated input tokens and `output` output tokens of `model` ask: the
    /// tokens, and their price.
    pub(super) fn ask_for(
        &self,
        policy: &Policy,
        model: Option<&str>,
        input: u64,
        output: u64,
    ) -> Amount {
        let usage = Usage {
            input,
            output,
            ..Usage::default()
        };
        Amount {
            tokens: input.saturating_add(output),
            spend: self.price(policy, model).map_or(0, |p| p.charge(&usage)),
        }
    }

    /// The call's estimate (what reserve mode holds) in every unit.
    pub(super) fn estimate_amount(&self, policy: &Policy) -> Amount {
        let output = self.estimate.saturating_sub(self.estimated_input);
        let mut amount = self.ask_for(policy, self.budget_model(), self.estimated_input, output);
        amount.tokens = self.estimate;
        amount
    }

    /// What a usage costs in every unit.
    pub(super) fn usage_amount(&self, policy: &Policy, llm: &LlmSettings, usage: &Usage) -> Amount {
        Amount {
            tokens: llm.cost.tokens(usage),
            spend: self
                .price(policy, self.budget_model())
                .map_or(0, |p| p.charge(usage)),
        }
    }

    /// The model, when a spend budget of the tier applies to it and the price table neither
    /// prices it nor has a default price for it: the call is refused, naming it.
    pub(super) fn unpriced(
        &self,
        policy: &Policy,
        tier: &Tier,
        model: Option<&str>,
    ) -> Option<String> {
        let model = model?;
        let table = policy.prices()?;
        let spends = tier
            .budgets
            .iter()
            .any(|b| b.meter == Meter::Spend && b.applies(Some(model)));
        (spends && table.price(Some(model)).is_none()).then(|| String::from(model))
    }
}
