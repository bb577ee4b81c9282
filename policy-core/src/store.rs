//! The state store: proxy-wasm shared data, seen through the smallest trait that can hold it.
//!
//! Envoy's shared data is a map of byte strings per `vm_id`, shared by every worker's VM, where
//! each value carries a compare-and-swap token. That is all the core needs: read a value with its
//! CAS, write it back only if nobody wrote in between. The filter implements [`Store`] over
//! proxy-wasm; [`MemoryStore`] implements it with Envoy's exact semantics for tests and benchmarks.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::num::NonZeroU32;

/// A compare-and-swap token. Envoy never hands out 0 (0 means "write unconditionally").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cas(pub NonZeroU32);

/// Why a store operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// Somebody wrote the key since it was read: read again and retry.
    CasMismatch,
    /// The host refused or failed; retrying is unlikely to help.
    Unavailable,
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StoreError::CasMismatch => {
                "compare-and-swap mismatch: the value changed since it was read"
            }
            StoreError::Unavailable => "the store refused or failed the operation",
        })
    }
}

/// A stored value with its CAS token, as `get` returns it.
pub type Versioned = (Vec<u8>, Option<Cas>);

/// A key-value store with compare-and-swap, as proxy-wasm shared data provides.
pub trait Store {
    /// The value at `key` with its CAS token, or `None` if the key was never written.
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes `value` if the key's CAS still equals `cas` (`None`: unconditionally).
    ///
    /// As in Envoy, a key that does not exist yet is created whatever `cas` says.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError>;

    /// As [`get`](Self::get), into `buf`: the value's length and CAS token, its bytes copied
    /// into `buf` when they fit (a longer value is left out; the caller sees its length).
    ///
    /// The request path reads a table's set this way, into a buffer on its stack. The default
    /// goes through `get` (one allocation: the value it returns); a store that can copy out of
    /// its own memory overrides it and the decision allocates nothing (proxy-wasm cannot: the
    /// host always hands shared data over in a buffer it has the guest allocate).
    fn get_into(
        &mut self,
        key: &str,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Option<Cas>)>, StoreError> {
        Ok(self.get(key)?.map(|(value, cas)| {
            copy_if_fits(&value, buf);
            (value.len(), cas)
        }))
    }
}

/// Copies `value` into the front of `buf` if it fits (see [`Store::get_into`]).
pub fn copy_if_fits(value: &[u8], buf: &mut [u8]) {
    if let Some(dst) = buf.get_mut(..value.len()) {
        dst.copy_from_slice(value);
    }
}

/// An in-memory [`Store`] with Envoy's semantics: CAS tokens come from one counter that starts at 1
/// and skips 0, a stale CAS is refused, and a write to a missing key ignores the CAS.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    map: BTreeMap<String, (Vec<u8>, NonZeroU32)>,
    next_cas: u32,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many keys have ever been written (shared data has no delete).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total bytes of keys and values: the part of Envoy's memory that the table bounds.
    pub fn bytes(&self) -> usize {
        self.map.iter().map(|(k, (v, _))| k.len() + v.len()).sum()
    }

    fn take_cas(&mut self) -> NonZeroU32 {
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        NonZeroU32::new(self.next_cas).unwrap_or(NonZeroU32::MIN)
    }
}

impl Store for MemoryStore {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self
            .map
            .get(key)
            .map(|(v, cas)| (v.clone(), Some(Cas(*cas)))))
    }

    fn get_into(
        &mut self,
        key: &str,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Option<Cas>)>, StoreError> {
        Ok(self.map.get(key).map(|(v, cas)| {
            copy_if_fits(v, buf);
            (v.len(), Some(Cas(*cas)))
        }))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        if let (Some(Cas(expected)), Some((_, current))) = (cas, self.map.get(key)) {
            if expected != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = self.take_cas();
        // An existing key is overwritten in place (no allocation for a value of the same size),
        // as Envoy's map does.
        if let Some((stored, current)) = self.map.get_mut(key) {
            stored.clear();
            stored.extend_from_slice(value);
            *current = next;
        } else {
            self.map.insert(String::from(key), (value.to_vec(), next));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn memory_store_follows_envoy_cas_semantics() {
        let mut s = MemoryStore::new();
        assert_eq!(s.get("k"), Ok(None));
        let bogus = Some(Cas(NonZeroU32::new(77).unwrap()));
        assert_eq!(s.set("k", b"a", bogus), Ok(()), "missing key ignores CAS");
        let (_, cas) = s.get("k").unwrap().unwrap();
        assert_eq!(cas.unwrap().0.get(), 1, "CAS starts at 1");
        assert_eq!(s.set("k", b"b", cas), Ok(()));
        assert_eq!(s.set("k", b"c", cas), Err(StoreError::CasMismatch));
        assert_eq!(
            s.set("k", b"d", None),
            Ok(()),
            "no CAS writes unconditionally"
        );
        assert_eq!(s.get("k").unwrap().unwrap().0, b"d");
    }

    /// A store that only has `get`: `get_into` through the trait's default.
    struct GetOnly(MemoryStore);
    impl Store for GetOnly {
        fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.0.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            self.0.set(key, value, cas)
        }
    }

    #[test]
    fn get_into_reads_what_get_reads() {
        let mut s = MemoryStore::new();
        s.set("k", b"abc", None).unwrap();
        let cas = s.get("k").unwrap().unwrap().1;
        let mut fallback = GetOnly(s.clone());
        for store in [&mut s as &mut dyn Store, &mut fallback] {
            let mut buf = [0u8; 4];
            assert_eq!(store.get_into("k", &mut buf), Ok(Some((3, cas))));
            assert_eq!(&buf, b"abc\0");
            let mut short = [0u8; 2];
            assert_eq!(store.get_into("k", &mut short), Ok(Some((3, cas))));
            assert_eq!(short, [0, 0], "a value that does not fit is not copied");
            assert_eq!(store.get_into("missing", &mut buf), Ok(None));
        }
    }
}
