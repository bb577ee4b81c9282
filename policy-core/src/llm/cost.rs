//! What a request costs against a token budget, given its [`Usage`].
//!
//! Configured as one of `"input"`, `"output"`, `"total"`, or an object of weights such as
//! `{ "input": 1.0, "output": 4.0, "cached_input": 0.5 }`. Weights are parsed once into
//! millionths ([`Weight`]) so the request path computes in integers: no float rounding that
//! differs between hosts, and no float code in the hot path.

use core::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use super::usage::Usage;

/// A non-negative weight with six decimal places, stored as millionths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u64);

impl Weight {
    /// Counts nothing.
    pub const ZERO: Weight = Weight(0);
    /// Counts each token once.
    pub const ONE: Weight = Weight(SCALE);
    /// The largest weight accepted from configuration. Keeps every product of a `u64` count
    /// and a weight, and their sum, far inside `u128`.
    pub const MAX: Weight = Weight(1_000_000 * SCALE);

    /// A weight of `millionths / 1_000_000`, capped at [`Weight::MAX`].
    pub fn from_millionths(millionths: u64) -> Weight {
        Weight(millionths.min(Self::MAX.0))
    }

    /// The weight in millionths.
    pub fn millionths(self) -> u64 {
        self.0
    }

    /// Converts a configured number.
    ///
    /// # Errors
    /// Negative, not finite, above [`Weight::MAX`], or with more than six decimal places
    /// (`1e-7` would otherwise silently become 0).
    pub fn from_f64(value: f64) -> Result<Weight, WeightError> {
        if value.is_nan() || value.is_infinite() {
            return Err(WeightError::NotFinite);
        }
        if value < 0.0 {
            return Err(WeightError::Negative);
        }
        if value > MAX_F64 {
            return Err(WeightError::TooLarge);
        }
        let scaled = value * SCALE_F64;
        // In range 0..=1e12, so the cast is exact after rounding half up.
        let rounded = (scaled + 0.5) as u64;
        let error = scaled - rounded as f64;
        // Decimal fractions such as 0.1 are not exact in binary; allow that noise, not more.
        if !(-1e-3..=1e-3).contains(&error) {
            return Err(WeightError::TooPrecise);
        }
        Ok(Weight(rounded))
    }
}

const SCALE: u64 = 1_000_000;
const SCALE_F64: f64 = 1_000_000.0;
const MAX_F64: f64 = 1_000_000.0;

/// How a weight from configuration is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightError {
    /// Below zero: a request must never refill a budget.
    Negative,
    /// NaN or infinite.
    NotFinite,
    /// Above one million.
    TooLarge,
    /// More than six decimal places.
    TooPrecise,
}

impl fmt::Display for WeightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightError::Negative => "must not be negative",
            WeightError::NotFinite => "must be a finite number",
            WeightError::TooLarge => "must be at most 1000000",
            WeightError::TooPrecise => "must have at most 6 decimal places",
        })
    }
}

/// Why a cost configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CostError {
    /// One weight is unusable.
    BadWeight {
        /// The weight's key, e.g. `cached_input`.
        field: &'static str,
        /// What is wrong with it.
        reason: WeightError,
    },
    /// Every weight is zero, so nothing would ever be counted.
    NothingCounted,
}

impl fmt::Display for CostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CostError::BadWeight { field, reason } => write!(f, "{field}: {reason}"),
            CostError::NothingCounted => f.write_str("at least one weight must be greater than 0"),
        }
    }
}

impl core::error::Error for CostError {}

/// The weights as configured, before validation. Absent weights take the defaults described
/// on each field.
#[derive(Clone, Copy, Debug, Default, PartialEq, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WeightsSpec {
    /// Per uncached input token. Default 0.
    pub input: Option<f64>,
    /// Per output token that is not reasoning. Default 0.
    pub output: Option<f64>,
    /// Per input token read from a prompt cache. Default: `input`'s weight (no discount).
    pub cached_input: Option<f64>,
    /// Per input token written to a prompt cache. Default: `input`'s weight.
    pub cache_creation: Option<f64>,
    /// Per reasoning output token. Default: `output`'s weight.
    pub reasoning: Option<f64>,
}

