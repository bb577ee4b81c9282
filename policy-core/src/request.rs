//! What the core may ask about a request.
//!
//! Headers come as one list, read once per request (one host call in the filter). Dynamic
//! metadata and the client address cost a host call each, so they are asked for lazily and only by
//! tiers whose identity needs them.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

/// The request as the core sees it.
pub trait Attributes {
    /// The request headers, pseudo-headers (`:path`, `:method`) included.
    fn headers(&self) -> &HeaderList;

    /// A value an earlier filter put in the request's dynamic metadata, e.g. a JWT claim that
    /// `jwt_authn` verified: `filter` is the metadata namespace, `path` the keys inside it.
    fn metadata(&self, filter: &str, path: &[String]) -> Option<Vec<u8>>;

    /// The downstream peer address (`ip:port` or `[ip6]:port`).
    fn client_address(&self) -> Option<Vec<u8>>;
}

/// Header pairs in arrival order, duplicates kept: a repeated header must be seen as repeated,
/// not silently reduced to its first or last value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderList {
    pairs: Vec<(String, Vec<u8>)>,
}

impl HeaderList {
    /// Wraps header pairs as the host returned them.
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> HeaderList {
        HeaderList { pairs }
    }

    /// Every value of header `name`, compared without regard to ASCII case (HTTP field names are
    /// case-insensitive; Envoy lowercases them, a test host may not).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The field value as a recipient would combine it: repeated lines joined with ", "
    /// (RFC 9110 §5.3). `None` when the header is absent.
    pub fn combined<'a>(&'a self, name: &'a str) -> Option<Cow<'a, [u8]>> {
        let mut values = self.values(name);
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = Vec::from(first);
                for v in core::iter::once(second).chain(values) {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v);
                }
                Some(Cow::Owned(joined))
            }
        }
    }

    /// The pairs.
    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        &self.pairs
    }
}

impl Attributes for HeaderList {
    fn headers(&self) -> &HeaderList {
        self
    }

    fn metadata(&self, _filter: &str, _path: &[String]) -> Option<Vec<u8>> {
        None
    }

    fn client_address(&self) -> Option<Vec<u8>> {
        None
    }
}

impl<N: Into<String>, V: Into<Vec<u8>>> FromIterator<(N, V)> for HeaderList {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        HeaderList::new(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn names_match_without_case_and_repeats_are_kept() {
        let h: HeaderList = [("X-User-Id", "a"), ("x-user-id", "b"), ("other", "c")]
            .into_iter()
            .collect();
        let all: Vec<&[u8]> = h.values("x-user-id").collect();
        assert_eq!(all, [b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(h.combined("X-USER-ID").unwrap().as_ref(), b"a, b");
        assert_eq!(h.combined("other").unwrap().as_ref(), b"c");
        assert!(h.combined("missing").is_none());
    }
}
