//! The request path as the upstream will read it: what tiers and the LLM classifier match on.
//!
//! A plain Envoy forwards `:path` as the client sent it, and upstreams decode it before routing:
//! `/v1/chat/completion%73`, `/v1//chat/completions` and `/v1/x/../chat/completions` all reach
//! the chat completions handler of a typical server. Matching the raw bytes would let such a
//! spelling skip a tier's `path_prefix` or a token budget. So matching uses [`normalize`]:
//! 1. the query (`?…`) and fragment (`#…`) are dropped;
//! 2. every `%XX` escape is decoded once (unreserved characters, and also `%2F` and `%5C`, as
//!    Envoy's `UNESCAPE_AND_FORWARD` and many servers do: recognising a path in more spellings
//!    than an upstream accepts costs nothing, missing one costs a budget), and `\` is read as `/`
//!    (as Envoy's `normalize_path` does);
//! 3. repeated slashes are merged (`merge_slashes`);
//! 4. `.` and `..` segments are resolved (RFC 3986 §5.2.4; `..` never climbs above the root).
//!
//! Case is kept: paths are case-sensitive in HTTP and in Envoy's route matching, so a tier's
//! `path_prefix` is too. The LLM classifier ([`crate::llm::request::ApiKind::from_path`]) also
//! ignores ASCII case, because there a false match only costs a reservation that a non-2xx
//! answer gives back, while a miss lets a case-insensitive upstream serve a call unmetered.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

/// The normalised path (see the module docs). Borrows when the path needs no change.
pub fn normalize(raw: &[u8]) -> Cow<'_, [u8]> {
    let (end, normal) = scan(raw);
    let path = raw.get(..end).unwrap_or(raw);
    if normal {
        return Cow::Borrowed(path);
    }
    Cow::Owned(rebuild(path))
}

/// The normal form of a path without its query: decoded, slashes merged, dot segments resolved.
fn rebuild(path: &[u8]) -> Vec<u8> {
    let decoded = decode(path);
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let last = decoded.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
    let trailing = matches!(last, b"" | b"." | b"..") && !segments.is_empty();
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// [`normalize`] of a path held as text (bytes that decode to invalid UTF-8 become U+FFFD).
pub fn normalize_str(raw: &str) -> String {
    String::from_utf8_lossy(&normalize(raw.as_bytes())).into_owned()
}

/// Where the path ends (at `?`, `#` or the end) and whether it is already normal, in one pass
/// with no allocation: this runs on every request whose tier has a `path_prefix`.
fn scan(raw: &[u8]) -> (usize, bool) {
    let mut normal = raw.first() == Some(&b'/');
    // Some(n): the segment read so far is n dots (n < 3); None: it is something else.
    let mut dots: Option<u8> = None;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'?' | b'#' => return (i, normal && !matches!(dots, Some(1 | 2))),
            // An empty (`//`), `.` or `..` segment ends here.
            b'/' if i > 0 && dots.is_some() => normal = false,
            b'/' => {}
            b'.' => {
                dots = dots.and_then(|d| (d < 2).then_some(d + 1));
                continue;
            }
            b'%' | b'\\' => normal = false,
            _ => {}
        }
        dots = (b == b'/').then_some(0);
    }
    (raw.len(), normal && !matches!(dots, Some(1 | 2)))
}

/// Decodes every `%XX` escape once and reads `\` as `/`; a `%` without two hex digits stays.
fn decode(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        let escaped = match (b, path.get(i + 1), path.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(if byte == b'\\' { b'/' } else { byte });
                i += 3;
            }
            None => {
                out.push(if b == b'\\' { b'/' } else { b });
                i += 1;
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn n(path: &str) -> String {
        normalize_str(path)
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/a.b/c..d/.e",
        ] {
            assert!(matches!(normalize(p.as_bytes()), Cow::Borrowed(_)), "{p}");
            assert_eq!(n(p), p);
        }
        assert_eq!(n("/v1/models?x=/../y#z"), "/v1/models");
    }

    #[test]
    fn encodings_slashes_and_dot_segments_are_resolved() {
        for (raw, normal) in [
            ("/v1/chat/completion%73", "/v1/chat/completions"),
            ("/v1/chat/%63%6F%6d%70letions", "/v1/chat/completions"),
            ("/v1%2Fchat%2fcompletions", "/v1/chat/completions"),
            ("/v1\\chat%5Ccompletions", "/v1/chat/completions"),
            ("//v1///chat//completions", "/v1/chat/completions"),
            ("/v1/./chat/completions", "/v1/chat/completions"),
            (
                "/v1/%2e/chat/%2E%2E/chat/completions",
                "/v1/chat/completions",
            ),
            ("/v1/x/y/../../chat/completions", "/v1/chat/completions"),
            ("/../../v1/chat/completions", "/v1/chat/completions"),
            ("/v1/chat/completions/.", "/v1/chat/completions/"),
            ("/v1/chat/completions/..", "/v1/chat/"),
            ("/v1/chat/completions//", "/v1/chat/completions/"),
            ("/..", "/"),
            ("", "/"),
            ("v1/chat", "/v1/chat"),
            ("/100%", "/100%"),
            ("/a%zzb%4", "/a%zzb%4"),
            ("/a%25%37%33", "/a%73"), // decoded once only
            ("/CHAT/Completions", "/CHAT/Completions"),
        ] {
            assert_eq!(n(raw), normal, "{raw}");
        }
    }

    #[test]
    fn the_fast_path_borrows_exactly_the_paths_that_are_already_normal() {
        // Every path of up to 6 bytes over the characters that matter.
        let alphabet = b"/.a%?\\";
        let mut paths: Vec<Vec<u8>> = alloc::vec![Vec::new()];
        for _ in 0..6 {
            let longer: Vec<Vec<u8>> = paths
                .iter()
                .filter(|p| p.len() == paths.last().map_or(0, Vec::len))
                .flat_map(|p| {
                    alphabet.iter().map(move |&c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            paths.extend(longer);
        }
        for raw in &paths {
            let (end, _) = scan(raw);
            let cut = &raw[..end];
            let slow = rebuild(cut);
            let fast = normalize(raw);
            assert_eq!(
                fast.as_ref(),
                slow.as_slice(),
                "{:?}",
                core::str::from_utf8(raw)
            );
            if let Cow::Borrowed(b) = fast {
                assert_eq!(b, cut);
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_and_never_panic() {
        assert_eq!(normalize(b"/a%ff/b").as_ref(), b"/a\xff/b");
        assert_eq!(n("/a%ff"), "/a\u{fffd}");
        for raw in [&b"%"[..], b"%%", b"/%", b"/%f", b"\\", b"/./", b"/../.."] {
            let _ = normalize(raw);
        }
    }
}
