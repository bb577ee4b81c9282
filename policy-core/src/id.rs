//! A caller's identity bytes, kept inline when short.
//!
//! Every decision derives the caller's identity (a header value trimmed and case-folded, a
//! metadata value, an address) and hands it back in the outcome, where the token budgets and the
//! access-log record use it later. As a `Vec` that was one allocation per request; user ids, API
//! keys and addresses are nearly always under [`INLINE`] bytes, so [`Id`] keeps them in place
//! and only a longer value (a header may hold 64 KiB) goes to the heap. It reads as a byte
//! slice.

use alloc::vec::Vec;

/// Bytes of an identity kept in place.
pub const INLINE: usize = 64;

/// An identity: its bytes, in place up to [`INLINE`] bytes, on the heap past that.
#[derive(Clone)]
pub struct Id(Repr);

#[derive(Clone)]
enum Repr {
    Inline { bytes: [u8; INLINE], len: u8 },
    Heap(Vec<u8>),
}

impl Id {
    /// An empty identity (a shared tier's).
    pub const fn new() -> Id {
        Id(Repr::Inline {
            bytes: [0; INLINE],
            len: 0,
        })
    }

    /// Appends `more`.
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        match &mut self.0 {
            Repr::Inline { bytes, len } => {
                let at = usize::from(*len);
                match bytes.get_mut(at..at + more.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(more);
                        // `at + more.len() <= INLINE`, which fits a `u8`.
                        *len = (at + more.len()) as u8;
                    }
                    None => {
                        let mut heap = Vec::with_capacity(at + more.len());
                        heap.extend_from_slice(bytes.get(..at).unwrap_or_default());
                        heap.extend_from_slice(more);
                        self.0 = Repr::Heap(heap);
                    }
                }
            }
            Repr::Heap(heap) => heap.extend_from_slice(more),
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { bytes, len } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Heap(heap) => heap,
        }
    }

    /// The bytes as a `Vec`.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Heap(heap) => heap,
            Repr::Inline { .. } => self.as_slice().to_vec(),
        }
    }
}

impl Default for Id {
    fn default() -> Id {
        Id::new()
    }
}

impl core::ops::Deref for Id {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl core::borrow::Borrow<[u8]> for Id {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl core::fmt::Debug for Id {
    /// As a `Vec<u8>` prints.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Id {}

impl core::hash::Hash for Id {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> core::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl PartialEq<[u8]> for Id {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Id {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Id {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.as_slice() == other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Id {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.as_slice() == *other
    }
}

impl PartialEq<Vec<u8>> for Id {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Id> for Vec<u8> {
    fn eq(&self, other: &Id) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl From<&[u8]> for Id {
    fn from(bytes: &[u8]) -> Id {
        let mut id = Id::new();
        id.extend_from_slice(bytes);
        id
    }
}

impl From<Vec<u8>> for Id {
    /// Short values move in place (the `Vec` is dropped); long ones keep their buffer.
    fn from(bytes: Vec<u8>) -> Id {
        if bytes.len() > INLINE {
            Id(Repr::Heap(bytes))
        } else {
            Id::from(bytes.as_slice())
        }
    }
}

impl From<Id> for Vec<u8> {
    fn from(id: Id) -> Vec<u8> {
        id.into_vec()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn an_id_holds_any_bytes_in_place_or_not() {
        for n in [0, 1, INLINE - 1, INLINE, INLINE + 1, 65_536] {
            let want: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let from_vec = Id::from(want.clone());
            let from_slice = Id::from(want.as_slice());
            let mut pieces = Id::new();
            for chunk in want.chunks(7) {
                pieces.extend_from_slice(chunk);
            }
            for id in [&from_vec, &from_slice, &pieces] {
                assert_eq!(id.as_slice(), want.as_slice(), "{n}");
                assert_eq!(*id, want);
                assert_eq!(alloc::format!("{id:?}"), alloc::format!("{want:?}"));
                assert_eq!(id.clone().into_vec(), want);
            }
            assert_eq!(from_vec, pieces);
        }
        let (a, b) = (Id::from(&b"a"[..]), Id::from(&b"b"[..]));
        assert!(a < b);
    }
}
