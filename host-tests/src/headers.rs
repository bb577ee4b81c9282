//! Header maps as Envoy holds them: ordered byte pairs with duplicates kept, names lower-cased (as
//! Envoy's codecs store them), and the serialization the proxy-wasm SDKs exchange.

use crate::abi::Status;

/// An ordered list of header (or trailer, or metadata) pairs.
///
/// Values are bytes because Envoy passes non-UTF-8 header values through untouched, and a filter
/// must survive them. Names are lower-cased on the way in, like Envoy's `LowerCaseString`, so tests
/// can write `X-User-Id` and the filter sees what it would see behind Envoy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from `(name, value)` pairs, keeping order and duplicates.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Self {
        let mut headers = Self::new();
        for (name, value) in pairs {
            headers.add(name.as_ref(), value.as_ref());
        }
        headers
    }

    /// Appends a pair (Envoy's `addCopy`).
    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.pairs
            .push((name.as_ref().to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Replaces the first pair named `name` and drops the others, or appends when absent
    /// (Envoy's `setCopy`).
    pub fn replace(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let name = name.as_ref().to_ascii_lowercase();
        let value = value.as_ref().to_vec();
        match self.pairs.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                let mut index = 0;
                self.pairs.retain(|(n, _)| {
                    let keep = index <= first || *n != name;
                    index += 1;
                    keep
                });
                if let Some(pair) = self.pairs.get_mut(first) {
                    pair.1 = value;
                }
            }
            None => self.pairs.push((name, value)),
        }
    }

    /// Removes every pair named `name`.
    pub fn remove(&mut self, name: impl AsRef<[u8]>) {
        let name = name.as_ref().to_ascii_lowercase();
        self.pairs.retain(|(n, _)| *n != name);
    }

    /// The first value named `name` (what `proxy_get_header_map_value` returns), as text.
    /// `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|value| core::str::from_utf8(value).ok())
    }

    /// The first value named `name`, as bytes.
    pub fn get_bytes(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        let name = name.as_ref().to_ascii_lowercase();
        self.pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value named `name`, in order.
    pub fn get_all(&self, name: impl AsRef<[u8]>) -> Vec<&[u8]> {
        let name = name.as_ref().to_ascii_lowercase();
        self.pairs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// How many pairs are named `name`: tests use it to catch a header added twice.
    pub fn count(&self, name: impl AsRef<[u8]>) -> usize {
        self.get_all(name).len()
    }

    /// Whether a pair named `name` exists.
    pub fn contains(&self, name: impl AsRef<[u8]>) -> bool {
        self.count(name) > 0
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// Number of pairs, duplicates included (the `num_headers` Envoy passes to callbacks).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the map has no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The SDK's wire format: `u32` count, then `(u32 name_len, u32 value_len)` per pair, then each
    /// name and value followed by a NUL. Empty maps serialize to no bytes at all.
    pub fn serialize(&self) -> Vec<u8> {
        if self.pairs.is_empty() {
            return Vec::new();
        }
        let data: usize = self.pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        let mut out = Vec::with_capacity(4 + 8 * self.pairs.len() + data);
        out.extend_from_slice(&(self.pairs.len() as u32).to_le_bytes());
        for (name, value) in &self.pairs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in &self.pairs {
            out.extend_from_slice(name);
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        out
    }

    /// Parses the SDK's wire format (the inverse of [`Headers::serialize`]), checking every length
    /// against the buffer: a malformed map from the guest is `ParseFailure`, not a host panic.
    /// Names are kept as sent, then lower-cased like any other insertion.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, Status> {
        let mut headers = Self::new();
        if bytes.is_empty() {
            return Ok(headers);
        }
        let word = |at: usize| -> Result<usize, Status> {
            let end = at.checked_add(4).ok_or(Status::ParseFailure)?;
            let raw = bytes.get(at..end).ok_or(Status::ParseFailure)?;
            let mut le = [0u8; 4];
            le.copy_from_slice(raw);
            Ok(u32::from_le_bytes(le) as usize)
        };
        let count = word(0)?;
        let mut data = count
            .checked_mul(8)
            .and_then(|sizes| sizes.checked_add(4))
            .ok_or(Status::ParseFailure)?;
        let mut take = |len: usize| -> Result<&[u8], Status> {
            let end = data.checked_add(len).ok_or(Status::ParseFailure)?;
            let slice = bytes.get(data..end).ok_or(Status::ParseFailure)?;
            data = end + 1;
            Ok(slice)
        };
        for index in 0..count {
            let name_len = word(4 + index * 8)?;
            let value_len = word(8 + index * 8)?;
            let name = take(name_len)?;
            let value = take(value_len)?;
            headers.add(name, value);
        }
        Ok(headers)
    }
}

/// Readable in assertion failures: `name: value`, bytes outside printable ASCII escaped.
impl core::fmt::Debug for Headers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(
                self.pairs
                    .iter()
                    .map(|(n, v)| format!("{}: {}", n.escape_ascii(), v.escape_ascii())),
            )
            .finish()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Self::new();
        for (name, value) in iter {
            headers.add(name, value);
        }
        headers
    }
}
