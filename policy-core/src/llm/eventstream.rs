//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! ConverseStream and InvokeModelWithResponseStream answer.
//!
//! A stream is a sequence of messages, each laid out as (all integers big-endian):
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 4 | total length: the whole message, these 4 bytes and the trailing CRC included |
//! | 4 | 4 | headers length |
//! | 8 | 4 | prelude CRC: CRC-32 of bytes 0..8 |
//! | 12 | headers length | headers: name length (u8), name, value type (u8), value |
//! | 12 + headers length | total − headers length − 16 | payload |
//! | total − 4 | 4 | message CRC: CRC-32 of bytes 0..total − 4 |
//!
//! A header value is, by its type byte: 0 `true`, 1 `false` (no bytes), 2 a byte, 3 a u16, 4 a
//! u32, 5 a u64, 6 bytes and 7 a string (each a u16 length, then that many bytes), 8 a
//! timestamp (8 bytes), 9 a UUID (16 bytes).
//!
//! [`EventStreamDecoder`] reads messages from chunks split anywhere and checks both CRCs. The
//! first message that cannot be trusted (a CRC that does not match, a length that cannot be,
//! headers that run past their length, a message larger than the limit) stops it for good:
//! after a bad length nothing tells where the next message starts, and a stream that carried
//! one corrupted message is not believed about its usage either. The caller decides what such
//! a stream costs ([`SseScanner::untrusted`](super::SseScanner::untrusted)).

use alloc::vec::Vec;
use core::fmt;

/// Bytes before the headers: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;
/// The trailing message CRC.
pub const MESSAGE_CRC_LEN: usize = 4;
/// The smallest message: a prelude and a CRC, no headers, no payload.
pub const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + MESSAGE_CRC_LEN;

/// CRC-32 (IEEE 802.3, as zlib's `crc32`), the checksum of both prelude and message.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

/// Continues a [`crc32`] over more bytes.
pub fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        let index = usize::from((c as u8) ^ b);
        c = CRC_TABLE.get(index).copied().unwrap_or(0) ^ (c >> 8);
    }
    !c
}

const CRC_TABLE: [u32; 256] = crc_table();

// `n < 256` indexes a 256-entry array; a const fn cannot use `get_mut`.
#[allow(clippy::indexing_slicing)]
const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// The first 12 bytes of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prelude {
    /// The whole message's length in bytes.
    pub total_len: u32,
    /// The headers' length in bytes.
    pub headers_len: u32,
    /// CRC-32 of the first 8 bytes.
    pub crc: u32,
}

impl Prelude {
    /// Reads a prelude from the start of `bytes` (`None` while fewer than 12 bytes are there).
    pub fn read(bytes: &[u8]) -> Option<Prelude> {
        Some(Prelude {
            total_len: be_u32(bytes, 0)?,
            headers_len: be_u32(bytes, 4)?,
            crc: be_u32(bytes, 8)?,
        })
    }

    /// Checks the CRC and that the lengths can describe a message no longer than `max_len`.
    fn check(&self, bytes: &[u8], max_len: usize) -> Result<(), FrameError> {
        if crc32(bytes.get(..8).unwrap_or(&[])) != self.crc {
            return Err(FrameError::PreludeCrc);
        }
        let total = self.total_len as usize;
        let headers = self.headers_len as usize;
        if total < MIN_MESSAGE_LEN || headers > total - MIN_MESSAGE_LEN {
            return Err(FrameError::BadLength);
        }
        if total > max_len {
            return Err(FrameError::TooLarge);
        }
        Ok(())
    }
}

/// One header's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Types 0 and 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(&'a [u8]),
    /// Type 7 (UTF-8).
    String(&'a str),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid(&'a [u8]),
}

/// One whole message whose CRCs matched.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    headers: &'a [u8],
    /// The payload (for Bedrock, JSON).
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Splits a whole, CRC-checked message into its headers and payload.
    fn split(bytes: &'a [u8], prelude: &Prelude) -> Option<Message<'a>> {
        let headers_end = PRELUDE_LEN.checked_add(prelude.headers_len as usize)?;
        let payload_end = (prelude.total_len as usize).checked_sub(MESSAGE_CRC_LEN)?;
        let message = Message {
            headers: bytes.get(PRELUDE_LEN..headers_end)?,
            payload: bytes.get(headers_end..payload_end)?,
        };
        // Headers that do not parse to their exact end make the message unreadable.
        let mut headers = message.headers();
        while headers.next().is_some() {}
        headers.rest.is_empty().then_some(message)
    }

    /// The headers, in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.headers }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.headers()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// A string header's value (`None` when absent or of another type).
    pub fn string_header(&self, name: &str) -> Option<&'a str> {
        match self.header(name)? {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// `:message-type`: `event`, `exception` or `error`.
    pub fn message_type(&self) -> Option<&'a str> {
        self.string_header(":message-type")
    }

    /// `:event-type` of an event (`messageStart`, `contentBlockDelta`, `metadata`, `chunk`…).
    pub fn event_type(&self) -> Option<&'a str> {
        self.string_header(":event-type")
    }
}

