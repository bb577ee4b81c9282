//! Reading a `usage` object, and a whole response body down to it, with serde: the counts the
//! module docs of [`super`] list, each refused with the field's path when it is not a whole
//! number, a details object reduced to the one count wanted from it, a key seen twice refused.

use serde::de::{Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::RawUsage;
use crate::llm::gemini::UsageMetadata;
use crate::llm::json::{keys, lenient, Count, FieldError, Seen};
use crate::llm::ollama::ollama_usage;

/// What a `usage` value turned out to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum UsageValue {
    /// Missing or `null`, or an object with no count in it.
    #[default]
    Absent,
    /// An object with at least one count.
    Present(RawUsage),
    /// A field that is not a count; the first one found.
    Bad {
        field: &'static str,
        reason: FieldError,
    },
}

keys!(
    /// The keys of a `usage` object that carry counts.
    UsageKey {
        PromptTokens = "prompt_tokens",
        CompletionTokens = "completion_tokens",
        TotalTokens = "total_tokens",
        InputTokens = "input_tokens",
        OutputTokens = "output_tokens",
        CacheReadInputTokens = "cache_read_input_tokens",
        CacheCreationInputTokens = "cache_creation_input_tokens",
        PromptTokensDetails = "prompt_tokens_details",
        CompletionTokensDetails = "completion_tokens_details",
        InputTokensDetails = "input_tokens_details",
        OutputTokensDetails = "output_tokens_details",
        InputTokensCamel = "inputTokens",
        OutputTokensCamel = "outputTokens",
        TotalTokensCamel = "totalTokens",
        CacheReadInputTokensCamel = "cacheReadInputTokens",
        CacheWriteInputTokens = "cacheWriteInputTokens",
    }
);

impl UsageKey {
    /// The key Bedrock's camelCase name stands for: `inputTokens` has Anthropic's meaning
    /// (the tokens neither read from nor written to the cache: Bedrock's `totalTokens` is the
    /// sum of all four counts), so it lands where `input_tokens` does. One object naming a
    /// count both ways is a duplicate.
    fn canonical(self) -> UsageKey {
        match self {
            UsageKey::InputTokensCamel => UsageKey::InputTokens,
            UsageKey::OutputTokensCamel => UsageKey::OutputTokens,
            UsageKey::TotalTokensCamel => UsageKey::TotalTokens,
            UsageKey::CacheReadInputTokensCamel => UsageKey::CacheReadInputTokens,
            UsageKey::CacheWriteInputTokens => UsageKey::CacheCreationInputTokens,
            other => other,
        }
    }
}

keys!(
    /// The keys of a `*_details` object that we read.
    DetailKey {
        CachedTokens = "cached_tokens",
        ReasoningTokens = "reasoning_tokens",
    }
);

/// Records the first problem met in an object while the rest of it is still consumed.
struct FirstBad(Option<(&'static str, FieldError)>);

impl FirstBad {
    fn note(&mut self, field: &'static str, result: Result<(), FieldError>) {
        if let (None, Err(reason)) = (self.0, result) {
            self.0 = Some((field, reason));
        }
    }
}

impl<'de> Deserialize<'de> for UsageValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UsageVisitor)
    }
}

struct UsageVisitor;

