//! Whether an LLM request's `accept-encoding` has to be taken out before it goes upstream.
//!
//! tollgate reads the answer's usage, so the answer must come back unencoded: with
//! `llm.strip_accept_encoding` (the default) the header is removed from every LLM request. A
//! request without the header, or whose every `accept-encoding` line says `identity` and
//! nothing else, already asks for an unencoded answer (RFC 9110 §12.5.3: `identity` is the
//! only coding it accepts); removing its header would change nothing the upstream may send
//! back except to allow *more* codings, so such a request keeps it and the filter saves the
//! host call.

use crate::request::HeaderList;

/// Whether `headers` carry an `accept-encoding` that allows a coding other than `identity`
/// (so the filter removes it): `false` when the header is absent or every line of it is
/// [`identity_only`]; `true` otherwise.
pub fn accepts_encodings(headers: &HeaderList) -> bool {
    headers
        .values("accept-encoding")
        .any(|value| !identity_only(value))
}

/// Whether one `accept-encoding` line is exactly `identity` (ASCII case ignored, surrounding
/// whitespace allowed). Anything else counts as allowing a coding, a list or a weight included
/// (`identity;q=1`, `identity, gzip;q=0` are removed as before: not worth reading a weight list
/// to save one call).
pub fn identity_only(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"identity")
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    fn headers(pairs: &[(&str, &str)]) -> HeaderList {
        HeaderList::new(
            pairs
                .iter()
                .map(|(n, v)| (String::from(*n), Vec::from(v.as_bytes())))
                .collect(),
        )
    }

    #[test]
    fn only_identity_or_nothing_is_left_in_place() {
        assert!(!accepts_encodings(&headers(&[("x-user-id", "a")])));
        for kept in ["identity", "Identity", " identity ", "IDENTITY"] {
            assert!(
                !accepts_encodings(&headers(&[("accept-encoding", kept)])),
                "{kept:?}"
            );
        }
        assert!(!accepts_encodings(&headers(&[
            ("Accept-Encoding", "identity"),
            ("accept-encoding", "identity"),
        ])));
    }

    #[test]
    fn any_other_coding_is_removed() {
        for removed in [
            "gzip",
            "gzip, deflate, br, zstd",
            "identity, gzip",
            "identity;q=1",
            "*",
            "",
            "identityx",
        ] {
            assert!(
                accepts_encodings(&headers(&[("accept-encoding", removed)])),
                "{removed:?}"
            );
        }
        // One line of several asks for gzip: the header goes.
        assert!(accepts_encodings(&headers(&[
            ("accept-encoding", "identity"),
            ("accept-encoding", "gzip"),
        ])));
    }
}
