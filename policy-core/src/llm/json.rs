//! Small serde building blocks shared by the LLM parsers.
//!
//! Bodies come from the network, so every value here is read with a visitor that *never* fails
//! on a wrong type: the problem is kept as a value ([`FieldError`]) and the caller, which knows
//! the field's name, turns it into a typed error. Serde's own errors are strings; ours name the
//! field and the reason without allocating. Unknown content is skipped with [`IgnoredAny`](serde::de::IgnoredAny), which
//! allocates nothing. Our visitors nest a fixed few levels deep and serde_json skips ignored
//! values iteratively (and refuses nesting past 128 where it does recurse), so hostile nesting
//! costs time linear in its size and no stack.

use core::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Why one JSON value could not be used as the number, flag or string the field needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldError {
    /// The value has the wrong JSON type (a string where a count belongs, say).
    WrongType,
    /// A count below zero.
    Negative,
    /// A number with a fraction or an exponent (`1.5`, `1e3`): counts are whole numbers.
    NotAnInteger,
    /// A whole number that does not fit in a `u64`; refused rather than wrapped or clamped.
    TooLarge,
    /// The key appears twice in one object. Parsers disagree on which copy wins, so an
    /// ambiguous body is refused rather than read differently from the upstream.
    Duplicate,
    /// A string longer than the field allows.
    TooLong,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldError::WrongType => "has the wrong type",
            FieldError::Negative => "must not be negative",
            FieldError::NotAnInteger => "must be a whole number",
            FieldError::TooLarge => "is too large",
            FieldError::Duplicate => "appears more than once",
            FieldError::TooLong => "is too long",
        })
    }
}

/// `2^64` as an `f64`: the first float that no `u64` can hold.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Writes the [`Visitor`] methods of a lenient value: each JSON type named maps to one value
/// instead of an error, a compound one after it has been skipped (so the parser stays in step).
/// Every visitor in the LLM parsers is written with it; a visitor spells out by hand only the
/// types it actually reads.
///
/// - `lenient!(expecting "a token count");` writes `expecting`;
/// - `lenient!(VALUE => KIND...);` writes the methods of each `KIND` to return `VALUE`:
///   `null` (`visit_unit` and `visit_none`; `visit_some` reads the inner value with the same
///   visitor), `bool`, `numbers` (`visit_u64`, `visit_i64`, `visit_f64`), `str`, `map`, `seq`,
///   and `scalars` (`bool numbers str`).
///
/// `VALUE` is evaluated in each method, so it may be any expression of the visitor's `Value`
/// type (`Self::wrong()`, say). The visitor's impl must name its lifetime `'de`.
macro_rules! lenient {
    (expecting $what:literal) => {
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str($what)
        }
    };
    ($value:expr => $($kind:ident)+) => {
        $(lenient!(@$kind $value);)+
    };
    (@null $value:expr) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_some<D: serde::de::Deserializer<'de>>(
            self,
            d: D,
        ) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
    (@scalars $value:expr) => {
        lenient!(@bool $value);
        lenient!(@numbers $value);
        lenient!(@str $value);
    };
    (@bool $value:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@numbers $value:expr) => {
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@str $value:expr) => {
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@map $value:expr) => {
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            serde::de::Visitor::visit_map(serde::de::IgnoredAny, map).map(|_| $value)
        }
    };
    (@seq $value:expr) => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            serde::de::Visitor::visit_seq(serde::de::IgnoredAny, seq).map(|_| $value)
        }
    };
}
pub(crate) use lenient;

/// A JSON value read as a token count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// `null`: treated as absent.
    Null,
    /// A whole number in `0..=u64::MAX`.
    Int(u64),
    /// Anything else, with the reason.
    Bad(FieldError),
}

impl Count {
    /// Stores an accepted count in `slot`, or returns why not. `null` leaves `slot` alone.
    pub(crate) fn store(self, slot: &mut Option<u64>) -> Result<(), FieldError> {
        match self {
            Count::Null => Ok(()),
            Count::Int(n) => {
                *slot = Some(n);
                Ok(())
            }
            Count::Bad(e) => Err(e),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            lenient!(expecting "a token count");
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count::Int(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(u64::try_from(v).map_or(Count::Bad(FieldError::Negative), Count::Int))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Count, E> {
                Ok(u64::try_from(v).map_or(Count::Bad(FieldError::TooLarge), Count::Int))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Count, E> {
                Ok(match u64::try_from(v) {
                    Ok(n) => Count::Int(n),
                    Err(_) if v < 0 => Count::Bad(FieldError::Negative),
                    Err(_) => Count::Bad(FieldError::TooLarge),
                })
            }
            // serde_json hands integers beyond the u64/i64 range over as floats.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                Ok(Count::Bad(if v < 0.0 {
                    FieldError::Negative
                } else if v >= TWO_POW_64 {
                    FieldError::TooLarge
                } else {
                    FieldError::NotAnInteger
                }))
            }
            lenient!(Count::Null => null);
            lenient!(Count::Bad(FieldError::WrongType) => bool str map seq);
        }
        d.deserialize_any(V)
    }
}