impl UsageVisitor {
    fn wrong_type() -> UsageValue {
        UsageValue::Bad {
            field: "usage",
            reason: FieldError::WrongType,
        }
    }
}

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = UsageValue;

    lenient!(expecting "a usage object");
    lenient!(UsageValue::Absent => null);
    lenient!(Self::wrong_type() => scalars seq);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UsageValue, A::Error> {
        let mut raw = RawUsage::default();
        let mut seen = Seen::default();
        let mut bad = FirstBad(None);
        while let Some(named) = map.next_key::<UsageKey>()? {
            let key = named.canonical();
            if !seen.first(key.bit()) {
                map.next_value::<IgnoredAny>()?;
                bad.note(usage_key_name(named), Err(FieldError::Duplicate));
                continue;
            }
            match key {
                UsageKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                UsageKey::PromptTokensDetails
                | UsageKey::InputTokensDetails
                | UsageKey::CompletionTokensDetails
                | UsageKey::OutputTokensDetails => {
                    let cached = matches!(
                        key,
                        UsageKey::PromptTokensDetails | UsageKey::InputTokensDetails
                    );
                    let want = if cached {
                        DetailKey::CachedTokens
                    } else {
                        DetailKey::ReasoningTokens
                    };
                    let detail = map.next_value_seed(DetailSeed(want))?;
                    if key == UsageKey::InputTokensDetails && detail.object {
                        raw.openai_details = true;
                    }
                    // Chat and Responses name the same count differently; one body never
                    // carries both, and if it did the later one would win.
                    let slot = if cached {
                        &mut raw.cached_tokens
                    } else {
                        &mut raw.reasoning_tokens
                    };
                    let result = detail.count.map(|count| {
                        if count.is_some() {
                            *slot = count;
                        }
                    });
                    let field = if detail.problem_is_container {
                        usage_key_name(key)
                    } else {
                        match key {
                            UsageKey::PromptTokensDetails => {
                                "usage.prompt_tokens_details.cached_tokens"
                            }
                            UsageKey::InputTokensDetails => {
                                "usage.input_tokens_details.cached_tokens"
                            }
                            UsageKey::CompletionTokensDetails => {
                                "usage.completion_tokens_details.reasoning_tokens"
                            }
                            _ => "usage.output_tokens_details.reasoning_tokens",
                        }
                    };
                    bad.note(field, result);
                }
                plain => {
                    let slot = match plain {
                        UsageKey::PromptTokens => &mut raw.prompt_tokens,
                        UsageKey::CompletionTokens => &mut raw.completion_tokens,
                        UsageKey::TotalTokens => &mut raw.total_tokens,
                        UsageKey::InputTokens => &mut raw.input_tokens,
                        UsageKey::OutputTokens => &mut raw.output_tokens,
                        UsageKey::CacheReadInputTokens => &mut raw.cache_read_input_tokens,
                        _ => &mut raw.cache_creation_input_tokens,
                    };
                    let result = map.next_value::<Count>()?.store(slot);
                    bad.note(usage_key_name(named), result);
                }
            }
        }
        Ok(match bad.0 {
            Some((field, reason)) => UsageValue::Bad { field, reason },
            None if raw.is_empty() => UsageValue::Absent,
            None => UsageValue::Present(raw),
        })
    }
}

/// The error path of each count key.
fn usage_key_name(key: UsageKey) -> &'static str {
    match key {
        UsageKey::PromptTokens => "usage.prompt_tokens",
        UsageKey::CompletionTokens => "usage.completion_tokens",
        UsageKey::TotalTokens => "usage.total_tokens",
        UsageKey::InputTokens => "usage.input_tokens",
        UsageKey::OutputTokens => "usage.output_tokens",
        UsageKey::CacheReadInputTokens => "usage.cache_read_input_tokens",
        UsageKey::CacheCreationInputTokens => "usage.cache_creation_input_tokens",
        UsageKey::PromptTokensDetails => "usage.prompt_tokens_details",
        UsageKey::CompletionTokensDetails => "usage.completion_tokens_details",
        UsageKey::InputTokensDetails => "usage.input_tokens_details",
        UsageKey::OutputTokensDetails => "usage.output_tokens_details",
        UsageKey::InputTokensCamel => "usage.inputTokens",
        UsageKey::OutputTokensCamel => "usage.outputTokens",
        UsageKey::TotalTokensCamel => "usage.totalTokens",
        UsageKey::CacheReadInputTokensCamel => "usage.cacheReadInputTokens",
        UsageKey::CacheWriteInputTokens => "usage.cacheWriteInputTokens",
        UsageKey::Other => "usage",
    }
}

/// One `*_details` object, reduced to the single count we want from it.
struct Detail {
    /// The count, if present; the error if it (or the object itself) is malformed.
    count: Result<Option<u64>, FieldError>,
    /// The error concerns the details value itself rather than the count inside it.
    problem_is_container: bool,
    /// The value was an object (even an empty one).
    object: bool,
}

/// Reads a details object looking for one key.
struct DetailSeed(DetailKey);

