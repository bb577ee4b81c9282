//! Generated text in a `delta`: Anthropic's `content_block_delta.delta` (an object holding
//! `text`, `thinking` or a tool's `partial_json`) or an OpenAI Responses `*.delta` (a string).

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use crate::llm::json::{lenient, TextLen, TextLenVisitor};

/// Anthropic's `content_block_delta.delta` (text, thinking or tool input), or a Responses
/// delta string.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DeltaText(pub(super) u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct AnthropicDelta {
    text: TextLen,
    thinking: TextLen,
    partial_json: TextLen,
}

impl<'de> Deserialize<'de> for DeltaText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DeltaText;
            lenient!(expecting "a delta");
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DeltaText, A::Error> {
                let delta = AnthropicDelta::deserialize(MapAccessDeserializer::new(map))?;
                Ok(DeltaText(
                    delta
                        .text
                        .0
                        .saturating_add(delta.thinking.0)
                        .saturating_add(delta.partial_json.0),
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeltaText, E> {
                TextLenVisitor.visit_str(v).map(|t| DeltaText(t.0))
            }
            lenient!(DeltaText(0) => null bool numbers seq);
        }
        d.deserialize_any(V)
    }
}
