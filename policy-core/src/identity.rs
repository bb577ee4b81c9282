//! Who a request is counted against.

use alloc::string::String;
use alloc::vec::Vec;

use crate::id::Id;
use crate::request::Attributes;

/// Where a tier reads the identity that keys its buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A request header such as `x-user-id` or `x-api-key`.
    Header {
        /// Lowercase header name.
        name: String,
        /// Whether `Alice` and `alice` are different callers. Off by default, so a caller
        /// cannot multiply their limit by changing the case of their id (in any script: see
        /// [`fold_case`]).
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

impl core::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IdentityError::Repeated { header } => {
                write!(f, "identity header {header} must appear exactly once")
            }
        }
    }
}

impl IdentitySource {
    /// The identity bytes, `None` when the request carries none (the tier then does not apply).
    pub fn derive<A: Attributes>(&self, attrs: &A) -> Result<Option<Vec<u8>>, IdentityError> {
        self.derive_into(attrs)
    }

    /// As [`derive`](Self::derive), as an [`Id`]: a short identity (nearly all) is kept in
    /// place, so the request path does not allocate for it.
    pub fn derive_id<A: Attributes>(&self, attrs: &A) -> Result<Option<Id>, IdentityError> {
        self.derive_into(attrs)
    }

    fn derive_into<A: Attributes, O: Bytes>(&self, attrs: &A) -> Result<Option<O>, IdentityError> {
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
                let mut out = O::default();
                if *case_sensitive {
                    out.put(value);
                } else {
                    fold_into(value, &mut out);
                }
                Ok(Some(out))
            }
            IdentitySource::Metadata { filter, path } => Ok(attrs
                .metadata(filter, path)
                .filter(|v| !trim(v).is_empty())
                .map(O::from)),
            IdentitySource::Shared => Ok(Some(O::default())),
            IdentitySource::ClientAddress => Ok(attrs.client_address().map(|a| {
                let mut out = O::default();
                out.put(strip_port(&a));
                out
            })),
        }
    }

    /// Whether every request of the tier has the same identity (a table of one set suffices).
    pub fn is_shared(&self) -> bool {
        matches!(self, IdentitySource::Shared)
    }
}

/// Folds the case of an identity so that every spelling a caller can choose is one caller.
///
/// Each character becomes lowercase(uppercase(lowercase(c))) by Unicode's context-free mappings
/// (`char::to_lowercase`/`to_uppercase`, in `core`; the first lowercasing makes `ẞ` meet `ß`
/// before `ß` becomes `SS`): `Ä`/`ä`, `Σ`/`σ`/`ς`, `ſ`/`s`, the Kelvin sign and `k`, and
/// `ẞ`/`ß`/`SS`/`ss` each fold to one identity, and folding a folded id changes nothing. This is close
/// to Unicode's full case folding and errs the same safe way where it differs: it may merge two
/// ids (dotless `ı` with `i`) but never splits what a case change could produce, so a limit can
/// only get stricter, never multiplied. Bytes that are not UTF-8 are kept as they are (a header
/// value is bytes); ASCII takes the fast path with no decoding.
pub fn fold_case(value: &[u8]) -> Vec<u8> {
    if value.is_ascii() {
        return value.to_ascii_lowercase();
    }
    let mut out = Vec::with_capacity(value.len());
    fold_into(value, &mut out);
    out
}

/// Where an identity is written: a `Vec` ([`IdentitySource::derive`]) or an [`Id`].
trait Bytes: Default + From<Vec<u8>> {
    fn put(&mut self, bytes: &[u8]);
}