/// The headers of a [`Message`]: `(name, value)`; iteration stops at the first one that cannot
/// be read.
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], HeaderValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (&name_len, rest) = self.rest.split_first()?;
        let (name, rest) = rest.split_at_checked(usize::from(name_len))?;
        let (&kind, rest) = rest.split_first()?;
        let fixed = |n: usize| rest.split_at_checked(n);
        let be = |b: &[u8]| b.iter().fold(0u64, |n, &x| n << 8 | u64::from(x));
        let (value, rest) = match kind {
            0 => (HeaderValue::Bool(true), rest),
            1 => (HeaderValue::Bool(false), rest),
            2 => fixed(1).map(|(v, r)| (HeaderValue::Byte(be(v) as u8 as i8), r))?,
            3 => fixed(2).map(|(v, r)| (HeaderValue::Short(be(v) as u16 as i16), r))?,
            4 => fixed(4).map(|(v, r)| (HeaderValue::Int(be(v) as u32 as i32), r))?,
            5 => fixed(8).map(|(v, r)| (HeaderValue::Long(be(v) as i64), r))?,
            8 => fixed(8).map(|(v, r)| (HeaderValue::Timestamp(be(v) as i64), r))?,
            9 => fixed(16).map(|(v, r)| (HeaderValue::Uuid(v), r))?,
            6 | 7 => {
                let (len, rest) = rest.split_at_checked(2)?;
                let (v, r) = rest.split_at_checked(be(len) as usize)?;
                if kind == 6 {
                    (HeaderValue::Bytes(v), r)
                } else {
                    (HeaderValue::String(core::str::from_utf8(v).ok()?), r)
                }
            }
            _ => return None,
        };
        self.rest = rest;
        Some((name, value))
    }
}

/// Why a stream stopped being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The prelude's CRC does not match its first 8 bytes.
    PreludeCrc,
    /// The message's CRC does not match its bytes.
    MessageCrc,
    /// A total length below 16, or headers longer than the message.
    BadLength,
    /// A message longer than the decoder's limit.
    TooLarge,
    /// Headers that cannot be read to their stated end.
    BadHeaders,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::PreludeCrc => "event-stream prelude CRC mismatch",
            FrameError::MessageCrc => "event-stream message CRC mismatch",
            FrameError::BadLength => "event-stream message length out of range",
            FrameError::TooLarge => "event-stream message larger than the limit",
            FrameError::BadHeaders => "event-stream headers cannot be read",
        })
    }
}

impl core::error::Error for FrameError {}

/// Reads event-stream messages out of chunks split anywhere (see the module docs).
#[derive(Clone, Debug)]
pub struct EventStreamDecoder {
    /// Bytes of messages not yet whole.
    buf: Vec<u8>,
    max_message: usize,
    failed: Option<FrameError>,
    messages: u64,
}

impl EventStreamDecoder {
    /// A decoder refusing messages longer than `max_message` bytes (at least 16). Memory is at
    /// most one message plus a chunk.
    pub fn new(max_message: usize) -> Self {
        EventStreamDecoder {
            buf: Vec::new(),
            max_message: max_message.max(MIN_MESSAGE_LEN),
            failed: None,
            messages: 0,
        }
    }

    /// Feeds the next chunk, calling `on_message` for every message it completes. Once a
    /// message fails to decode, later input is ignored and the error is returned again.
    ///
    /// # Errors
    /// The [`FrameError`] that stopped the stream.
    pub fn push(
        &mut self,
        chunk: &[u8],
        mut on_message: impl FnMut(Message<'_>),
    ) -> Result<(), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.buf.extend_from_slice(chunk);
        let mut at = 0;
        let result = loop {
            let bytes = self.buf.get(at..).unwrap_or(&[]);
            let Some(prelude) = Prelude::read(bytes) else {
                break Ok(());
            };
            if let Err(e) = prelude.check(bytes, self.max_message) {
                break Err(e);
            }
            let total = prelude.total_len as usize;
            let Some(whole) = bytes.get(..total) else {
                break Ok(());
            };
            let (body, crc) = whole.split_at(total - MESSAGE_CRC_LEN);
            if be_u32(crc, 0) != Some(crc32(body)) {
                break Err(FrameError::MessageCrc);
            }
            let Some(message) = Message::split(whole, &prelude) else {
                break Err(FrameError::BadHeaders);
            };
            self.messages = self.messages.saturating_add(1);
            on_message(message);
            at += total;
        };
        self.buf.drain(..at.min(self.buf.len()));
        if let Err(e) = result {
            self.failed = Some(e);
            self.buf = Vec::new();
        }
        result
    }

    /// The error that stopped the stream, if one did.
    pub fn failed(&self) -> Option<FrameError> {
        self.failed
    }

    /// Bytes of an unfinished message held (a stream that ends with some was cut mid-message).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Messages decoded so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

/// Encodes one message with string headers (the tests' and the fixtures' writer).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = (MIN_MESSAGE_LEN + h.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::String;

    use super::*;

    /// `(event type, payload)` of each message, the error, the bytes left pending.
    type Decoded = (Vec<(String, Vec<u8>)>, Option<FrameError>, usize);

