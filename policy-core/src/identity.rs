//! Who a request is counted against.

use alloc::string::String;
use alloc::vec::Vec;

use crate::request::Attributes;

/// Where a tier reads the identity that keys its buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A request header such as `x-user-id` or `x-api-key`.
    Header {
        /// Lowercase header name.
        name: String,
        /// Whether `Alice` and `alice` are different callers. Off by default, so a caller
        /// cannot multiply their limit by changing the case of their id.
        case_sensitive: bool,
    },
    /// A value an authentication filter verified and put in dynamic metadata.
    Metadata {
        /// Metadata namespace, e.g. `envoy.filters.http.jwt_authn`.
        filter: String,
        /// Keys inside it, e.g. `["payload", "sub"]`.
        path: Vec<String>,
    },
    /// One bucket for every request of the tier.
    Shared,
    /// The downstream IP address (port dropped).
    ClientAddress,
}

/// Why a request's identity cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The identity header appeared more than once: which one the upstream would believe is
    /// unknowable, so the request is refused rather than counted against a guess.
    Repeated {
        /// The header.
        header: String,
    },
}

impl IdentitySource {
    /// The identity bytes, `None` when the request carries none (the tier then does not apply).
    pub fn derive<A: Attributes>(&self, attrs: &A) -> Result<Option<Vec<u8>>, IdentityError> {
        match self {
            IdentitySource::Header {
                name,
                case_sensitive,
            } => {
                let mut values = attrs.headers().values(name);
                let Some(first) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(IdentityError::Repeated {
                        header: name.clone(),
                    });
                }
                let value = trim(first);
                if value.is_empty() {
                    return Ok(None);
                }
                let mut id = Vec::from(value);
                if !case_sensitive {
                    id.make_ascii_lowercase();
                }
                Ok(Some(id))
            }
            IdentitySource::Metadata { filter, path } => {
                Ok(attrs.metadata(filter, path).filter(|v| !trim(v).is_empty()))
            }
            IdentitySource::Shared => Ok(Some(Vec::new())),
            IdentitySource::ClientAddress => {
                Ok(attrs.client_address().map(|a| Vec::from(strip_port(&a))))
            }
        }
    }

    /// Whether every request of the tier has the same identity (a table of one set suffices).
    pub fn is_shared(&self) -> bool {
        matches!(self, IdentitySource::Shared)
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => v.get(s..=e).unwrap_or(&[]),
        _ => &[],
    }
}

/// `1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`; anything else is kept whole.
fn strip_port(addr: &[u8]) -> &[u8] {
    if let Some(rest) = addr.strip_prefix(b"[") {
        if let Some(end) = rest.iter().position(|&b| b == b']') {
            return rest.get(..end).unwrap_or(rest);
        }
        return addr;
    }
    let colons = addr.iter().filter(|&&b| b == b':').count();
    if colons == 1 {
        if let Some(i) = addr.iter().position(|&b| b == b':') {
            return addr.get(..i).unwrap_or(addr);
        }
    }
    addr
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::request::HeaderList;

    fn header(case_sensitive: bool) -> IdentitySource {
        IdentitySource::Header {
            name: "x-user-id".into(),
            case_sensitive,
        }
    }

    #[test]
    fn case_folding_stops_a_caller_multiplying_their_limit() {
        let a: HeaderList = [("x-user-id", "Alice")].into_iter().collect();
        let b: HeaderList = [("X-USER-ID", " alice ")].into_iter().collect();
        assert_eq!(header(false).derive(&a), header(false).derive(&b));
        assert_ne!(header(true).derive(&a), header(true).derive(&b));
    }

    #[test]
    fn a_repeated_identity_header_is_refused() {
        let h: HeaderList = [("x-user-id", "a"), ("X-User-Id", "b")]
            .into_iter()
            .collect();
        assert!(matches!(
            header(false).derive(&h),
            Err(IdentityError::Repeated { .. })
        ));
    }

    #[test]
    fn an_empty_identity_is_no_identity() {
        let h: HeaderList = [("x-user-id", "  ")].into_iter().collect();
        assert_eq!(header(false).derive(&h), Ok(None));
        assert_eq!(header(false).derive(&HeaderList::default()), Ok(None));
    }

    #[test]
    fn non_utf8_and_huge_values_are_just_bytes() {
        let big = alloc::vec![b'x'; 65536];
        let h = HeaderList::new(alloc::vec![("x-user-id".into(), big.clone())]);
        assert_eq!(header(true).derive(&h), Ok(Some(big)));
        let h = HeaderList::new(alloc::vec![("x-user-id".into(), alloc::vec![0xff, 0xfe])]);
        assert_eq!(header(true).derive(&h), Ok(Some(alloc::vec![0xff, 0xfe])));
    }

    #[test]
    fn ports_are_dropped_from_client_addresses() {
        assert_eq!(strip_port(b"10.0.0.1:443"), b"10.0.0.1");
        assert_eq!(strip_port(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(strip_port(b"2001:db8::1"), b"2001:db8::1");
    }
}
