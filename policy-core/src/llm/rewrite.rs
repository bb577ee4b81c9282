//! Asking an OpenAI stream for its usage while the request body passes, chunk by chunk.
//!
//! OpenAI chat and legacy completions report a stream's usage only when the request sets
//! `stream_options.include_usage: true`. A client that leaves it out (or sets `false`) would
//! stream uncharged, whatever the framing of its body, so every such body is rewritten — a
//! small one held whole and a large or chunked one as it passes — by the same [`UsageRewriter`].
//!
//! The rewriter follows the JSON structure of the body byte by byte and keeps track of the
//! *top-level* keys only (a `stream_options` nested in `messages` or `metadata` is content):
//! - a top-level `stream_options` value is held back (it is small: at most [`MAX_HELD`] bytes,
//!   beyond which it is replaced whole) and rewritten in place so that every `include_usage`
//!   member of it says `true`, adding one if there is none;
//! - when the object closes without any top-level `stream_options` and some top-level `stream`
//!   is `true`, `"stream_options":{"include_usage":true}` is inserted before the final `}`.
//!
//! Nothing else is held back, so the bytes it keeps never exceed [`MAX_HELD`] plus a key.
//!
//! **Duplicate keys.** JSON parsers disagree on a repeated key: Python's `json`, Go's
//! `encoding/json` and JavaScript take the last copy, some take the first, and serde_json into a
//! struct refuses the body. The rewrite is safe with all of them because it never *adds* a
//! second copy of anything: every top-level `stream_options` the client sent is rewritten (so
//! whichever copy a parser keeps asks for usage), every `include_usage` inside them is set to
//! `true`, and a new `stream_options` is inserted only when the client sent none — at the end,
//! after every `stream` key, so a `"stream": true` anywhere (which some parser may keep) gets
//! usage. Inserting at the end rather than the front also means the decision never depends on
//! bytes that have not arrived yet.
//!
//! **Exact length.** With a target ([`UsageRewriter::exact`]) the output is always exactly
//! `input + MAX_STREAM_USAGE_GROWTH` bytes — padded with spaces, which JSON allows between
//! tokens — so a `content-length` set before the body is read stays true. A body whose rewrite
//! would grow more than that (several top-level `stream_options`, each needing a key added) is
//! refused with [`RewriteError::TooLarge`] rather than sent with a wrong length.

use core::fmt;

use alloc::string::String;
use alloc::vec::Vec;

use super::json_text::{Cursor, Member};

/// The largest `stream_options` value held back to be rewritten. Real ones are a few dozen
/// bytes; a larger one is replaced whole by `{"include_usage":true}` (its other options lost),
/// so a hostile body cannot make the filter hold more than this.
pub const MAX_HELD: usize = 1024;

const INSERTED: &[u8] = b"\"stream_options\":{\"include_usage\":true}";
const REPLACEMENT: &[u8] = b"{\"include_usage\":true}";
const INCLUDE_USAGE: &[u8] = b"\"include_usage\":true";

/// The most a rewrite adds to a body (`,"stream_options":{"include_usage":true}`, 40 bytes): a
/// single in-place rewrite of an existing `stream_options` adds at most 21. A filter that asks
/// Envoy to buffer a body for rewriting leaves this much room, and an exact rewrite is padded
/// to exactly this much.
pub const MAX_STREAM_USAGE_GROWTH: usize = 1 + INSERTED.len();

/// Longest raw key kept to compare with `stream_options` (14 characters, each up to 6 bytes as
/// `\uXXXX`); a longer key is none of ours.
const MAX_KEY: usize = 14 * 6;

/// Longest raw `model` string kept (quotes and escapes included).
const MAX_MODEL_RAW: usize = super::request::MAX_MODEL_LEN * 6 + 2;

