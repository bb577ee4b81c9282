//! A set's store key, built on the stack.
//!
//! The key (the table's prefix, then the set number in decimal) is needed on every decision; a
//! `String` for it was one allocation per request. Prefixes are `tollgate/<kind>/<tier name>/…`,
//! so all but very long tier names fit [`INLINE`] bytes; a longer one falls back to a `String`
//! (the same key, one allocation).

use alloc::string::String;

use crate::decimal::{digits, MAX_DIGITS};

/// Bytes of a key kept on the stack: a prefix of up to `INLINE - 10` bytes and any `u32`, so a
/// tier name of up to 42 bytes (`tollgate/r/<name>/`). 64 rather than 128: a stack array is
/// zeroed before use, and in the Wasm guest each byte of it cost two operators per decision.
pub const INLINE: usize = 64;

/// A store key: `prefix` followed by the set number.
#[derive(Clone, Debug)]
pub struct StoreKey(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Inline { bytes: [u8; INLINE], len: usize },
    Heap(String),
}

impl StoreKey {
    /// `prefix` followed by `set` in decimal.
    pub fn new(prefix: &str, set: u32) -> StoreKey {
        let mut number = [0u8; MAX_DIGITS];
        let number = digits(u64::from(set), &mut number);
        let len = prefix.len() + number.len();
        let mut bytes = [0u8; INLINE];
        match bytes
            .get_mut(..len)
            .and_then(|dst| dst.split_at_mut_checked(prefix.len()))
        {
            Some((head, tail)) => {
                head.copy_from_slice(prefix.as_bytes());
                tail.copy_from_slice(number);
                StoreKey(Repr::Inline { bytes, len })
            }
            None => {
                let mut key = String::with_capacity(len);
                key.push_str(prefix);
                key.extend(number.iter().map(|&d| char::from(d)));
                StoreKey(Repr::Heap(key))
            }
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // A `str` prefix and ASCII digits: always UTF-8.
            Repr::Inline { bytes, len } => bytes
                .get(..*len)
                .and_then(|b| core::str::from_utf8(b).ok())
                .unwrap_or_default(),
            Repr::Heap(key) => key,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use alloc::format;

    #[test]
    fn a_key_is_the_prefix_and_the_set_number_whatever_the_prefix_length() {
        let lengths = [
            0,
            1,
            INLINE - 11,
            INLINE - 10,
            INLINE - 1,
            INLINE,
            INLINE + 1,
            300,
        ];
        for (prefix_len, fill) in lengths.into_iter().flat_map(|n| [(n, "t/"), (n, "é/")]) {
            let prefix: String = fill.chars().cycle().take(prefix_len).collect();
            for set in [0, 9, 10, 12_345, u32::MAX] {
                assert_eq!(
                    StoreKey::new(&prefix, set).as_str(),
                    format!("{prefix}{set}"),
                    "{prefix_len} {set}"
                );
            }
        }
    }
}