    fn decode_all(chunks: &[&[u8]]) -> Decoded {
        let mut d = EventStreamDecoder::new(1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            let _ = d.push(chunk, |m| {
                out.push((m.event_type().unwrap_or("").into(), m.payload.to_vec()));
            });
        }
        (out, d.failed(), d.pending())
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn a_message_round_trips_at_every_split() {
        let mut stream = encode(
            &[(":event-type", "messageStart"), (":message-type", "event")],
            br#"{"role":"assistant"}"#,
        );
        stream.extend(encode(&[(":event-type", "metadata")], b"{}"));
        let whole = decode_all(&[&stream]);
        assert_eq!(whole.0.len(), 2);
        assert_eq!(
            whole.0[0],
            ("messageStart".into(), br#"{"role":"assistant"}"#.to_vec())
        );
        assert_eq!((whole.1, whole.2), (None, 0));
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(decode_all(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes), whole);
    }

    #[test]
    fn typed_headers_are_read() {
        // name, type, value for each type, then a payload.
        let mut h = Vec::new();
        let mut add = |name: &str, kind: u8, value: &[u8]| {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(kind);
            h.extend_from_slice(value);
        };
        add("t", 0, &[]);
        add("f", 1, &[]);
        add("b", 2, &[0xFF]);
        add("s", 3, &[0x01, 0x02]);
        add("i", 4, &[0, 0, 1, 0]);
        add("l", 5, &[0, 0, 0, 0, 0, 0, 0, 7]);
        add("x", 6, &[0, 2, 0xAB, 0xCD]);
        add("ts", 8, &[0, 0, 0, 0, 0, 0, 0, 9]);
        add("u", 9, &[1; 16]);
        let total = (MIN_MESSAGE_LEN + h.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&total.to_be_bytes());
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32(&m);
        m.extend_from_slice(&c.to_be_bytes());
        m.extend_from_slice(&h);
        let c = crc32(&m);
        m.extend_from_slice(&c.to_be_bytes());
        let mut seen = Vec::new();
        let mut d = EventStreamDecoder::new(1024);
        d.push(&m, |msg| {
            seen.extend(msg.headers().map(|(_, v)| format_value(v)))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "true",
                "false",
                "-1",
                "258",
                "256",
                "7",
                "[171, 205]",
                "ts 9",
                "uuid 16"
            ]
        );
    }

    fn format_value(v: HeaderValue<'_>) -> String {
        match v {
            HeaderValue::Bool(b) => alloc::format!("{b}"),
            HeaderValue::Byte(n) => alloc::format!("{n}"),
            HeaderValue::Short(n) => alloc::format!("{n}"),
            HeaderValue::Int(n) => alloc::format!("{n}"),
            HeaderValue::Long(n) => alloc::format!("{n}"),
            HeaderValue::Bytes(b) => alloc::format!("{b:?}"),
            HeaderValue::String(s) => s.into(),
            HeaderValue::Timestamp(t) => alloc::format!("ts {t}"),
            HeaderValue::Uuid(u) => alloc::format!("uuid {}", u.len()),
        }
    }

    #[test]
    fn a_corrupted_message_stops_the_stream() {
        let good = encode(&[(":event-type", "a")], b"{}");
        for (at, error) in [
            (0, FrameError::PreludeCrc),
            (9, FrameError::PreludeCrc),
            (14, FrameError::MessageCrc),
            (good.len() - 1, FrameError::MessageCrc),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let mut stream = good.clone();
            stream.extend(&bad);
            stream.extend(&good);
            let (seen, failed, _) = decode_all(&[&stream]);
            assert_eq!((seen.len(), failed), (1, Some(error)), "byte {at}");
        }
        // Lengths that cannot be, with a prelude CRC that matches them.
        for (total, headers, error) in [
            (15u32, 0u32, FrameError::BadLength),
            (20, 5, FrameError::BadLength),
            (2000, 0, FrameError::TooLarge),
        ] {
            let mut m = Vec::new();
            m.extend_from_slice(&total.to_be_bytes());
            m.extend_from_slice(&headers.to_be_bytes());
            let c = crc32(&m);
            m.extend_from_slice(&c.to_be_bytes());
            let mut d = EventStreamDecoder::new(1024);
            assert_eq!(d.push(&m, |_| {}), Err(error));
            assert_eq!(d.push(&good, |_| {}), Err(error), "stays stopped");
        }
        // Headers that run past their length.
        let mut m = Vec::new();
        let h = [5u8, b'a', 7, 0, 9];
        let total = (MIN_MESSAGE_LEN + h.len()) as u32;
        m.extend_from_slice(&total.to_be_bytes());
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32(&m);
        m.extend_from_slice(&c.to_be_bytes());
        m.extend_from_slice(&h);
        let c = crc32(&m);
        m.extend_from_slice(&c.to_be_bytes());
        assert_eq!(
            EventStreamDecoder::new(1024).push(&m, |_| {}),
            Err(FrameError::BadHeaders)
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut d = EventStreamDecoder::new(256);
                let _ = d.push(&bytes, |m| { let _ = m.headers().count(); });
                prop_assert!(d.pending() <= 300);
            }
        }
    }
}
