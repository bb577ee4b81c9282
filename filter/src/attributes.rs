//! [`policy_core::Attributes`] over the request being filtered.

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

    /// The declared body length, when there is a valid one.
    pub fn content_length(&self) -> Option<u64> {
        let mut values = self.headers.values("content-length");
        let v = values.next()?;
        if values.next().is_some() {
            return None;
        }
        std::str::from_utf8(v).ok()?.trim().parse().ok()
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
