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
///
/// Kept as one buffer with each pair's name and value as ranges into it, so that the filter can
/// hand over the host's serialised map as it came: one allocation for the request's headers
/// instead of a `String` and a `Vec` per header, which cost the guest more than anything else
/// on an admitted request (BENCHMARKS.md §2).
#[derive(Clone, Debug, Default)]
pub struct HeaderList {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

/// Where one pair's name and value are in a [`HeaderList`]'s buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

impl Span {
    /// The name at `name` and the value at `value` (start, end) of the buffer. A span outside
    /// the buffer reads as no pair.
    pub fn new(name: (usize, usize), value: (usize, usize)) -> Span {
        Span { name, value }
    }
}

impl HeaderList {
    /// Wraps header pairs.
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> HeaderList {
        let size = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let mut bytes = Vec::with_capacity(size);
        let mut spans = Vec::with_capacity(pairs.len());
        for (name, value) in &pairs {
            let at = bytes.len();
            bytes.extend_from_slice(name.as_bytes());
            let mid = bytes.len();
            bytes.extend_from_slice(value);
            spans.push(Span::new((at, mid), (mid, bytes.len())));
        }
        HeaderList { bytes, spans }
    }

    /// Pairs found in `bytes` at `spans` (e.g. the host's serialised map, walked once): no pair
    /// is copied.
    pub fn from_spans(bytes: Vec<u8>, spans: Vec<Span>) -> HeaderList {
        HeaderList { bytes, spans }
    }

    /// Every pair, in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().filter_map(|s| {
            let name = self.bytes.get(s.name.0..s.name.1)?;
            let value = self.bytes.get(s.value.0..s.value.1)?;
            Some((name, value))
        })
    }

    /// Every value of header `name`, compared without regard to ASCII case (HTTP field names are
    /// case-insensitive; Envoy lowercases them, a test host may not).
    ///
    /// The pairs [`iter`](Self::iter) yields, but a pair whose name is not as long as `name` is
    /// passed over by its span alone, without slicing the buffer for its name and value: the
    /// request path looks up two or three names among a dozen headers (BENCHMARKS.md §2, "the
    /// record and the stream's own cost").
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let wanted = name.as_bytes();
        self.spans.iter().filter_map(move |s| {
            if s.name.1.wrapping_sub(s.name.0) != wanted.len() {
                return None;
            }
            let n = self.bytes.get(s.name.0..s.name.1)?;
            let v = self.bytes.get(s.value.0..s.value.1)?;
            n.eq_ignore_ascii_case(wanted).then_some(v)
        })
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
}

/// Two lists are equal when they hold the same pairs in the same order, however stored.
impl PartialEq for HeaderList {
    fn eq(&self, other: &HeaderList) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HeaderList {}

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

    /// `values` passes over a pair by its name's length alone: it must find exactly the pairs
    /// `iter` yields with that name, a span outside the buffer (or reversed) included.
    #[test]
    fn values_are_the_pairs_iter_yields_with_that_name() {
        let bytes = b"x-user-idalicex-User-IDbobx-user-ixcontent-typejson".to_vec();
        let spans = alloc::vec![
            Span::new((0, 9), (9, 14)),
            Span::new((14, 23), (23, 26)),
            Span::new((26, 35), (35, 36)),
            Span::new((35, 47), (47, 51)),
            Span::new((0, 9), (9, 99)),
            Span::new((90, 99), (9, 14)),
            Span::new((9, 0), (9, 14)),
            Span::new((0, 9), (14, 9)),
        ];
        let h = HeaderList::from_spans(bytes, spans);
        for name in [
            "x-user-id",
            "X-USER-ID",
            "content-type",
            "x-user-i",
            "",
            "json",
        ] {
            let expected: Vec<&[u8]> = h
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v)
                .collect();
            assert_eq!(h.values(name).collect::<Vec<_>>(), expected, "{name}");
        }
        let users: Vec<&[u8]> = h.values("x-user-id").collect();
        assert_eq!(users, [b"alice".as_slice(), b"bob".as_slice()]);
        let types: Vec<&[u8]> = h.values("Content-Type").collect();
        assert_eq!(types, [b"json".as_slice()]);
    }

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

    #[test]
    fn a_list_over_a_buffer_reads_as_the_same_pairs_and_ignores_spans_outside_it() {
        let bytes = b"x-user-idalice:path/v1".to_vec();
        let spans = [
            Span::new((0, 9), (9, 14)),
            Span::new((14, 19), (19, 22)),
            Span::new((19, 22), (22, 99)),
            Span::new((5, 2), (0, 1)),
        ];
        let h = HeaderList::from_spans(bytes, spans.to_vec());
        let pairs: HeaderList = [("x-user-id", "alice"), (":path", "/v1")]
            .into_iter()
            .collect();
        assert_eq!(h, pairs);
        assert_eq!(h.values("X-User-Id").collect::<Vec<_>>(), [b"alice"]);
        // A name found at a span whose value is outside the buffer is no pair either.
        assert!(h.values("/v1").next().is_none());
        assert_eq!(h.values(":PATH").collect::<Vec<_>>(), [b"/v1"]);
    }
}
