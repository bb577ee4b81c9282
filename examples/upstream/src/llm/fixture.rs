//! `x-mock-fixture: NAME`: answer with the recorded transcript `fixtures/llm/NAME` exactly as it
//! is stored, so the transcripts policy-core's unit tests read (`include_str!`) also reach a
//! proxy through the mock: JSON with a `content-length`, a stream (`.sse`, `.ndjson`, AWS's
//! binary `.eventstream`, byte for byte) one event (line, message) per write — or in `x-mock-chunk-bytes` pieces — cut by `x-mock-cut-after` and paced
//! by `x-mock-delay-ms` like the generated streams. The status is `x-mock-status` (200 unless it
//! says otherwise: the error transcripts want their own).
//!
//! The directory is the repository's `fixtures/llm/` (found from this crate's source directory
//! at build time), or `TOLLGATE_MOCK_FIXTURES` when set. A name is one file name of
//! `[A-Za-z0-9._-]`, not starting with a dot: nothing outside the directory can be served.

use std::path::PathBuf;

use bytes::Bytes;

use super::scenario::BadRequest;

/// The repository's transcripts, relative to this crate.
const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llm");

/// How a transcript is framed, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `.json`: one JSON document.
    Json,
    /// `.sse`: Server-Sent Events, written an event at a time.
    Sse,
    /// `.ndjson`: JSON lines, written a line at a time.
    Ndjson,
    /// `.eventstream`: AWS's binary event stream (Bedrock), written a message at a time.
    EventStream,
}

impl Kind {
    /// The `content-type` the provider sends.
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Json => "application/json",
            Kind::Sse => "text/event-stream; charset=utf-8",
            Kind::Ndjson => "application/x-ndjson",
            Kind::EventStream => "application/vnd.amazon.eventstream",
        }
    }
}

/// A transcript as stored.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Its framing.
    pub kind: Kind,
    /// Its bytes.
    pub bytes: Bytes,
}

fn dir() -> PathBuf {
    std::env::var_os("TOLLGATE_MOCK_FIXTURES")
        .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// Reads transcript `name`.
///
/// # Errors
/// A name that is not one plain file name with a known extension, or no such file.
pub fn load(name: &str) -> Result<Fixture, BadRequest> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let kind = match name.rsplit_once('.') {
        Some((_, "json")) => Some(Kind::Json),
        Some((_, "sse")) => Some(Kind::Sse),
        Some((_, "ndjson")) => Some(Kind::Ndjson),
        Some((_, "eventstream")) => Some(Kind::EventStream),
        _ => None,
    };
    let (true, Some(kind)) = (plain, kind) else {
        return Err(BadRequest(
            "x-mock-fixture must be a file name ending in .json, .sse, .ndjson or .eventstream"
                .into(),
        ));
    };
    let bytes = std::fs::read(dir().join(name))
        .map_err(|e| BadRequest(format!("x-mock-fixture {name}: {e}")))?;
    Ok(Fixture {
        kind,
        bytes: Bytes::from(bytes),
    })
}

/// The writes a stream transcript leaves in: one per event (`.sse`: up to and including each
/// blank line, `\n\n` or `\r\n\r\n`) or line (`.ndjson`), or pieces of `chunk_bytes`.
pub fn pieces(fixture: &Fixture, chunk_bytes: Option<usize>) -> Vec<Bytes> {
    let bytes = &fixture.bytes;
    if let Some(n) = chunk_bytes {
        return bytes.chunks(n).map(Bytes::copy_from_slice).collect();
    }
    // An event ends at a blank line (either line ending); an NDJSON line at its newline.
    let ends: &[&[u8]] = match fixture.kind {
        Kind::Json => return vec![bytes.clone()],
        Kind::EventStream => return messages(bytes),
        Kind::Sse => &[b"\r\n\r\n", b"\n\n"],
        Kind::Ndjson => &[b"\n"],
    };
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match ends.iter().find(|end| bytes[i..].starts_with(end)) {
            Some(end) => {
                out.push(bytes.slice(start..i + end.len()));
                start = i + end.len();
                i = start;
            }
            None => i += 1,
        }
    }
    if start < bytes.len() {
        out.push(bytes.slice(start..));
    }
    out
}

/// The writes of a JSON array streamed as Gemini streams it: each up to and including the
/// `\n,\r\n` between two elements (the last with the closing bracket), or pieces of
/// `chunk_bytes`.
pub fn array_pieces(bytes: &Bytes, chunk_bytes: Option<usize>) -> Vec<Bytes> {
    if let Some(n) = chunk_bytes {
        return bytes.chunks(n).map(Bytes::copy_from_slice).collect();
    }
    const SEPARATOR: &[u8] = b"\n,\r\n";
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(at) = bytes
        .get(start..)
        .and_then(|rest| rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR))
    {
        let end = start + at + SEPARATOR.len();
        out.push(bytes.slice(start..end));
        start = end;
    }
    if start < bytes.len() {
        out.push(bytes.slice(start..));
    }
    out
}

/// An event stream cut into its messages, each as long as its first 4 bytes say (big-endian);
/// whatever does not make a whole message (a corrupt length) is one last piece as stored.
fn messages(bytes: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(len) = bytes
        .get(start..start + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_be_bytes(b) as usize)
        .filter(|&len| len > 0 && start + len <= bytes.len())
    {
        out.push(bytes.slice(start..start + len));
        start += len;
    }
    if start < bytes.len() {
        out.push(bytes.slice(start..));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_directory_or_of_unknown_kinds_are_refused() {
        for bad in [
            "",
            ".json",
            "../README.md",
            "a/b.json",
            "x.txt",
            "x",
            "%2e%2e.json",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
        assert!(load("no-such-file.json").is_err());
    }

    #[test]
    fn every_stored_transcript_loads_and_its_pieces_are_the_file() {
        let mut seen = 0;
        for entry in std::fs::read_dir(DEFAULT_DIR).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Ok(f) = load(&name) else { continue };
            seen += 1;
            assert_eq!(pieces(&f, None).concat(), f.bytes.to_vec(), "{name}");
            assert_eq!(pieces(&f, Some(7)).concat(), f.bytes.to_vec(), "{name}");
        }
        assert!(seen >= 10, "{seen} transcripts");
        let array = load("gemini-stream.json").unwrap();
        let elements = array_pieces(&array.bytes, None);
        assert_eq!(elements.len(), 3, "three chunks");
        assert_eq!(elements.concat(), array.bytes.to_vec());
        assert!(elements[..2].iter().all(|e| e.ends_with(b"\n,\r\n")));
        let sse = load("openai-chat.sse").unwrap();
        let events = pieces(&sse, None);
        assert!(events.len() > 2);
        assert!(events.iter().all(|e| e.ends_with(b"\n\n")));
        // Binary, byte for byte, a message a write.
        let stream = load("bedrock-converse-stream.eventstream").unwrap();
        let file = std::fs::read(format!("{DEFAULT_DIR}/bedrock-converse-stream.eventstream"));
        assert_eq!(stream.bytes.to_vec(), file.unwrap());
        let messages = pieces(&stream, None);
        assert_eq!(messages.len(), 7);
        for m in &messages {
            assert_eq!(
                u32::from_be_bytes(m[..4].try_into().unwrap()) as usize,
                m.len()
            );
        }
    }
}
