//! Money: what a call costs in the currency of the policy's price table.
//!
//! Amounts are whole *micro-units* of the currency (millionths: `1.5 USD` is `1_500_000`), so a
//! spend budget is an ordinary bucket of cells and the request path computes in integers only.
//! Prices are written per million tokens, as providers publish them, as decimal strings with at
//! most six decimal places, parsed exactly ([`parse_decimal`]; never through `f64`). A price of
//! `p` per million tokens is `p` micro-units per token, which is exactly a [`Cost`] weight of
//! `p`: a price is a `Cost` whose result is micro-units instead of budget tokens.
//!
//! Rounding: once per call, up. A call's charge is `ceil(Σ countᵢ × priceᵢ / 10⁶)` micro-units
//! over the disjoint parts of its usage, so a budget is never under-charged, and each call is
//! over-charged by less than one micro-unit: over a million calls, less than one unit of the
//! currency (see the property test below). Why micro-units: the bucket's cells are capped at
//! 2⁴⁰ ([`MAX_AMOUNT`](crate::bucket::MAX_AMOUNT)), so a budget can hold up to 1,099,511.627776
//! units (a large organisation's month), while a token at the cheapest published prices (a few
//! hundredths per million) is a few hundredths of a micro-unit, charged with the rest of its
//! call rather than rounded on its own.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::budget::base_model;
use crate::decimal::{push_padded, push_u64};

use super::cost::{Cost, Weight};
use super::usage::Usage;

/// Micro-units in one unit of the currency.
pub const MICROS: u64 = 1_000_000;

/// Why a decimal string is not an amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecimalError {
    /// Not digits with at most one `.` (no sign, no exponent, no spaces).
    NotDecimal,
    /// More than six decimal places.
    TooPrecise,
    /// Larger than the maximum.
    TooLarge,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecimalError::NotDecimal => {
                "must be a decimal number written as a string, such as \"0.15\""
            }
            DecimalError::TooPrecise => "must have at most 6 decimal places",
            DecimalError::TooLarge => "is too large",
        })
    }
}

/// Parses `"12.345678"` into millionths (`12_345_678`), exactly, refusing anything above
/// `max` millionths.
///
/// # Errors
/// Not plain decimal digits, more than six decimal places, or above `max`.
pub fn parse_decimal(text: &str, max: u64) -> Result<u64, DecimalError> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits(whole)
        || !digits(fraction)
        || (text.contains('.') && fraction.is_empty())
    {
        return Err(DecimalError::NotDecimal);
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 6 {
        return Err(DecimalError::TooPrecise);
    }
    let mut n: u64 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(DecimalError::TooLarge)?;
    }
    for _ in fraction.len()..6 {
        n = n.checked_mul(10).ok_or(DecimalError::TooLarge)?;
    }
    if n > max {
        return Err(DecimalError::TooLarge);
    }
    Ok(n)
}

/// Appends an amount of micro-units as a decimal with six places: `1_500_000` → `1.500000`.
pub fn push_money(out: &mut String, micros: u64) {
    push_u64(out, micros / MICROS);
    out.push('.');
    push_padded(out, micros % MICROS, 6);
}

/// An amount of micro-units and its currency, as headers and bodies show it: `1.500000 USD`.
pub fn money(micros: u64, currency: &str) -> String {
    let mut s = String::with_capacity(24 + currency.len());
    push_money(&mut s, micros);
    s.push(' ');
    s.push_str(currency);
    s
}

/// A model's prices, per million tokens of each part of a usage, in micro-units per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    cost: Cost,
    parts: [u64; 5],
}

impl Price {
    /// Prices in millionths of the currency per million tokens (equally: micro-units per
    /// token), each capped at a million per million tokens.
    pub fn from_millionths(
        input: u64,
        cached_input: u64,
        cache_creation: u64,
        output: u64,
        reasoning: u64,
    ) -> Price {
        let cap = Weight::MAX.millionths();
        let parts = [input, cached_input, cache_creation, output, reasoning].map(|p| p.min(cap));
        let [i, c, w, o, r] = parts.map(Weight::from_millionths);
        Price {
            cost: Cost::from_weights(i, c, w, o, r),
            parts,
        }
    }

    /// What a usage costs, in micro-units, rounded up once for the whole call.
    pub fn charge(&self, usage: &Usage) -> u64 {
        self.cost.tokens(usage)
    }

    /// The dearer of two prices, part by part: what a call of an unknown model is reserved at.
    #[must_use]
    pub fn max(self, other: Price) -> Price {
        let (a, b) = (self.parts(), other.parts());
        Price::from_millionths(
            a[0].max(b[0]),
            a[1].max(b[1]),
            a[2].max(b[2]),
            a[3].max(b[3]),
            a[4].max(b[4]),
        )
    }

    /// The prices in millionths per token: input, cached input, cache creation, output,
    /// reasoning.
    pub fn parts(&self) -> [u64; 5] {
        self.parts
    }
}

