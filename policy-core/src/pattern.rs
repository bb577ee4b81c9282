//! Header-value regular expressions whose matching cost is bounded when the policy loads.
//!
//! A regex is run on every request, on a value the client chooses (up to Envoy's header limit,
//! 60 KiB by default). Bounded repetitions make a backtracking-free NFA engine cost
//! `input × program` per match: `[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{1,4096}\.` against 50 KB
//! stalled a worker for seconds. So, like RE2's `max_program_size` in Envoy, a pattern is
//! refused at load when
//! - its program is too large: more than [`MAX_PROGRAM_STATES`] states of its Thompson NFA
//!   (each copy of a bounded repetition counts), or
//! - it cannot be matched in linear time within bounded memory: its whole DFA would exceed
//!   [`MAX_DFA_BYTES`] (overlapping repetitions such as `(a|b)*a(a|b){20}` blow up).
//!
//! What is accepted is matched by that DFA: one table step per input byte, whatever the
//! pattern. Both limits count states and 32-bit table entries, never pointer-sized bytes, so
//! `tollgate-check` (64-bit) and the filter (wasm32) accept exactly the same patterns.
//!
//! The input is bounded too: a value longer than [`MAX_INPUT_BYTES`] never matches a regex test
//! (no real key, token or user agent is that long; reading a prefix could make `$` match at the
//! cut).

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::syntax;
use regex_automata::Input;

/// The most NFA states a pattern may compile to (RE2's program size, in states).
pub const MAX_PROGRAM_STATES: usize = 1024;
/// The most a pattern's DFA may hold, counted as 4 bytes per table entry on every target.
pub const MAX_DFA_BYTES: usize = 256 << 10;
/// Values longer than this never match a regex test.
pub const MAX_INPUT_BYTES: usize = 64 << 10;
/// Memory the NFA compiler may use before giving up: only a safety stop against patterns such as
/// `a{1000}{1000}`, far beyond [`MAX_PROGRAM_STATES`] on every target (an NFA state takes at
/// most a few KiB), so hitting it is reported as the same "too large" refusal.
const NFA_BUILD_BYTES: usize = 16 << 20;

/// A compiled header-value pattern: bytes, ASCII classes, unanchored unless it anchors.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// Boxed: the DFA's header is large and a pattern sits in a small enum of tests.
    dfa: Box<dense::DFA<Vec<u32>>>,
}

/// Why a pattern is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    /// Not a valid regular expression (the parser's one-line reason).
    Syntax(String),
    /// More than [`MAX_PROGRAM_STATES`] program states.
    TooLarge,
    /// Its DFA would exceed [`MAX_DFA_BYTES`].
    TooComplex,
    /// Another failure of the regex compiler, in its words.
    Other(String),
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Syntax(why) => write!(f, "invalid regular expression: {why}"),
            PatternError::TooLarge => write!(
                f,
                "regular expression too large: it compiles to more than {MAX_PROGRAM_STATES} \
                 states (each copy of a bounded repetition such as {{1,4096}} counts); use `+` or \
                 a smaller bound"
            ),
            PatternError::TooComplex => write!(
                f,
                "regular expression too complex to match in linear time: its automaton would \
                 exceed {} KiB (overlapping repetitions); simplify it",
                MAX_DFA_BYTES >> 10
            ),
            PatternError::Other(why) => write!(f, "invalid regular expression: {why}"),
        }
    }
}