/// Why a body could not be rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RewriteError {
    /// The rewrite would add more than [`MAX_STREAM_USAGE_GROWTH`] bytes to a body whose length
    /// was already announced (several top-level `stream_options` keys).
    TooLarge,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::TooLarge => f.write_str(
                "request body repeats stream_options: asking it for usage does not fit its announced length",
            ),
        }
    }
}

impl core::error::Error for RewriteError {}

/// Where the walk is in the top-level object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    /// Before the first `{`.
    Start,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,`: a key.
    Key,
    /// Inside a key string.
    InKey,
    /// After a key: `:`.
    Colon,
    /// After `:`: a value.
    Value,
    /// Inside a top-level value.
    InValue,
    /// After a value: `,` or `}`.
    CommaOrEnd,
    /// After the final `}`.
    Closed,
    /// Not a JSON object after all: everything passes unchanged.
    Other,
}

/// Inside which token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    None,
    Str {
        escape: bool,
    },
    /// A top-level number, `true`, `false` or `null`.
    Scalar,
}

/// Which top-level key's value is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stream,
    StreamOptions,
    Model,
    Other,
}

/// What the body said about its model, as far as it has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ModelSeen {
    None,
    Name(String),
    /// Repeated with different values, not a string, or too long: no single model.
    Unclear,
}

/// Rewrites a request body as it passes so that an OpenAI stream reports usage (module docs),
/// and notes its top-level `model` on the way.
#[derive(Debug)]
pub struct UsageRewriter {
    /// Rewrite at all (false: only read `model`, pass every byte unchanged).
    rewrite: bool,
    /// Pad the output to exactly input + this many bytes.
    exact: Option<usize>,
    pos: Pos,
    lex: Lex,
    /// Containers open inside the current top-level value.
    depth: usize,
    key: Vec<u8>,
    key_long: bool,
    kind: Kind,
    /// The captured value: `stream`'s scalar, `model`'s string, or the held `stream_options`.
    value: Vec<u8>,
    /// Bytes of the current `stream_options` value read (held or dropped).
    value_len: usize,
    /// The held `stream_options` outgrew [`MAX_HELD`]: the rest is dropped, then replaced.
    dropping: bool,
    members: usize,
    stream: bool,
    options_seen: bool,
    model: ModelSeen,
    bytes_in: usize,
    bytes_out: usize,
    usage_added: bool,
    failed: Option<RewriteError>,
}

impl UsageRewriter {
    /// A rewriter whose output may differ in length from its input (the caller frames the body,
    /// or sets `content-length` after the whole body was rewritten).
    pub fn new() -> UsageRewriter {
        UsageRewriter::with(true, None)
    }

    /// A rewriter whose output is exactly [`MAX_STREAM_USAGE_GROWTH`] bytes longer than its
    /// input, so the caller can announce `content-length` before the body is read.
    pub fn exact() -> UsageRewriter {
        UsageRewriter::with(true, Some(MAX_STREAM_USAGE_GROWTH))
    }

    /// A reader that changes nothing and only notes the model.
    pub fn read_only() -> UsageRewriter {
        UsageRewriter::with(false, None)
    }

    fn with(rewrite: bool, exact: Option<usize>) -> UsageRewriter {
        UsageRewriter {
            rewrite,
            exact,
            pos: Pos::Start,
            lex: Lex::None,
            depth: 0,
            key: Vec::new(),
            key_long: false,
            kind: Kind::Other,
            value: Vec::new(),
            value_len: 0,
            dropping: false,
            members: 0,
            stream: false,
            options_seen: false,
            model: ModelSeen::None,
            bytes_in: 0,
            bytes_out: 0,
            usage_added: false,
            failed: None,
        }
    }

    /// Whether the rewrite asked for usage the client did not ask for: it inserted
    /// `stream_options`, or set an `include_usage` that was absent, `false` or `null`.
    pub fn usage_added(&self) -> bool {
        self.usage_added
    }

    /// Whether some top-level `stream` seen so far is `true`.
    pub fn streams(&self) -> bool {
        self.stream
    }

    /// The top-level `model` seen so far, when there is exactly one.
    pub fn model(&self) -> Option<&str> {
        match &self.model {
            ModelSeen::Name(name) => Some(name),
            _ => None,
        }
    }

    /// Rewrites the next chunk of the body into `out` (appended).
    ///
    /// # Errors
    /// [`RewriteError::TooLarge`] (see the type); once failed, every later call fails too.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        out.reserve(chunk.len());
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            // Inside a value nobody reads (a prompt, mostly), copy up to the next byte that
            // matters in one go: most of a large body goes this way.
            let skip = self.plain_run(rest);
            if skip > 0 {
                let (run, after) = rest.split_at(skip);
                self.bytes_in = self.bytes_in.saturating_add(run.len());
                self.emit(run, out);
                rest = after;
                continue;
            }
            self.bytes_in = self.bytes_in.saturating_add(1);
            if let Err(e) = self.byte(b, out) {
                self.failed = Some(e);
                return Err(e);
            }
            rest = tail;
        }
        Ok(())
    }

    /// How many bytes at the start of `bytes` pass through unchanged and change no state: those
    /// inside a string, or between a container's tokens, of a top-level value that is neither
    /// read nor held, up to the next quote, backslash or bracket.
    fn plain_run(&self, bytes: &[u8]) -> usize {
        if self.pos != Pos::InValue || self.kind != Kind::Other {
            return 0;
        }
        let stop = match self.lex {
            Lex::Str { escape: false } => bytes.iter().position(|&b| b == b'"' || b == b'\\'),
            Lex::None if self.depth > 0 => bytes
                .iter()
                .position(|&b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']')),
            _ => return 0,
        };
        stop.unwrap_or(bytes.len())
    }

    /// Ends the body: releases whatever is still held (a body cut inside `stream_options`) and,
    /// for an exact rewrite, pads to the announced length.
    ///
    /// # Errors
    /// As [`feed`](Self::feed).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.holding() {
            // The body ended inside the value: give it back as it was (the upstream will refuse
            // the body), or the replacement if part of it was dropped.
            let held = core::mem::take(&mut self.value);
            if self.dropping {
                self.emit(REPLACEMENT, out);
            } else {
                self.emit(&held, out);
            }
            self.pos = Pos::Other;
        }
        let result = self.pad(0, out);
        if let Err(e) = result {
            self.failed = Some(e);
        }
        result
    }

    fn holding(&self) -> bool {
        self.rewrite && self.pos == Pos::InValue && self.kind == Kind::StreamOptions
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(bytes);
        self.bytes_out = self.bytes_out.saturating_add(bytes.len());
    }

    fn emit1(&mut self, b: u8, out: &mut Vec<u8>) {
        out.push(b);
        self.bytes_out = self.bytes_out.saturating_add(1);
    }

    /// Pads an exact rewrite so that, once `then` more bytes are emitted, the output is the
    /// input plus the announced growth.
    fn pad(&mut self, then: usize, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let Some(growth) = self.exact else {
            return Ok(());
        };
        let want = self.bytes_in.saturating_add(growth);
        let have = self.bytes_out.saturating_add(then);
        let pad = want.checked_sub(have).ok_or(RewriteError::TooLarge)?;
        for _ in 0..pad {
            self.emit1(b' ', out);
        }
        Ok(())
    }

    /// Fails early when the output has already grown past what an exact rewrite may add.
    fn check_growth(&self) -> Result<(), RewriteError> {
        match self.exact {
            Some(growth) if self.bytes_out > self.bytes_in.saturating_add(growth) => {
                Err(RewriteError::TooLarge)
            }
            _ => Ok(()),
        }
    }

    /// A byte of the current top-level value.
    fn take(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.holding() {
            self.value_len = self.value_len.saturating_add(1);
            if self.dropping {
                return;
            }
            self.value.push(b);
            if self.value.len() > MAX_HELD {
                self.dropping = true;
                self.value = Vec::new();
            }
            return;
        }
        self.emit1(b, out);
        let cap = match self.kind {
            Kind::Stream => 8,
            Kind::Model => MAX_MODEL_RAW,
            _ => return,
        };
        if self.value.len() < cap {
            self.value.push(b);
        } else {
            self.value_len = usize::MAX; // too long to be what we look for
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        match self.lex {
            Lex::Str { escape } => {
                let closing = !escape && b == b'"';
                if self.pos == Pos::InKey {
                    self.emit1(b, out);
                    if closing {
                        self.pos = Pos::Colon;
                        self.kind = self.key_kind();
                    } else if self.key.len() < MAX_KEY {
                        self.key.push(b);
                    } else {
                        self.key_long = true;
                    }
                } else {
                    self.take(b, out);
                }
                self.lex = if closing {
                    Lex::None
                } else {
                    Lex::Str {
                        escape: !escape && b == b'\\',
                    }
                };
                if closing && self.pos == Pos::InValue && self.depth == 0 {
                    return self.value_end(out);
                }
                return Ok(());
            }
            Lex::Scalar => {
                if !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    self.take(b, out);
                    return Ok(());
                }
                self.lex = Lex::None;
                self.value_end(out)?;
            }
            Lex::None => {}
        }
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.pos {
            Pos::Closed | Pos::Other => self.emit1(b, out),
            _ if ws && self.pos != Pos::InValue => self.emit1(b, out),
            Pos::Start => {
                self.emit1(b, out);
                self.pos = if b == b'{' { Pos::FirstKey } else { Pos::Other };
            }
            Pos::FirstKey | Pos::Key => {
                if b == b'"' {
                    self.emit1(b, out);
                    self.pos = Pos::InKey;
                    self.lex = Lex::Str { escape: false };
                    self.key.clear();
                    self.key_long = false;
                    self.members = self.members.saturating_add(1);
                } else if b == b'}' && self.pos == Pos::FirstKey {
                    self.close(out)?;
                } else {
                    self.emit1(b, out);
                    self.pos = Pos::Other;
                }
            }
            Pos::InKey => self.emit1(b, out), // unreachable: keys are lexed as strings
            Pos::Colon => {
                self.emit1(b, out);
                self.pos = if b == b':' { Pos::Value } else { Pos::Other };
            }
            Pos::Value => {
                self.pos = Pos::InValue;
                self.value.clear();
                self.value_len = 0;
                self.dropping = false;
                self.depth = 0;
                match b {
                    b'"' => self.lex = Lex::Str { escape: false },
                    b'{' | b'[' => self.depth = 1,
                    b'}' | b']' | b',' | b':' => {
                        self.emit1(b, out);
                        self.pos = Pos::Other;
                        return Ok(());
                    }
                    _ => self.lex = Lex::Scalar,
                }
                self.take(b, out);
            }
            Pos::InValue => {
                self.take(b, out);
                match b {
                    b'"' => self.lex = Lex::Str { escape: false },
                    b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            return self.value_end(out);
                        }
                    }
                    _ => {}
                }
            }
            Pos::CommaOrEnd => {
                if b == b',' {
                    self.emit1(b, out);
                    self.pos = Pos::Key;
                } else if b == b'}' {
                    self.close(out)?;
                } else {
                    self.emit1(b, out);
                    self.pos = Pos::Other;
                }
            }
        }
        Ok(())
    }

    fn key_kind(&self) -> Kind {
        if self.key_long {
            return Kind::Other;
        }
        let key = self.key.as_slice();
        let decoded;
        let name: &[u8] = if key.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(key.len().saturating_add(2));
            quoted.push(b'"');
            quoted.extend_from_slice(key);
            quoted.push(b'"');
            decoded = serde_json::from_slice::<String>(&quoted).unwrap_or_default();
            decoded.as_bytes()
        } else {
            key
        };
        match name {
            b"stream" => Kind::Stream,
            b"stream_options" => Kind::StreamOptions,
            b"model" => Kind::Model,
            _ => Kind::Other,
        }
    }

    /// The current top-level value ended.
    fn value_end(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.pos = Pos::CommaOrEnd;
        let value = core::mem::take(&mut self.value);
        match self.kind {
            Kind::Stream => {
                if value == b"true" {
                    self.stream = true;
                }
            }
            Kind::Model => {
                let name = (self.value_len != usize::MAX)
                    .then(|| serde_json::from_slice::<String>(&value).ok())
                    .flatten()
                    .filter(|n| n.len() <= super::request::MAX_MODEL_LEN);
                self.model = match (&self.model, name) {
                    (_, None) => ModelSeen::Unclear,
                    (ModelSeen::None, Some(n)) => ModelSeen::Name(n),
                    (ModelSeen::Name(old), Some(n)) if *old == n => ModelSeen::Name(n),
                    _ => ModelSeen::Unclear,
                };
            }
            Kind::StreamOptions if self.rewrite => {
                self.options_seen = true;
                let (rewritten, added) = if self.dropping {
                    (REPLACEMENT.to_vec(), true)
                } else {
                    rewrite_options(&value)
                };
                self.usage_added |= added;
                self.emit(&rewritten, out);
                self.check_growth()?;
            }
            Kind::StreamOptions | Kind::Other => {}
        }
        Ok(())
    }

    /// The top-level object's closing `}`.
    fn close(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if self.rewrite && !self.options_seen && self.stream {
            if self.members > 0 {
                self.emit1(b',', out);
            }
            self.emit(INSERTED, out);
            self.usage_added = true;
            self.check_growth()?;
        }
        self.pad(1, out)?;
        self.emit1(b'}', out);
        self.pos = Pos::Closed;
        Ok(())
    }
}

impl Default for UsageRewriter {
    fn default() -> Self {
        UsageRewriter::new()
    }
}

/// A complete `stream_options` value rewritten so that it asks for usage; and whether that
/// changed what it asked (an `include_usage` that was missing or not `true`).
fn rewrite_options(value: &[u8]) -> (Vec<u8>, bool) {
    if value.first() != Some(&b'{') {
        // `null`, or a type the API would refuse anyway.
        return (REPLACEMENT.to_vec(), true);
    }
    let Some(members) = Cursor::new(value).object_members() else {
        return (REPLACEMENT.to_vec(), true);
    };
    let flags: Vec<&Member> = members
        .iter()
        .filter(|m| m.key_is(value, "include_usage"))
        .collect();
    let mut out = Vec::with_capacity(value.len().saturating_add(INCLUDE_USAGE.len() + 1));
    if flags.is_empty() {
        out.push(b'{');
        out.extend_from_slice(INCLUDE_USAGE);
        if !members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(value.get(1..).unwrap_or_default());
        return (out, true);
    }
    let mut added = false;
    let mut from = 0;
    for flag in flags {
        let v = value.get(flag.value.clone()).unwrap_or_default();
        if v == b"true" {
            continue;
        }
        added = true;
        out.extend_from_slice(value.get(from..flag.value.start).unwrap_or_default());
        out.extend_from_slice(b"true");
        from = flag.value.end;
    }
    out.extend_from_slice(value.get(from..).unwrap_or_default());
    (out, added)
}

/// Rewrites a whole body at once (see [`UsageRewriter`]); `exact` pads to
/// input + [`MAX_STREAM_USAGE_GROWTH`]. Returns the new body and whether usage was added.
///
/// # Errors
/// As [`UsageRewriter::feed`].
pub fn rewrite_whole(body: &[u8], exact: bool) -> Result<(Vec<u8>, bool), RewriteError> {
    let mut rewriter = if exact {
        UsageRewriter::exact()
    } else {
        UsageRewriter::new()
    };
    let mut out = Vec::with_capacity(body.len().saturating_add(MAX_STREAM_USAGE_GROWTH));
    rewriter.feed(body, &mut out)?;
    rewriter.finish(&mut out)?;
    Ok((out, rewriter.usage_added()))
}

/// Makes a streamed OpenAI chat or completions request ask for usage in its stream: the whole
/// body at once through a [`UsageRewriter`](UsageRewriter) (see there for where
/// the option goes and why that is safe with duplicate keys).
///
/// Returns `Ok(Some(body))` when `api` [needs it](super::ApiKind::needs_stream_usage_option) and the
/// body changed; `Ok(None)` when it can go upstream as it is. The caller must then fix
/// `content-length`.
///
/// # Errors
/// As [`UsageRewriter::feed`](UsageRewriter::feed).
pub fn ensure_stream_usage(
    api: super::ApiKind,
    body: &[u8],
) -> Result<Option<Vec<u8>>, RewriteError> {
    if !api.needs_stream_usage_option() {
        return Ok(None);
    }
    let (out, _) = rewrite_whole(body, false)?;
    Ok((out != body).then_some(out))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    /// Rewrites `body` fed in two pieces split at every byte (and in one piece, and a byte at a
    /// time), checking every way gives the same output; returns it and `usage_added`.
    fn each_split(body: &str, exact: bool) -> Result<(String, bool), RewriteError> {
        let bytes = body.as_bytes();
        let whole = rewrite_whole(bytes, exact);
        let mut one_by_one = if exact {
            UsageRewriter::exact()
        } else {
            UsageRewriter::new()
        };
        let mut out = Vec::new();
        let bytewise = bytes
            .iter()
            .try_for_each(|b| one_by_one.feed(&[*b], &mut out))
            .and_then(|()| one_by_one.finish(&mut out))
            .map(|()| (out, one_by_one.usage_added()));
        assert_eq!(bytewise, whole, "byte at a time: {body}");
        for at in 0..=bytes.len() {
            let mut r = if exact {
                UsageRewriter::exact()
            } else {
                UsageRewriter::new()
            };
            let mut out = Vec::new();
            let (a, b) = bytes.split_at(at);
            let got = r
                .feed(a, &mut out)
                .and_then(|()| r.feed(b, &mut out))
                .and_then(|()| r.finish(&mut out))
                .map(|()| (out, r.usage_added()));
            assert_eq!(got, whole, "split at {at}: {body}");
        }
        whole.map(|(out, added)| (String::from_utf8(out).unwrap(), added))
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn missing_options_are_inserted_before_the_final_brace() {
        let body =
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
        let (out, added) = each_split(body, false).unwrap();
        assert_eq!(
            out,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert!(added);
        assert_eq!(each_split(&out, false).unwrap(), (out.clone(), false));
        let (out, _) = each_split("{ \"stream\" : true }\n", false).unwrap();
        assert_eq!(
            out,
            "{ \"stream\" : true ,\"stream_options\":{\"include_usage\":true}}\n"
        );
    }

    #[test]
    fn existing_options_are_rewritten_in_place() {
        let cases = [
            (
                r#"{"stream":true,"stream_options":{"include_usage":false},"n":1}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true},"n":1}"#,
                true,
            ),
            (
                r#"{"stream_options":null,"stream":true}"#,
                r#"{"stream_options":{"include_usage":true},"stream":true}"#,
                true,
            ),
            (
                r#"{"stream":true,"stream_options":{}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                true,
            ),
            (
                r#"{"stream":true,"stream_options":{ "continuous_usage_stats": true }}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true, "continuous_usage_stats": true }}"#,
                true,
            ),
            (
                r#"{"stream":true,"stream_options":{"a":[1,{"include_usage":false}],"include_usage" : null , "b":"}"}}"#,
                r#"{"stream":true,"stream_options":{"a":[1,{"include_usage":false}],"include_usage" : true , "b":"}"}}"#,
                true,
            ),
            (
                r#"{"stream_\u006fptions":{"include_\u0075sage":false},"stream":true}"#,
                r#"{"stream_\u006fptions":{"include_\u0075sage":true},"stream":true}"#,
                true,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                false,
            ),
            (
                r#"{"stream":true,"stream_options":"yes"}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                true,
            ),
        ];
        for (body, want, added) in cases {
            assert_eq!(
                each_split(body, false).unwrap(),
                (want.to_string(), added),
                "{body}"
            );
        }
    }

    #[test]
    fn duplicates_ask_for_usage_whichever_copy_a_parser_keeps() {
        // Every copy of stream_options and of include_usage says true; nothing is added twice.
        let body = r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":false},"stream_options":{"include_usage":true}}"#;
        let (out, added) = each_split(body, false).unwrap();
        assert_eq!(
            out,
            r#"{"stream":true,"stream_options":{"include_usage":true,"include_usage":true},"stream_options":{"include_usage":true}}"#
        );
        assert!(added);
        // A `stream: true` that a first-wins parser would not read still gets the option, at
        // the end, where no later key can override it.
        let (out, _) = each_split(r#"{"stream":false,"stream":true}"#, false).unwrap();
        assert_eq!(
            out,
            r#"{"stream":false,"stream":true,"stream_options":{"include_usage":true}}"#
        );
        // Python's json (last wins) reads what the upstream will.
        assert_eq!(
            json(&out)["stream_options"],
            json(r#"{"include_usage":true}"#)
        );
    }

    #[test]
    fn nested_lookalikes_and_non_streams_are_untouched() {
        for body in [
            r#"{"messages":[{"content":"{\"stream_options\":{}}","stream_options":1}],"metadata":{"stream":true,"stream_options":{"include_usage":false}}}"#,
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m","stream":"true"}"#,
            "{}",
            "[1,2]",
            "not json {\"stream\":true}",
            "",
        ] {
            assert_eq!(
                each_split(body, false).unwrap(),
                (body.to_string(), false),
                "{body}"
            );
        }
    }

    #[test]
    fn exact_rewrites_are_always_the_announced_length() {
        for body in [
            r#"{"model":"m","stream":true}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"stream":true,"stream_options":{"x":1}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":false}"#,
            "{}",
            "{\"stream\":true,\"stream_options\":{\"in",
            "garbage",
            "",
        ] {
            let (out, _) = each_split(body, true).unwrap();
            assert_eq!(out.len(), body.len() + MAX_STREAM_USAGE_GROWTH, "{body}");
        }
        let (out, _) = each_split(r#"{"stream":true}  "#, true).unwrap();
        assert_eq!(
            out,
            r#"{"stream":true,"stream_options":{"include_usage":true}}  "#
        );
        let (out, _) = each_split(r#"{"stream":false}"#, true).unwrap();
        assert_eq!(out, format!("{{\"stream\":false{}}}", " ".repeat(40)));
        assert_eq!(json(&out), json(r#"{"stream":false}"#));
    }

    #[test]
    fn an_exact_rewrite_that_cannot_fit_is_refused() {
        let body = r#"{"stream":true,"stream_options":{"a":1},"stream_options":{"b":2}}"#;
        assert_eq!(each_split(body, true), Err(RewriteError::TooLarge));
        assert!(each_split(body, false).is_ok(), "fine when unframed");
    }

    #[test]
    fn a_huge_stream_options_is_replaced_and_never_held_whole() {
        let big = format!(
            r#"{{"stream":true,"stream_options":{{"pad":"{}","include_usage":false}},"n":1}}"#,
            "x".repeat(10_000)
        );
        let mut r = UsageRewriter::new();
        let mut out = Vec::new();
        for chunk in big.as_bytes().chunks(100) {
            r.feed(chunk, &mut out).unwrap();
            assert!(r.value.len() <= MAX_HELD + 1);
        }
        r.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true},"n":1}"#
        );
    }

    #[test]
    fn model_is_noted_on_the_way() {
        let mut r = UsageRewriter::read_only();
        let mut out = Vec::new();
        r.feed(br#"{"messages":[{"model":"x"}],"mod"#, &mut out)
            .unwrap();
        assert_eq!(r.model(), None);
        r.feed(br#"el":"gpt-\u0034o","stream":true}"#, &mut out)
            .unwrap();
        assert_eq!(r.model(), Some("gpt-4o"));
        assert!(r.streams() && !r.usage_added());
        assert_eq!(
            out,
            br#"{"messages":[{"model":"x"}],"model":"gpt-\u0034o","stream":true}"#
        );
        let mut r = UsageRewriter::read_only();
        r.feed(br#"{"model":"a","model":"b"}"#, &mut Vec::new())
            .unwrap();
        assert_eq!(r.model(), None, "two different models: no single one");
    }

    #[test]
    fn hostile_bodies_pass_without_panic() {
        let deep = format!(
            "{{\"stream\":true,\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let (out, added) = rewrite_whole(deep.as_bytes(), false).unwrap();
        assert!(added);
        assert!(out.ends_with(b"]],\"stream_options\":{\"include_usage\":true}}"));
        let garbage: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let _ = rewrite_whole(&garbage, true);
        let _ = rewrite_whole(&garbage, false);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                "[ -~\\u{e9}\\u{4e2d}]{0,8}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4)
                        .prop_map(serde_json::Value::Array),
                    proptest::collection::btree_map("[a-z_]{0,14}", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Whatever the body and however it is split, the rewrite sets
            /// `stream_options.include_usage` on a stream and changes nothing else.
            #[test]
            fn rewrite_sets_include_usage_and_keeps_everything_else(
                fields in proptest::collection::btree_map("[a-z_]{1,14}", arb_json(), 0..5),
                stream in any::<bool>(),
                options in proptest::option::of(proptest::collection::btree_map("[a-z_]{1,14}", arb_json(), 0..3)),
                pretty in any::<bool>(),
                exact in any::<bool>(),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut body = serde_json::Map::new();
                for (k, v) in fields {
                    body.insert(k, v);
                }
                body.insert("stream".into(), stream.into());
                if let Some(options) = options {
                    body.insert("stream_options".into(), serde_json::Value::Object(options.into_iter().collect()));
                }
                let value = serde_json::Value::Object(body);
                let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
                let bytes = text.as_bytes();
                let at = cut.index(bytes.len() + 1);
                let mut r = if exact { UsageRewriter::exact() } else { UsageRewriter::new() };
                let mut out = Vec::new();
                r.feed(&bytes[..at], &mut out).unwrap();
                r.feed(&bytes[at..], &mut out).unwrap();
                r.finish(&mut out).unwrap();
                let mut want = value.clone();
                let had_usage = value.get("stream_options").and_then(|o| o.get("include_usage")) == Some(&serde_json::Value::Bool(true));
                let present = value.get("stream_options").is_some();
                if present || stream {
                    let options = want.as_object_mut().unwrap().entry("stream_options").or_insert(serde_json::json!({}));
                    options.as_object_mut().unwrap().insert("include_usage".into(), true.into());
                }
                let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(got, want);
                prop_assert_eq!(r.usage_added(), (present || stream) && !had_usage);
                if exact {
                    prop_assert_eq!(out.len(), bytes.len() + MAX_STREAM_USAGE_GROWTH);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic_and_exact_stays_exact(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
                at in any::<prop::sample::Index>(),
            ) {
                let at = at.index(bytes.len() + 1);
                let mut r = UsageRewriter::exact();
                let mut out = Vec::new();
                let ok = r.feed(&bytes[..at], &mut out)
                    .and_then(|()| r.feed(&bytes[at..], &mut out))
                    .and_then(|()| r.finish(&mut out));
                if ok.is_ok() {
                    prop_assert_eq!(out.len(), bytes.len() + MAX_STREAM_USAGE_GROWTH);
                }
            }
        }
    }
}