/// Which model names a price-table entry is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelMatch {
    /// This name, and its dated snapshots and `-latest` alias
    /// ([`base_model`](crate::budget::base_model)) unless another entry names one exactly.
    Exact(String),
    /// Every name starting with this (the longest matching prefix wins).
    Prefix(String),
}

/// What a call for a model the table does not price does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpriced {
    /// It is refused (when a spend budget applies to it), naming the model.
    Refuse,
    /// It is charged at this price.
    Charge(Price),
}

/// The policy's `prices`: a currency, prices per model, and what an unpriced model does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    /// The operator's currency code (`USD`, `EUR`, …), shown beside every amount.
    pub currency: String,
    /// Prices by model, in the order written.
    pub models: Vec<(ModelMatch, Price)>,
    /// A model no entry matches.
    pub unpriced: Unpriced,
    /// The dearest price of every part over the table (and the default): a call whose model
    /// is not known yet (a body not read) is reserved and charged at it, so hiding the model
    /// never makes a call cheaper.
    pub dearest: Price,
}

impl PriceTable {
    /// A table; `dearest` is computed from the entries.
    pub fn new(currency: String, models: Vec<(ModelMatch, Price)>, unpriced: Unpriced) -> Self {
        let mut dearest = match unpriced {
            Unpriced::Charge(p) => p,
            Unpriced::Refuse => Price::from_millionths(0, 0, 0, 0, 0),
        };
        for (_, p) in &models {
            dearest = dearest.max(*p);
        }
        PriceTable {
            currency,
            models,
            unpriced,
            dearest,
        }
    }

    /// The price of `model`'s tokens: its exact entry, else its base model's
    /// ([`base_model`]), else the longest matching prefix, else the default; `None` when the
    /// table refuses unpriced models. An unknown model (`None`) is priced at
    /// [`dearest`](Self::dearest).
    pub fn price(&self, model: Option<&str>) -> Option<Price> {
        let Some(model) = model else {
            return Some(self.dearest);
        };
        let exact = |name: &str| {
            self.models.iter().find_map(|(m, p)| match m {
                ModelMatch::Exact(e) if e == name => Some(*p),
                _ => None,
            })
        };
        let prefix = || {
            self.models
                .iter()
                .filter_map(|(m, p)| match m {
                    ModelMatch::Prefix(pre) if model.starts_with(pre.as_str()) => {
                        Some((pre.len(), *p))
                    }
                    _ => None,
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, p)| p)
        };
        exact(model)
            .or_else(|| exact(base_model(model)))
            .or_else(prefix)
            .or(match self.unpriced {
                Unpriced::Charge(p) => Some(p),
                Unpriced::Refuse => None,
            })
    }