/// A cost configuration as written: a name or weights.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum CostSpec {
    /// `"input"`: every input token, cached or not.
    Input,
    /// `"output"`: every output token, reasoning included.
    Output,
    /// `"total"`: input plus output.
    Total,
    /// An object of weights.
    Weights(WeightsSpec),
}

impl<'de> Deserialize<'de> for CostSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CostSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"input\", \"output\", \"total\" or an object of weights")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CostSpec, E> {
                match v {
                    "input" => Ok(CostSpec::Input),
                    "output" => Ok(CostSpec::Output),
                    "total" => Ok(CostSpec::Total),
                    other => Err(E::unknown_variant(other, &["input", "output", "total"])),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CostSpec, A::Error> {
                WeightsSpec::deserialize(MapAccessDeserializer::new(map)).map(CostSpec::Weights)
            }
        }
        d.deserialize_any(V)
    }
}

/// How many budget tokens a [`Usage`] costs: a weighted sum over the disjoint parts of the
/// usage (uncached input, cached input, cache writes, plain output, reasoning).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cost {
    input: Weight,
    cached_input: Weight,
    cache_creation: Weight,
    output: Weight,
    reasoning: Weight,
}

impl Cost {
    /// Counts input tokens only.
    pub const INPUT: Cost = Cost::uniform(Weight::ONE, Weight::ZERO);
    /// Counts output tokens only.
    pub const OUTPUT: Cost = Cost::uniform(Weight::ZERO, Weight::ONE);
    /// Counts input and output tokens alike.
    pub const TOTAL: Cost = Cost::uniform(Weight::ONE, Weight::ONE);

    const fn uniform(input: Weight, output: Weight) -> Cost {
        Cost {
            input,
            cached_input: input,
            cache_creation: input,
            output,
            reasoning: output,
        }
    }

    /// Validates a configuration.
    ///
    /// # Errors
    /// [`CostError::BadWeight`] naming the first unusable weight, or
    /// [`CostError::NothingCounted`] when all weights are zero.
    pub fn from_spec(spec: &CostSpec) -> Result<Cost, CostError> {
        let weights = match spec {
            CostSpec::Input => return Ok(Cost::INPUT),
            CostSpec::Output => return Ok(Cost::OUTPUT),
            CostSpec::Total => return Ok(Cost::TOTAL),
            CostSpec::Weights(weights) => weights,
        };
        let weight = |field: &'static str, value: Option<f64>, default: Weight| match value {
            None => Ok(default),
            Some(v) => Weight::from_f64(v).map_err(|reason| CostError::BadWeight { field, reason }),
        };
        let input = weight("input", weights.input, Weight::ZERO)?;
        let output = weight("output", weights.output, Weight::ZERO)?;
        let cost = Cost {
            input,
            output,
            cached_input: weight("cached_input", weights.cached_input, input)?,
            cache_creation: weight("cache_creation", weights.cache_creation, input)?,
            reasoning: weight("reasoning", weights.reasoning, output)?,
        };
        let all = [
            cost.input,
            cost.cached_input,
            cost.cache_creation,
            cost.output,
            cost.reasoning,
        ];
        if all.iter().all(|w| *w == Weight::ZERO) {
            return Err(CostError::NothingCounted);
        }
        Ok(cost)
    }

    /// Builds a cost from weights directly (each capped at [`Weight::MAX`]).
    pub fn from_weights(
        input: Weight,
        cached_input: Weight,
        cache_creation: Weight,
        output: Weight,
        reasoning: Weight,
    ) -> Cost {
        let cap = |w: Weight| w.min(Weight::MAX);
        Cost {
            input: cap(input),
            cached_input: cap(cached_input),
            cache_creation: cap(cache_creation),
            output: cap(output),
            reasoning: cap(reasoning),
        }
    }

    /// The budget tokens `usage` costs, rounded up (a fraction of a token is charged as a
    /// whole one, so a non-empty usage with a positive weight never costs 0), saturating at
    /// `u64::MAX`.
    ///
    /// Parts larger than their whole (more cached than total input) are charged as reported:
    /// the whole is treated as at least the sum of its parts.
    pub fn tokens(&self, usage: &Usage) -> u64 {
        let uncached = usage
            .input
            .saturating_sub(usage.cached_input)
            .saturating_sub(usage.cache_creation);
        let plain_output = usage.output.saturating_sub(usage.reasoning);
        let terms = [
            (uncached, self.input),
            (usage.cached_input, self.cached_input),
            (usage.cache_creation, self.cache_creation),
            (plain_output, self.output),
            (usage.reasoning, self.reasoning),
        ];
        let millionths = terms
            .iter()
            .map(|&(count, weight)| u128::from(count).saturating_mul(u128::from(weight.0)))
            .fold(0u128, u128::saturating_add);
        u64::try_from(millionths.div_ceil(u128::from(SCALE))).unwrap_or(u64::MAX)
    }
}