impl Pattern {
    /// Compiles `pattern`, or says why it is refused.
    pub fn new(pattern: &str) -> Result<Pattern, PatternError> {
        let config = syntax::Config::new().unicode(false).utf8(false);
        let hir = syntax::parse_with(pattern, &config).map_err(|e| {
            let text = e.to_string();
            PatternError::Syntax(match text.lines().find_map(|l| l.strip_prefix("error: ")) {
                Some(line) => line.to_owned(),
                None => text.replace('\n', " "),
            })
        })?;
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(NFA_BUILD_BYTES)),
            )
            .build_from_hir(&hir)
            .map_err(|e| {
                if e.size_limit().is_some() {
                    PatternError::TooLarge
                } else {
                    PatternError::Other(e.to_string())
                }
            })?;
        if nfa.states().len() > MAX_PROGRAM_STATES {
            return Err(PatternError::TooLarge);
        }
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Unanchored)
                    .accelerate(false)
                    .dfa_size_limit(Some(MAX_DFA_BYTES))
                    .determinize_size_limit(None),
            )
            .build_from_nfa(&nfa)
            .map_err(|e| {
                if e.is_size_limit_exceeded() {
                    PatternError::TooComplex
                } else {
                    PatternError::Other(e.to_string())
                }
            })?;
        Ok(Pattern { dfa: Box::new(dfa) })
    }

    /// Whether `value` holds a match. Linear in `value`; false beyond [`MAX_INPUT_BYTES`].
    pub fn is_match(&self, value: &[u8]) -> bool {
        if value.len() > MAX_INPUT_BYTES {
            return false;
        }
        // With ASCII classes there is no quit byte, so a search cannot fail; if it ever did,
        // "no match" is the answer that never grants a tier by mistake.
        matches!(
            self.dfa.try_search_fwd(&Input::new(value).earliest(true)),
            Ok(Some(_))
        )
    }

    /// Bytes of the compiled DFA (4 per table entry).
    pub fn size(&self) -> usize {
        self.dfa.memory_usage()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn matches_like_an_unanchored_byte_regex() {
        let p = Pattern::new("^premium-").unwrap();
        assert!(p.is_match(b"premium-123"));
        assert!(!p.is_match(b"x-premium-123"));
        let p = Pattern::new(r"bot|crawler").unwrap();
        assert!(p.is_match(b"Mozilla/5.0 (compatible; Googlebot/2.1)"));
        assert!(!p.is_match(b"Mozilla/5.0"));
        let p = Pattern::new(r"^[0-9a-f]{8}$").unwrap();
        assert!(p.is_match(b"0123abcd"));
        assert!(!p.is_match(b"0123abcd0"));
        let p = Pattern::new(r"\xff").unwrap();
        assert!(p.is_match(&[b'a', 0xff]), "raw bytes, not UTF-8");
        let p = Pattern::new(r"(?i)^bearer \w+$").unwrap();
        assert!(p.is_match(b"Bearer abc_1"));
        assert!(Pattern::new("").unwrap().is_match(b""));
    }

    #[test]
    fn the_jwt_shaped_pattern_is_refused_as_too_large() {
        let e = Pattern::new(r"[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{1,4096}\.").unwrap_err();
        assert_eq!(e, PatternError::TooLarge);
        assert!(
            e.to_string().starts_with("regular expression too large"),
            "{e}"
        );
        // Far beyond the limit: refused by the same rule, quickly, without building it.
        assert_eq!(
            Pattern::new("a{1000}{1000}{1000}").unwrap_err(),
            PatternError::TooLarge
        );
    }

    #[test]
    fn patterns_that_blow_up_a_dfa_are_refused_as_too_complex() {
        assert_eq!(
            Pattern::new(r"(a|b)*a(a|b){20}").unwrap_err(),
            PatternError::TooComplex
        );
    }

    #[test]
    fn a_value_beyond_the_input_bound_never_matches() {
        let p = Pattern::new("x").unwrap();
        let mut v = alloc::vec![b'x'; MAX_INPUT_BYTES];
        assert!(p.is_match(&v));
        v.push(b'x');
        assert!(!p.is_match(&v));
    }

    #[test]
    fn syntax_errors_keep_the_parsers_reason() {
        assert_eq!(
            Pattern::new("(").unwrap_err().to_string(),
            "invalid regular expression: unclosed group"
        );
    }
}