/// A JSON value read as a flag (`true`/`false`; `null` counts as absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flag {
    Null,
    Bool(bool),
    Bad(FieldError),
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            lenient!(expecting "a boolean");
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag::Bool(v))
            }
            lenient!(Flag::Null => null);
            lenient!(Flag::Bad(FieldError::WrongType) => numbers str map seq);
        }
        d.deserialize_any(V)
    }
}

/// The length in bytes (UTF-8, after JSON unescaping) of a string value; anything that is not
/// a string counts as empty. Used to estimate generated tokens, where being lenient about
/// shapes a server may vary (content as a list of parts, say) beats rejecting the event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TextLen(pub u64);

/// A visitor that measures strings and skips everything else; reused by the compound
/// text-measuring types in `sse`.
pub(crate) struct TextLenVisitor;

impl<'de> Visitor<'de> for TextLenVisitor {
    type Value = TextLen;
    lenient!(expecting "text");
    fn visit_str<E: de::Error>(self, v: &str) -> Result<TextLen, E> {
        Ok(TextLen(u64::try_from(v.len()).unwrap_or(u64::MAX)))
    }
    lenient!(TextLen(0) => null bool numbers map seq);
}

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextLenVisitor)
    }
}

/// Declares a closed set of object keys read without allocating: every other key becomes
/// `Other`, whose value the caller skips. `bit()` gives each key a flag for duplicate checks.
macro_rules! keys {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $name {
            $($variant,)+
            Other,
        }

        impl $name {
            /// A distinct bit per known key (`Other` has none), for duplicate detection.
            pub(crate) fn bit(self) -> u32 {
                match self {
                    $name::Other => 0,
                    known => 1u32.checked_shl(known as u32).unwrap_or(0),
                }
            }
        }

        impl<'de> serde::de::Deserialize<'de> for $name {
            fn deserialize<D: serde::de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str("an object key")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok(match v {
                            $($text => $name::$variant,)+
                            _ => $name::Other,
                        })
                    }
                }
                d.deserialize_identifier(V)
            }
        }
    };
}
pub(crate) use keys;

/// Remembers which known keys an object has shown, to refuse duplicates.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Seen(u32);

impl Seen {
    /// Records `bit`; `false` if it had been seen already. `0` (an unknown key) is never a
    /// duplicate: unknown keys are skipped, so their repetition cannot change our reading.
    pub(crate) fn first(&mut self, bit: u32) -> bool {
        let fresh = self.0 & bit == 0;
        self.0 |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn count(json: &str) -> Count {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn counts_accept_the_whole_u64_range_and_nothing_else() {
        assert_eq!(count("0"), Count::Int(0));
        assert_eq!(count("18446744073709551615"), Count::Int(u64::MAX));
        assert_eq!(
            count("18446744073709551616"),
            Count::Bad(FieldError::TooLarge)
        );
        assert_eq!(count("1e30"), Count::Bad(FieldError::TooLarge));
        assert_eq!(count("-1"), Count::Bad(FieldError::Negative));
        assert_eq!(
            count("-18446744073709551616"),
            Count::Bad(FieldError::Negative)
        );
        assert_eq!(count("1.5"), Count::Bad(FieldError::NotAnInteger));
        assert_eq!(count("3.0"), Count::Bad(FieldError::NotAnInteger));
        assert_eq!(count("1e3"), Count::Bad(FieldError::NotAnInteger));
        assert_eq!(count("null"), Count::Null);
        assert_eq!(count("\"12\""), Count::Bad(FieldError::WrongType));
        assert_eq!(count("true"), Count::Bad(FieldError::WrongType));
        assert_eq!(count("[1,[2]]"), Count::Bad(FieldError::WrongType));
        assert_eq!(
            count("{\"a\":{\"b\":1}}"),
            Count::Bad(FieldError::WrongType)
        );
    }

    #[test]
    fn negative_zero_is_zero_or_refused_but_never_wraps() {
        let c = count("-0");
        assert!(
            c == Count::Int(0) || c == Count::Bad(FieldError::NotAnInteger),
            "{c:?}"
        );
    }

    #[test]
    fn text_len_measures_unescaped_utf8_and_ignores_other_shapes() {
        let t: TextLen = serde_json::from_str(r#""h\u00e9\n""#).unwrap();
        assert_eq!(t, TextLen(4));
        let t: TextLen = serde_json::from_str(r#"[{"text":"abc"}]"#).unwrap();
        assert_eq!(t, TextLen(0));
    }
}
