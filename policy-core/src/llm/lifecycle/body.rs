//! A bounded copy of a body as it passes.

use alloc::vec::Vec;

/// A copy of a body as it passes, bounded: whole while it fits, then only its last bytes
/// (where every API puts a JSON answer's usage).
#[derive(Debug, Default)]
pub struct BodyCopy {
    bytes: Vec<u8>,
    /// Bytes were dropped from the front.
    pub truncated: bool,
    /// Every byte seen, kept or not.
    pub seen: usize,
}

impl BodyCopy {
    /// Appends `chunk`, keeping at most the last `max` bytes.
    pub fn push(&mut self, chunk: &[u8], max: usize) {
        self.seen = self.seen.saturating_add(chunk.len());
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > max {
            let drop = self.bytes.len() - max;
            self.bytes.drain(..drop);
            self.truncated = true;
        }
    }

    /// The bytes kept.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::BodyCopy;

    #[test]
    fn a_copy_keeps_the_last_bytes_and_counts_them_all() {
        let mut copy = BodyCopy::default();
        copy.push(b"abcd", 6);
        assert_eq!(
            (copy.bytes(), copy.truncated, copy.seen),
            (&b"abcd"[..], false, 4)
        );
        copy.push(b"efgh", 6);
        assert_eq!(
            (copy.bytes(), copy.truncated, copy.seen),
            (&b"cdefgh"[..], true, 8)
        );
    }
}
