//! Why a policy is refused: the path and the reason, never a bare string.

use alloc::string::String;
use core::fmt;

/// A policy the filter must refuse, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, as a JSON path from the root: `tiers[1].limits[0].requests`; `$` for the whole.
    pub path: String,
    /// Why.
    pub reason: Reason,
}

/// Why a policy is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Not JSON at all.
    InvalidJson {
        /// 1-based.
        line: usize,
        /// 1-based.
        column: usize,
        /// The parser's words.
        detail: String,
    },
    /// A field the policy format does not have.
    UnknownField {
        /// The fields it does have.
        expected: &'static [&'static str],
    },
    /// A required field is missing.
    Missing,
    /// The value has the wrong JSON type.
    WrongType {
        /// What was expected.
        expected: &'static str,
    },
    /// A number that must be positive is zero.
    NotPositive,
    /// A number is above its maximum.
    TooLarge {
        /// The maximum.
        max: u64,
    },
    /// Not one of the accepted words.
    NotOneOf {
        /// The accepted words.
        expected: &'static [&'static str],
    },
    /// An invalid regular expression.
    InvalidRegex {
        /// The regex compiler's words.
        detail: String,
    },
    /// A list that must not be empty is.
    Empty,
    /// A list is longer than allowed.
    TooMany {
        /// The maximum.
        max: usize,
    },
    /// A name that must be unique is repeated.
    Duplicate {
        /// The name.
        name: String,
    },
    /// A name with characters outside `[A-Za-z0-9._-]` or longer than 64.
    BadName,
    /// A header name that is not a lowercase HTTP token.
    BadHeaderName,
    /// A matcher must have exactly one test.
    OneTestRequired,
    /// A field with a value that is wrong for the stated reason.
    Invalid {
        /// Why.
        why: &'static str,
    },
    /// A field whose value a sub-parser refused, in its words.
    Refused {
        /// The sub-parser's words.
        detail: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::InvalidJson {
                line,
                column,
                detail,
            } => write!(f, "invalid JSON at line {line} column {column}: {detail}"),
            Reason::UnknownField { expected } => {
                write!(f, "unknown field, expected one of: {}", expected.join(", "))
            }
            Reason::Missing => f.write_str("required field is missing"),
            Reason::WrongType { expected } => write!(f, "must be {expected}"),
            Reason::NotPositive => f.write_str("must be greater than 0"),
            Reason::TooLarge { max } => write!(f, "must be at most {max}"),
            Reason::NotOneOf { expected } => write!(f, "must be one of: {}", expected.join(", ")),
            Reason::InvalidRegex { detail } => write!(f, "invalid regular expression: {detail}"),
            Reason::Empty => f.write_str("must not be empty"),
            Reason::TooMany { max } => write!(f, "must have at most {max} entries"),
            Reason::Duplicate { name } => write!(f, "duplicate name {name:?}"),
            Reason::BadName => {
                f.write_str("must be 1 to 64 characters of letters, digits, '.', '_' or '-'")
            }
            Reason::BadHeaderName => f.write_str("must be a lowercase HTTP header name"),
            Reason::OneTestRequired => {
                f.write_str("must have exactly one of: present, exact, prefix, regex")
            }
            Reason::Invalid { why } => f.write_str(why),
            Reason::Refused { detail } => f.write_str(detail),
        }
    }
}

impl core::error::Error for ConfigError {}

pub(crate) fn err<T>(path: impl Into<String>, reason: Reason) -> Result<T, ConfigError> {
    Err(ConfigError {
        path: path.into(),
        reason,
    })
}