    /// What `usage` of `model` costs in micro-units (`None`: unpriced and refused).
    pub fn charge(&self, model: Option<&str>, usage: &Usage) -> Option<u64> {
        self.price(model).map(|p| p.charge(usage))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::ToString;
    use alloc::vec;

    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        let p = |s| parse_decimal(s, u64::MAX);
        assert_eq!(p("0.15"), Ok(150_000));
        assert_eq!(p("2.50"), Ok(2_500_000));
        assert_eq!(p("15"), Ok(15_000_000));
        assert_eq!(p(".5"), Ok(500_000));
        assert_eq!(p("0.000001"), Ok(1));
        assert_eq!(
            p("1.2345670"),
            Ok(1_234_567),
            "trailing zeros are not precision"
        );
        assert_eq!(p("0.1"), Ok(100_000), "0.1 is exact, unlike in binary");
        assert_eq!(p("0.0000001"), Err(DecimalError::TooPrecise));
        for bad in [
            "", ".", "1.", "-1", "+1", "1e3", " 1", "1,5", "1.2.3", "0x10",
        ] {
            assert_eq!(p(bad), Err(DecimalError::NotDecimal), "{bad:?}");
        }
        assert_eq!(p("18446744073709.551616"), Err(DecimalError::TooLarge));
        assert_eq!(p("18446744073709.551615"), Ok(u64::MAX));
        assert_eq!(
            parse_decimal("50.000001", 50_000_000),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(
            DecimalError::NotDecimal.to_string(),
            "must be a decimal number written as a string, such as \"0.15\""
        );
    }

    #[test]
    fn money_prints_six_places_and_the_currency() {
        assert_eq!(money(50_000_000, "USD"), "50.000000 USD");
        assert_eq!(money(1, "EUR"), "0.000001 EUR");
        assert_eq!(money(0, "USD"), "0.000000 USD");
        assert_eq!(money(u64::MAX, "X"), "18446744073709.551615 X");
    }

    fn gpt_4o_mini() -> Price {
        // 0.15 in, 0.075 cached in, 0.60 out per million tokens.
        Price::from_millionths(150_000, 75_000, 150_000, 600_000, 600_000)
    }

    #[test]
    fn a_call_is_charged_its_parts_rounded_up_once() {
        let p = gpt_4o_mini();
        let usage = Usage {
            input: 1_000,
            output: 500,
            cached_input: 400,
            ..Usage::default()
        };
        // 600 × 0.15 + 400 × 0.075 + 500 × 0.60 = 90 + 30 + 300 = 420 micro-units.
        assert_eq!(p.charge(&usage), 420);
        // One input token: 0.15 micro-units, charged as 1 (never 0 for something used).
        assert_eq!(
            p.charge(&Usage {
                input: 1,
                ..Usage::default()
            }),
            1
        );
        assert_eq!(p.charge(&Usage::default()), 0);
        assert_eq!(p.parts(), [150_000, 75_000, 150_000, 600_000, 600_000]);
    }

    fn table(unpriced: Unpriced) -> PriceTable {
        PriceTable::new(
            "USD".into(),
            vec![
                (ModelMatch::Exact("gpt-4o-mini".into()), gpt_4o_mini()),
                (
                    ModelMatch::Exact("gpt-4o-mini-2024-07-18".into()),
                    Price::from_millionths(1, 1, 1, 1, 1),
                ),
                (
                    ModelMatch::Prefix("claude-".into()),
                    Price::from_millionths(3_000_000, 300_000, 3_750_000, 15_000_000, 15_000_000),
                ),
                (
                    ModelMatch::Prefix("claude-3-haiku".into()),
                    Price::from_millionths(250_000, 30_000, 300_000, 1_250_000, 1_250_000),
                ),
            ],
            unpriced,
        )
    }

    #[test]
    fn models_are_priced_exactly_then_by_base_then_by_longest_prefix() {
        let t = table(Unpriced::Refuse);
        let input = |m: Option<&str>| t.price(m).map(|p| p.parts()[0]);
        assert_eq!(input(Some("gpt-4o-mini")), Some(150_000));
        assert_eq!(
            input(Some("gpt-4o-mini-2024-12-01")),
            Some(150_000),
            "a snapshot"
        );
        assert_eq!(input(Some("gpt-4o-mini-latest")), Some(150_000));
        assert_eq!(
            input(Some("gpt-4o-mini-2024-07-18")),
            Some(1),
            "named exactly"
        );
        assert_eq!(input(Some("claude-sonnet-4-20250514")), Some(3_000_000));
        assert_eq!(
            input(Some("claude-3-haiku-20240307")),
            Some(250_000),
            "longest prefix"
        );
        assert_eq!(input(Some("gpt-4o")), None, "unpriced and refused");
        assert_eq!(input(None), Some(3_000_000), "unknown: the dearest");
        assert_eq!(
            t.dearest.parts(),
            [3_000_000, 300_000, 3_750_000, 15_000_000, 15_000_000]
        );
        let t = table(Unpriced::Charge(Price::from_millionths(
            20_000_000, 20_000_000, 20_000_000, 80_000_000, 80_000_000,
        )));
        assert_eq!(
            t.price(Some("gpt-4o")).map(|p| p.parts()[3]),
            Some(80_000_000)
        );
        assert_eq!(t.dearest.parts()[0], 20_000_000, "the default counts too");
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        /// A million calls: the sum of the per-call charges is the exact rational total
        /// rounded up per call, so it exceeds the exact total by less than one micro-unit per
        /// call, and never falls below it.
        #[test]
        fn a_million_calls_do_not_drift(
            prices in proptest::array::uniform5(0u64..=100_000_000),
            seed in any::<u64>(),
        ) {
            let price = Price::from_millionths(prices[0], prices[1], prices[2], prices[3], prices[4]);
            let mut state = seed | 1;
            let mut next = |bound: u64| {
                // xorshift64: a million pseudo-random usages without allocating.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % bound
            };
            let (mut charged, mut exact_millionths) = (0u128, 0u128);
            const CALLS: u128 = 1_000_000;
            for _ in 0..CALLS {
                let input = next(200_000);
                let cached_input = next(input + 1);
                let cache_creation = next(input - cached_input + 1);
                let output = next(50_000);
                let reasoning = next(output + 1);
                let usage = Usage { input, output, cached_input, reasoning, cache_creation };
                charged += u128::from(price.charge(&usage));
                let parts = [
                    (input - cached_input - cache_creation, prices[0]),
                    (cached_input, prices[1]),
                    (cache_creation, prices[2]),
                    (output - reasoning, prices[3]),
                    (reasoning, prices[4]),
                ];
                exact_millionths += parts
                    .iter()
                    .map(|&(n, p)| u128::from(n) * u128::from(p))
                    .sum::<u128>();
            }
            // charged × 10⁶ ≥ exact, and charged × 10⁶ − exact < 10⁶ × calls.
            let scaled = charged * u128::from(MICROS);
            prop_assert!(scaled >= exact_millionths);
            prop_assert!(scaled - exact_millionths < u128::from(MICROS) * CALLS);
        }
    }
}