impl Bytes for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Bytes for Id {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// [`fold_case`], appended to `out`. ASCII is lowercased a run at a time, through a small stack
/// buffer, so a plain id is folded without any copy but the one into `out`.
fn fold_into(value: &[u8], out: &mut impl Bytes) {
    let mut buf = [0u8; 4];
    if value.is_ascii() {
        let mut run = [0u8; 32];
        for chunk in value.chunks(run.len()) {
            let dst = run.get_mut(..chunk.len()).unwrap_or_default();
            for (d, s) in dst.iter_mut().zip(chunk) {
                *d = s.to_ascii_lowercase();
            }
            out.put(dst);
        }
        return;
    }
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                out.put(&[c.to_ascii_lowercase() as u8]);
                continue;
            }
            for l in c.to_lowercase() {
                for u in l.to_uppercase() {
                    for f in u.to_lowercase() {
                        out.put(f.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        out.put(chunk.invalid());
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
    fn case_folding_covers_every_script() {
        let id = |v: &str| {
            let h: HeaderList = [("x-user-id", v)].into_iter().collect();
            header(false).derive(&h).unwrap().unwrap()
        };
        for (a, b) in [
            ("Äpfel", "äpfel"),
            ("ÄPFEL", "äpfel"),
            ("ΣΟΦΙΑ", "σοφια"),
            ("ΟΔΟΣ", "οδος"), // final sigma
            ("ΟΔΟΣ", "οδοσ"),
            ("STRASSE", "straße"),
            ("ẞ", "ss"),
            ("\u{212A}elvin", "kelvin"), // the Kelvin sign
            ("ſam", "SAM"),
            ("ДМИТРИЙ", "дмитрий"),
            ("ǅ", "ǆ"), // titlecase digraph
        ] {
            assert_eq!(id(a), id(b), "{a} and {b}");
        }
        assert_ne!(id("äpfel"), id("apfel"), "case, not accents");
        let h: HeaderList = [("x-user-id", "Äpfel")].into_iter().collect();
        assert_ne!(
            header(true).derive(&h).unwrap(),
            Some(Vec::from("äpfel".as_bytes()))
        );
    }

    #[test]
    fn every_case_variant_of_every_character_folds_alike() {
        let fold = |s: &str| fold_case(s.as_bytes());
        for c in (0..=0x10_ffffu32).filter_map(char::from_u32) {
            let mut b = [0u8; 4];
            let one = fold(c.encode_utf8(&mut b));
            let upper: alloc::string::String = c.to_uppercase().collect();
            let lower: alloc::string::String = c.to_lowercase().collect();
            assert_eq!(fold(&upper), one, "{c:?} and its uppercase {upper:?}");
            assert_eq!(fold(&lower), one, "{c:?} and its lowercase {lower:?}");
            let again = core::str::from_utf8(&one).unwrap();
            assert_eq!(fold(again), one, "folding {c:?} twice");
        }
    }

    #[test]
    fn derive_id_is_derive_in_place() {
        let sources = [
            header(false),
            header(true),
            IdentitySource::Shared,
            IdentitySource::ClientAddress,
        ];
        let long = "Ä".repeat(100);
        for value in [
            "Alice",
            " bob\t",
            "ÄPFEL",
            "",
            "  ",
            long.as_str(),
            "\u{212A}",
        ] {
            let h: HeaderList = [("x-user-id", value)].into_iter().collect();
            for source in &sources {
                let as_vec = source.derive(&h).unwrap();
                let as_id = source.derive_id(&h).unwrap();
                assert_eq!(as_id.map(Id::into_vec), as_vec, "{value:?} {source:?}");
            }
        }
    }

    #[test]
    fn folding_keeps_bytes_that_are_not_utf8() {
        assert_eq!(fold_case(b"\xffA\xc3\x84\xc3"), b"\xffa\xc3\xa4\xc3");
        assert_eq!(fold_case(b"ABC-1"), b"abc-1");
        assert_eq!(fold_case(b""), b"");
    }

    #[test]
    fn a_repeated_identity_header_is_refused() {
        let h: HeaderList = [("x-user-id", "a"), ("X-User-Id", "b")]
            .into_iter()
            .collect();
        let error = header(false).derive(&h).unwrap_err();
        assert!(matches!(error, IdentityError::Repeated { .. }));
        // What the refused client and the operator read.
        assert_eq!(
            alloc::string::ToString::to_string(&error),
            "identity header x-user-id must appear exactly once"
        );
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