impl TryFrom<&CostSpec> for Cost {
    type Error = CostError;
    fn try_from(spec: &CostSpec) -> Result<Cost, CostError> {
        Cost::from_spec(spec)
    }
}

impl Default for Cost {
    /// [`Cost::TOTAL`].
    fn default() -> Self {
        Cost::TOTAL
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::ToString;

    use super::*;

    fn spec(json: &str) -> CostSpec {
        serde_json::from_str(json).unwrap()
    }

    fn cost(json: &str) -> Result<Cost, CostError> {
        Cost::from_spec(&spec(json))
    }

    const USAGE: Usage = Usage {
        input: 1000,
        output: 200,
        cached_input: 600,
        reasoning: 50,
        cache_creation: 100,
    };

    #[test]
    fn named_costs() {
        assert_eq!(cost(r#""input""#).unwrap().tokens(&USAGE), 1000);
        assert_eq!(cost(r#""output""#).unwrap().tokens(&USAGE), 200);
        assert_eq!(cost(r#""total""#).unwrap().tokens(&USAGE), 1200);
        assert_eq!(Cost::default(), Cost::TOTAL);
        assert_eq!(Cost::TOTAL.tokens(&USAGE), USAGE.total());
    }

    #[test]
    fn weighted_cost_with_cached_input_discounted() {
        let c = cost(r#"{ "input": 1.0, "output": 4.0, "cached_input": 0.5 }"#).unwrap();
        // uncached 300 + cache writes 100 at 1.0, cached 600 at 0.5, output 200 (reasoning included) at 4.
        assert_eq!(c.tokens(&USAGE), 300 + 100 + 300 + 800);
        let c = cost(r#"{ "input": 1, "output": 4, "cached_input": 0.1, "cache_creation": 1.25, "reasoning": 2 }"#).unwrap();
        assert_eq!(c.tokens(&USAGE), 300 + 60 + 125 + 600 + 100);
    }

    #[test]
    fn defaults_follow_input_and_output() {
        let c = cost(r#"{ "output": 1 }"#).unwrap();
        assert_eq!(c, Cost::OUTPUT);
        let c = cost(r#"{ "input": 2 }"#).unwrap();
        assert_eq!(c.tokens(&USAGE), 2000);
    }

    #[test]
    fn fractions_round_up() {
        let c = cost(r#"{ "input": 0.001 }"#).unwrap();
        assert_eq!(
            c.tokens(&Usage {
                input: 1,
                ..Usage::default()
            }),
            1
        );
        assert_eq!(
            c.tokens(&Usage {
                input: 1000,
                ..Usage::default()
            }),
            1
        );
        assert_eq!(
            c.tokens(&Usage {
                input: 1001,
                ..Usage::default()
            }),
            2
        );
        assert_eq!(c.tokens(&Usage::default()), 0);
    }

    #[test]
    fn extremes_saturate() {
        let max = Usage {
            input: u64::MAX,
            output: u64::MAX,
            cached_input: 0,
            reasoning: 0,
            cache_creation: 0,
        };
        assert_eq!(Cost::TOTAL.tokens(&max), u64::MAX);
        let c = cost(r#"{ "input": 1000000, "output": 1000000 }"#).unwrap();
        assert_eq!(c.tokens(&max), u64::MAX);
        let all = Usage {
            input: u64::MAX,
            output: u64::MAX,
            cached_input: u64::MAX,
            reasoning: u64::MAX,
            cache_creation: u64::MAX,
        };
        assert_eq!(c.tokens(&all), u64::MAX);
        let heavy = Cost::from_weights(
            Weight::MAX,
            Weight::MAX,
            Weight::MAX,
            Weight::MAX,
            Weight(u64::MAX),
        );
        assert_eq!(heavy.tokens(&all), u64::MAX);
        assert_eq!(Weight::from_millionths(u64::MAX), Weight::MAX);
    }

    #[test]
    fn parts_larger_than_the_whole_saturate() {
        let odd = Usage {
            input: 10,
            output: 1,
            cached_input: 50,
            reasoning: 9,
            cache_creation: 0,
        };
        let c = cost(r#"{ "input": 1, "output": 1, "cached_input": 0.5 }"#).unwrap();
        assert_eq!(c.tokens(&odd), 25 + 9);
    }

    #[test]
    fn bad_weights_name_the_field() {
        let e = |field, reason| Err(CostError::BadWeight { field, reason });
        assert_eq!(
            cost(r#"{ "input": -1 }"#),
            e("input", WeightError::Negative)
        );
        assert_eq!(
            cost(r#"{ "input": 1, "cached_input": -0.5 }"#),
            e("cached_input", WeightError::Negative)
        );
        assert_eq!(
            cost(r#"{ "output": 1000000.5 }"#),
            e("output", WeightError::TooLarge)
        );
        assert_eq!(
            cost(r#"{ "reasoning": 1e-7 }"#),
            e("reasoning", WeightError::TooPrecise)
        );
        assert_eq!(
            cost(r#"{ "input": 0, "output": 0 }"#),
            Err(CostError::NothingCounted)
        );
        assert_eq!(cost("{}"), Err(CostError::NothingCounted));
        assert_eq!(Weight::from_f64(f64::NAN), Err(WeightError::NotFinite));
        assert_eq!(Weight::from_f64(f64::INFINITY), Err(WeightError::NotFinite));
        assert_eq!(
            CostError::BadWeight {
                field: "cached_input",
                reason: WeightError::Negative
            }
            .to_string(),
            "cached_input: must not be negative"
        );
    }

    #[test]
    fn weights_keep_six_decimals() {
        assert_eq!(Weight::from_f64(0.1), Ok(Weight(100_000)));
        assert_eq!(Weight::from_f64(0.000_001), Ok(Weight(1)));
        assert_eq!(Weight::from_f64(1.234_567), Ok(Weight(1_234_567)));
        assert_eq!(Weight::from_f64(1_000_000.0), Ok(Weight::MAX));
        assert_eq!(Weight::from_f64(-0.0), Ok(Weight::ZERO));
        assert_eq!(Weight::from_f64(0.000_000_5), Err(WeightError::TooPrecise));
    }

    #[test]
    fn config_shape_errors_come_from_serde() {
        let unknown = serde_json::from_str::<CostSpec>(r#"{ "inptu": 1 }"#)
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `inptu`"), "{unknown}");
        let variant = serde_json::from_str::<CostSpec>(r#""everything""#)
            .unwrap_err()
            .to_string();
        assert!(
            variant.contains("unknown variant `everything`"),
            "{variant}"
        );
        assert!(serde_json::from_str::<CostSpec>("1").is_err());
        assert!(serde_json::from_str::<CostSpec>(r#"{ "input": "1" }"#).is_err());
        assert!(serde_json::from_str::<CostSpec>(r#"{ "input": 1, "input": 2 }"#).is_err());
    }
}