impl<'de> DeserializeSeed<'de> for DetailSeed {
    type Value = Detail;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Detail, D::Error> {
        d.deserialize_any(self)
    }
}

impl DetailSeed {
    fn container(reason: Option<FieldError>) -> Detail {
        Detail {
            count: reason.map_or(Ok(None), Err),
            problem_is_container: true,
            object: false,
        }
    }
}

impl<'de> Visitor<'de> for DetailSeed {
    type Value = Detail;

    lenient!(expecting "a token details object");
    lenient!(Self::container(None) => null);
    lenient!(Self::container(Some(FieldError::WrongType)) => scalars seq);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Detail, A::Error> {
        let mut count: Result<Option<u64>, FieldError> = Ok(None);
        let mut seen = Seen::default();
        while let Some(key) = map.next_key::<DetailKey>()? {
            if key != self.0 {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if !seen.first(key.bit()) {
                map.next_value::<IgnoredAny>()?;
                if count.is_ok() {
                    count = Err(FieldError::Duplicate);
                }
                continue;
            }
            let mut slot = None;
            let stored = map.next_value::<Count>()?.store(&mut slot);
            if count.is_ok() {
                count = stored.map(|()| slot);
            }
        }
        Ok(Detail {
            count,
            problem_is_container: false,
            object: true,
        })
    }
}

keys!(
    /// The top-level keys of a response body we read: `usage` (OpenAI, Anthropic),
    /// `usageMetadata` (Gemini), `prompt_eval_count` and `eval_count` (Ollama).
    EnvelopeKey {
        Usage = "usage",
        UsageMetadata = "usageMetadata",
        PromptEvalCount = "prompt_eval_count",
        EvalCount = "eval_count",
    }
);

/// Merges the usage values a body holds (one per API's field): the first problem wins, then
/// the counts of every present one.
pub(crate) fn merge_values(values: impl IntoIterator<Item = UsageValue>) -> UsageValue {
    let mut out = UsageValue::Absent;
    for value in values {
        out = match (out, value) {
            (bad @ UsageValue::Bad { .. }, _) | (_, bad @ UsageValue::Bad { .. }) => bad,
            (UsageValue::Absent, v) | (v, UsageValue::Absent) => v,
            (UsageValue::Present(mut a), UsageValue::Present(b)) => {
                a.merge(&b);
                UsageValue::Present(a)
            }
        };
    }
    out
}

/// A whole response body, reduced to its usage.
pub(super) struct Envelope(pub(super) UsageValue);

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            lenient!(expecting "a JSON document");
            // A document that is not an object has no usage; that is not a syntax error.
            lenient!(Envelope(UsageValue::Absent) => null scalars seq);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut usage = UsageValue::Absent;
                let mut metadata = UsageValue::Absent;
                let (mut prompt_eval, mut eval) = (None, None);
                let mut seen = Seen::default();
                let mut duplicate = None;
                while let Some(key) = map.next_key::<EnvelopeKey>()? {
                    if !seen.first(key.bit()) {
                        map.next_value::<IgnoredAny>()?;
                        duplicate = duplicate.or(Some(match key {
                            EnvelopeKey::UsageMetadata => "usageMetadata",
                            EnvelopeKey::PromptEvalCount => "prompt_eval_count",
                            EnvelopeKey::EvalCount => "eval_count",
                            _ => "usage",
                        }));
                        continue;
                    }
                    match key {
                        EnvelopeKey::Usage => usage = map.next_value()?,
                        EnvelopeKey::UsageMetadata => {
                            metadata = map.next_value::<UsageMetadata>()?.0;
                        }
                        EnvelopeKey::PromptEvalCount => prompt_eval = Some(map.next_value()?),
                        EnvelopeKey::EvalCount => eval = Some(map.next_value()?),
                        EnvelopeKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if let Some(field) = duplicate {
                    return Ok(Envelope(UsageValue::Bad {
                        field,
                        reason: FieldError::Duplicate,
                    }));
                }
                Ok(Envelope(merge_values([
                    usage,
                    metadata,
                    ollama_usage(prompt_eval, eval),
                ])))
            }
        }
        d.deserialize_any(V)
    }
}
