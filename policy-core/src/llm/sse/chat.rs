//! Generated text in OpenAI chat and legacy completions chunks, measured without collecting it:
//! `choices[].delta.{content, reasoning_content, reasoning, refusal}`, tool-call names and
//! arguments (`choices[].delta.tool_calls[].function`), and legacy `choices[].text`.

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use crate::llm::json::{lenient, TextLen};

/// Generated text in `choices[]`: chat's `delta` and legacy completions' `text`, summed over
/// the choices without collecting them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ChoicesText(pub(super) u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct Choice {
    delta: Option<ChatDelta>,
    text: TextLen,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct ChatDelta {
    content: TextLen,
    /// DeepSeek and vLLM reasoning models.
    reasoning_content: TextLen,
    /// OpenRouter and some other OpenAI-compatible servers.
    reasoning: TextLen,
    refusal: TextLen,
    tool_calls: ToolCallsText,
}

/// `tool_calls[].function.{name, arguments}`, summed.
#[derive(Clone, Copy, Debug, Default)]
struct ToolCallsText(u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct ToolCall {
    function: Option<ToolFunction>,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct ToolFunction {
    name: TextLen,
    arguments: TextLen,
}

/// Sums a text measure over a JSON array; any other shape counts as no text.
struct SumSeq<T>(core::marker::PhantomData<T>);

trait Measured {
    fn bytes(&self) -> u64;
}

impl Measured for Choice {
    fn bytes(&self) -> u64 {
        let delta = self.delta.as_ref().map_or(0, |d| {
            d.content
                .0
                .saturating_add(d.reasoning_content.0)
                .saturating_add(d.reasoning.0)
                .saturating_add(d.refusal.0)
                .saturating_add(d.tool_calls.0)
        });
        delta.saturating_add(self.text.0)
    }
}

impl Measured for ToolCall {
    fn bytes(&self) -> u64 {
        self.function
            .as_ref()
            .map_or(0, |f| f.name.0.saturating_add(f.arguments.0))
    }
}

impl<'de, T: Deserialize<'de> + Measured> Visitor<'de> for SumSeq<T> {
    type Value = u64;
    lenient!(expecting "an array");
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut sum = 0u64;
        while let Some(item) = seq.next_element::<T>()? {
            sum = sum.saturating_add(item.bytes());
        }
        Ok(sum)
    }
    lenient!(0 => null scalars map);
}

impl<'de> Deserialize<'de> for ChoicesText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SumSeq::<Choice>(core::marker::PhantomData))
            .map(ChoicesText)
    }
}

impl<'de> Deserialize<'de> for ToolCallsText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SumSeq::<ToolCall>(core::marker::PhantomData))
            .map(ToolCallsText)
    }
}
