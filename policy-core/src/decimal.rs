//! Integers as decimal text without `core::fmt`: header values, store keys and refusal bodies are
//! written on the request path, and the formatting machinery (a `Formatter`, a `dyn Write`, the
//! padding logic) costs more than the digits themselves. Digits are produced right to left into
//! a stack buffer, then appended in one copy.

use alloc::string::String;

/// Enough for `u64::MAX` (20 digits).
pub const MAX_DIGITS: usize = 20;

/// `n`'s decimal digits, written into `buf` (no allocation: for text built on the stack, such as
/// a store key).
pub fn digits(mut n: u64, buf: &mut [u8; MAX_DIGITS]) -> &[u8] {
    let mut start = MAX_DIGITS;
    while let Some(next) = start.checked_sub(1) {
        start = next;
        if let Some(d) = buf.get_mut(start) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.get(start..).unwrap_or_default()
}

/// `n` in decimal, held in place: a header value written without allocating, borrowed as a
/// `&str` for as long as it lives.
#[derive(Clone, Copy, Debug)]
pub struct Digits {
    buf: [u8; MAX_DIGITS],
    start: u8,
}

impl Digits {
    /// `n`'s digits.
    pub fn of(n: u64) -> Digits {
        let mut buf = [b'0'; MAX_DIGITS];
        let start = MAX_DIGITS - digits(n, &mut buf).len();
        Digits {
            buf,
            start: start as u8,
        }
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        let written = self.buf.get(usize::from(self.start)..).unwrap_or_default();
        // ASCII digits only: always valid UTF-8.
        core::str::from_utf8(written).unwrap_or_default()
    }
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, n: u64) {
    push_padded(out, n, 0);
}

/// Appends `n` in decimal, zero-padded on the left to at least `width` digits (as
/// `format!("{n:0width$}")` would).
pub fn push_padded(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; MAX_DIGITS];
    let mut start = MAX_DIGITS;
    while let Some(next) = start.checked_sub(1) {
        start = next;
        if let Some(d) = digits.get_mut(start) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (MAX_DIGITS - start)..width {
        out.push('0');
    }
    let written = digits.get(start..).unwrap_or_default();
    // ASCII digits only: always valid UTF-8.
    out.push_str(core::str::from_utf8(written).unwrap_or_default());
}

/// `n` in decimal, as a new string (a header value).
pub fn number(n: u64) -> String {
    let mut s = String::with_capacity(MAX_DIGITS);
    push_u64(&mut s, n);
    s
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    /// Every digit count and each side of every power of ten, the extremes, and a spread.
    fn samples() -> Vec<u64> {
        let mut out = Vec::from([0, 1, 7, 42, u64::MAX, u64::MAX - 1, u64::MAX / 10]);
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            out.extend([p - 1, p, p + 1, next - 1]);
            p = next;
        }
        out.extend([p - 1, p, p + 1]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(x >> (x % 64));
        }
        out
    }

    #[test]
    fn numbers_are_written_as_core_fmt_writes_them() {
        for n in samples() {
            let mut s = String::from("x=");
            push_u64(&mut s, n);
            assert_eq!(s, format!("x={n}"));
            assert_eq!(number(n), format!("{n}"));
            assert_eq!(digits(n, &mut [0; MAX_DIGITS]), format!("{n}").as_bytes());
            assert_eq!(Digits::of(n).as_str(), format!("{n}"));
        }
    }

    #[test]
    fn padding_matches_core_fmt_for_every_width() {
        for n in samples() {
            for width in 0..=22 {
                let mut s = String::new();
                push_padded(&mut s, n, width);
                assert_eq!(s, format!("{n:0width$}"), "{n} to {width}");
            }
        }
    }
}
