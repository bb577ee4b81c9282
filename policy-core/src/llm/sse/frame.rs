//! Cuts a Server-Sent Events body into whole events as it streams by, so that a filter can
//! rewrite an event without ever forwarding half of it.
//!
//! An event ends at an empty line; lines end with `\n`, `\r\n` or `\r`. Chunks may split the
//! body anywhere, so the start of an event whose end has not arrived is held back (at most
//! [`SseFramer::new`]'s bound) and handed out whole once its blank line arrives. A `\r` that
//! is the last byte seen is held too, until the next byte says whether a `\n` completes it.
//!
//! An event that outgrows the bound is not held any longer: what was held and the rest of that
//! event up to its end go out as [`Piece::Raw`], unchanged, and framing resumes after it. So
//! memory stays bounded and no byte is lost or reordered; the event is simply not offered for
//! rewriting. [`SseFramer::finish`] hands out whatever is still held (a stream that ended inside
//! an event) as raw bytes, unchanged.
//!
//! This module knows nothing of what the events mean; see [`crate::llm::added_usage`].

use alloc::vec::Vec;

use super::find_eol;

/// A piece of the body, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One whole event, from its first byte through the line end of its closing blank line.
    Event(&'a [u8]),
    /// Bytes to pass on as they are: an event too large to hold, or the unfinished end of a
    /// stream.
    Raw(&'a [u8]),
}

/// Frames one SSE body. See the module docs.
#[derive(Debug)]
pub struct SseFramer {
    max: usize,
    /// The start of an event whose end has not arrived.
    held: Vec<u8>,
    /// Where scanning resumes in `held`.
    scan: usize,
    /// `scan` is at the start of a line.
    line_start: bool,
    /// The current event outgrew `max`: its bytes go out raw until its blank line.
    passthrough: bool,
    /// The last byte handed out was a `\r` ending a line: a `\n` next completes it.
    pending_cr: bool,
}

impl SseFramer {
    /// A framer holding back at most `max_event_bytes` of an unfinished event.
    pub fn new(max_event_bytes: usize) -> Self {
        SseFramer {
            max: max_event_bytes,
            held: Vec::new(),
            scan: 0,
            line_start: true,
            passthrough: false,
            pending_cr: false,
        }
    }

    /// Whether the next byte starts an event: nothing held, no event passing through, no `\r`
    /// waiting for its `\n`.
    pub fn at_event_start(&self) -> bool {
        self.held.is_empty() && self.line_start && !self.passthrough && !self.pending_cr
    }

    /// Bytes held back, waiting for the rest of their event.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes the next chunk; hands `sink` every piece that is ready, in order.
    pub fn push(&mut self, chunk: &[u8], sink: &mut impl FnMut(Piece<'_>)) {
        let mut rest = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                sink(Piece::Raw(b"\n"));
                rest = tail;
            }
        }
        if self.passthrough {
            let used = self.pass_through(rest);
            let (through, after) = rest.split_at_checked(used).unwrap_or((rest, &[]));
            sink(Piece::Raw(through));
            rest = after;
            if self.passthrough {
                return;
            }
        }
        if rest.is_empty() {
            return;
        }
        self.held.extend_from_slice(rest);
        self.frame(sink);
    }

    /// The body ended: hands out what is still held, unchanged.
    pub fn finish(&mut self, sink: &mut impl FnMut(Piece<'_>)) {
        // Held only for want of the byte after its last `\r`: a whole event.
        let whole = self.line_start && self.held.get(self.scan..) == Some(b"\r");
        if whole && self.held.len() <= self.max {
            sink(Piece::Event(&self.held));
        } else if !self.held.is_empty() {
            sink(Piece::Raw(&self.held));
        }
        self.held.clear();
        self.scan = 0;
        self.line_start = true;
        self.passthrough = false;
        self.pending_cr = false;
    }

    /// Hands out every whole event in `held`; keeps the unfinished rest, or lets it go raw when
    /// it outgrew the bound.
    fn frame(&mut self, sink: &mut impl FnMut(Piece<'_>)) {
        let mut start = 0usize;
        let mut waiting_on_cr = false;
        while let Some(rest) = self.held.get(self.scan..) {
            if self.line_start {
                let end = match rest {
                    [] => break,
                    [b'\n', ..] | [b'\r', b'\n', ..] | [b'\r', _, ..] => {
                        let len = if rest.starts_with(b"\r\n") { 2 } else { 1 };
                        self.scan + len
                    }
                    [b'\r'] => {
                        waiting_on_cr = true;
                        break;
                    }
                    _ => {
                        self.line_start = false;
                        continue;
                    }
                };
                // A blank line: the event is whole. One larger than the bound goes out raw
                // even when it arrived in one chunk, so that chunking never changes the result.
                if let Some(event) = self.held.get(start..end) {
                    if event.len() > self.max {
                        sink(Piece::Raw(event));
                    } else {
                        sink(Piece::Event(event));
                    }
                }
                start = end;
                self.scan = end;
                continue;
            }
            match find_eol(rest) {
                None => {
                    self.scan = self.held.len();
                    break;
                }
                Some(i) => {
                    let at = self.scan + i;
                    let after = match (self.held.get(at), self.held.get(at + 1)) {
                        (Some(b'\r'), None) => {
                            // `\r` or `\r\n`? The next byte tells.
                            self.scan = at;
                            waiting_on_cr = true;
                            break;
                        }
                        (Some(b'\r'), Some(b'\n')) => at + 2,
                        _ => at + 1,
                    };
                    self.scan = after;
                    self.line_start = true;
                }
            }
        }
        self.held.drain(..start);
        self.scan -= start;
        if self.held.len() > self.max {
            // Too large to hold: out it goes as it is; the rest of the event follows raw.
            sink(Piece::Raw(&self.held));
            if waiting_on_cr {
                // The held `\r` ended a line (blank or not).
                let blank = self.line_start;
                self.pending_cr = true;
                self.line_start = true;
                self.passthrough = !blank;
            } else {
                self.passthrough = true;
            }
            self.held.clear();
            self.scan = 0;
        }
    }

    /// In an event too large to hold: how much of `bytes` belongs to it (through the line end
    /// of its blank line, or all of it). Leaves `passthrough` set while the event goes on.
    fn pass_through(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0usize;
        loop {
            let Some(rest) = bytes.get(i..) else {
                return bytes.len();
            };
            if self.line_start {
                match rest {
                    [] => return i,
                    [b'\r'] => {
                        self.pending_cr = true;
                        self.passthrough = false;
                        return i + 1;
                    }
                    [b'\r', b'\n', ..] => {
                        self.passthrough = false;
                        return i + 2;
                    }
                    [b'\r', ..] | [b'\n', ..] => {
                        self.passthrough = false;
                        return i + 1;
                    }
                    _ => self.line_start = false,
                }
            }
            match find_eol(rest) {
                None => return bytes.len(),
                Some(j) => {
                    let at = i + j;
                    match (bytes.get(at), bytes.get(at + 1)) {
                        (Some(b'\r'), None) => {
                            self.pending_cr = true;
                            self.line_start = true;
                            return bytes.len();
                        }
                        (Some(b'\r'), Some(b'\n')) => i = at + 2,
                        _ => i = at + 1,
                    }
                    self.line_start = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec::Vec;

    use super::*;

    /// What came out: each event or raw run as (is_event, bytes).
    fn frame(max: usize, chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut f = SseFramer::new(max);
        let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut sink = |p: Piece<'_>| match p {
            Piece::Event(e) => out.push((true, e.to_vec())),
            Piece::Raw(r) if !r.is_empty() => match out.last_mut() {
                Some((false, prev)) => prev.extend_from_slice(r),
                _ => out.push((false, r.to_vec())),
            },
            Piece::Raw(_) => {}
        };
        for c in chunks {
            f.push(c, &mut sink);
            assert!(f.held() <= max);
        }
        f.finish(&mut sink);
        out
    }

    fn joined(out: &[(bool, Vec<u8>)]) -> Vec<u8> {
        out.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }

    fn every_split(max: usize, body: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let whole = frame(max, &[body]);
        assert_eq!(joined(&whole), body);
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(frame(max, &[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(frame(max, &bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn events_come_out_whole_whatever_the_split_and_line_ends() {
        for body in [
            &b"data: a\n\nevent: x\ndata: b\n\n: c\n\ndata: [DONE]\n\n"[..],
            b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\ndata: b\n\r\n",
        ] {
            let out = every_split(1 << 10, body);
            assert!(out.iter().all(|(event, _)| *event), "{out:?}");
            assert!(out.len() >= 2);
        }
        let out = every_split(1 << 10, b"data: a\n\ndata: b\n\n");
        assert_eq!(
            out,
            [
                (true, b"data: a\n\n".to_vec()),
                (true, b"data: b\n\n".to_vec())
            ]
        );
    }

    #[test]
    fn an_unfinished_last_event_comes_out_raw_at_the_end() {
        let out = every_split(1 << 10, b"data: a\n\ndata: {\"cut");
        assert_eq!(
            out,
            [
                (true, b"data: a\n\n".to_vec()),
                (false, b"data: {\"cut".to_vec())
            ]
        );
    }

    #[test]
    fn an_event_larger_than_the_bound_passes_raw_and_framing_resumes_after_it() {
        for nl in ["\n", "\r\n", "\r"] {
            let big = alloc::format!("data: {}{nl}data: more{nl}{nl}", "x".repeat(100));
            let body = alloc::format!("data: a{nl}{nl}{big}data: b{nl}{nl}");
            let out = every_split(40, body.as_bytes());
            assert_eq!(out.first().map(|o| o.0), Some(true));
            assert_eq!(
                out.last(),
                Some(&(true, alloc::format!("data: b{nl}{nl}").into_bytes()))
            );
            let raw: Vec<u8> = out
                .iter()
                .filter(|o| !o.0)
                .flat_map(|o| o.1.clone())
                .collect();
            assert_eq!(raw, big.as_bytes(), "{nl:?}");
        }
    }

    #[test]
    fn memory_stays_bounded_on_an_endless_event() {
        let mut f = SseFramer::new(64);
        let mut out = 0usize;
        for _ in 0..10_000 {
            f.push(
                b"data: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                &mut |p| {
                    let (Piece::Raw(r) | Piece::Event(r)) = p;
                    out += r.len();
                },
            );
            assert!(f.held() <= 64);
        }
        assert!(out >= 10_000 * 45 - 64 - 45);
    }
}
