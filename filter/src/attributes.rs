//! [`policy_core::Attributes`] over the request being filtered.

use policy_core::llm::encoding::identity_only;
use policy_core::{Attributes, HeaderList};
use proxy_wasm::types::MapType;

use crate::host;

/// The request's headers, read once, plus lazy host lookups for what only some tiers need.
#[derive(Debug)]
pub struct Request {
    headers: HeaderList,
}

impl Request {
    /// Reads the request headers (one host call). If the host cannot give them, the request
    /// has no headers: it matches only tiers that need none, and carries no identity.
    pub fn read() -> Request {
        Request {
            headers: host::header_map(MapType::HttpRequestHeaders).unwrap_or_default(),
        }
    }

    /// The request path (`:path`), lossily decoded (only used to tell LLM APIs apart).
    pub fn path(&self) -> String {
        self.headers
            .values(":path")
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    /// What an LLM call needs of the headers, in one pass over them (each named lookup is a
    /// pass of its own, ~1,600 Wasm operators for a dozen headers): the declared body length
    /// (`None` unless exactly one valid `content-length`), and whether an `accept-encoding`
    /// allows a coding other than `identity` ([`policy_core::llm::encoding::accepts_encodings`]).
    pub fn llm_view(&self) -> (Option<u64>, bool) {
        const LENGTH: &[u8] = b"content-length";
        const ENCODING: &[u8] = b"accept-encoding";
        let (mut length, mut lengths, mut encodings) = (None, 0, false);
        // The names' lengths differ: each header is compared with one name at most.
        for (name, value) in self.headers.iter() {
            if name.len() == LENGTH.len() && name.eq_ignore_ascii_case(LENGTH) {
                lengths += 1;
                length = length.or(Some(value));
            } else if name.len() == ENCODING.len() && name.eq_ignore_ascii_case(ENCODING) {
                encodings |= !identity_only(value);
            }
        }
        let length = length
            .filter(|_| lengths == 1)
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
        (length, encodings)
    }

    /// Whether this is a gRPC request, to be answered with a gRPC status instead of a 429.
    pub fn is_grpc(&self) -> bool {
        self.headers
            .values("content-type")
            .next()
            .is_some_and(|v| v.starts_with(b"application/grpc"))
    }
}

impl Attributes for Request {
    fn headers(&self) -> &HeaderList {
        &self.headers
    }

    fn metadata(&self, filter: &str, path: &[String]) -> Option<Vec<u8>> {
        let mut full: Vec<&str> = Vec::with_capacity(path.len() + 3);
        full.extend(["metadata", "filter_metadata", filter]);
        full.extend(path.iter().map(String::as_str));
        host::property(&full).ok().flatten()
    }

    fn client_address(&self) -> Option<Vec<u8>> {
        host::property(&["source", "address"]).ok().flatten()
    }
}
