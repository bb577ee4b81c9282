//! A streamed JSON array, one line per element: Gemini's `:streamGenerateContent` without
//! `alt=sse` answers `[{…},\r\n{…}]`, each element a whole `GenerateContentResponse`, pretty
//! printed over many lines.
//!
//! [`ArrayLines`] rewrites such a stream, chunk by chunk (split anywhere), into NDJSON — each
//! element on a line of its own — so that the one line-based scanner reads it. Outside a JSON
//! string a line break is only whitespace, and inside one it cannot occur unescaped, so the
//! element's line breaks become spaces without changing what it says. The brackets and commas
//! between elements are dropped. Output is never longer than input plus one byte per element;
//! state is a few flags and a depth counter, so any input is handled in linear time.

use alloc::vec::Vec;

/// Where the reader is in the array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Place {
    /// Before the array's `[`.
    #[default]
    Start,
    /// Between elements (after `[` or a `,`).
    Between,
    /// Inside an element, `depth` brackets or braces deep (0: a scalar element).
    Element,
    /// After the closing `]`: whatever follows is ignored.
    End,
}

/// Turns a streamed JSON array into one element per line (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct ArrayLines {
    place: Place,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl ArrayLines {
    /// Appends to `out` what `chunk` contributes to the NDJSON stream.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            match self.place {
                Place::Start => {
                    if b == b'[' {
                        self.place = Place::Between;
                    }
                }
                Place::Between => match b {
                    b']' => self.place = Place::End,
                    b',' | b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => {
                        self.place = Place::Element;
                        self.depth = 0;
                        self.element_byte(b, out);
                    }
                },
                Place::Element => self.element_byte(b, out),
                Place::End => {}
            }
        }
    }

    /// One byte of an element. An element ends when its last bracket closes; a scalar
    /// element (not produced by any API) ends at the `,` or `]` after it.
    fn element_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.in_string {
            out.push(b);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                out.push(b);
            }
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                out.push(b);
                if self.depth == 0 {
                    out.push(b'\n');
                    self.place = Place::Between;
                }
            }
            b',' | b']' if self.depth == 0 => {
                out.push(b'\n');
                self.place = if b == b']' {
                    Place::End
                } else {
                    Place::Between
                };
            }
            b'\r' | b'\n' => out.push(b' '),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn lines(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ArrayLines::default().push(input, &mut out);
        out
    }

    #[test]
    fn elements_become_lines() {
        assert_eq!(
            lines(b"[{\"a\": \"x]},\\\"\\n\",\r\n \"b\": [1,\n2]}\n,\r\n{}\n]\n{\"after\":1}"),
            b"{\"a\": \"x]},\\\"\\n\",   \"b\": [1, 2]}\n{}\n".to_vec()
        );
        assert_eq!(lines(b"[]"), b"".to_vec());
        assert_eq!(lines(b"[1, 2]"), b"1\n2\n".to_vec());
        assert_eq!(lines(b"{\"not\":\"an array\"}"), b"".to_vec());
    }

    #[test]
    fn any_split_gives_the_same_lines() {
        let input: &[u8] = b"[{\"t\": \"a\\\"]\"},\n{\"u\": {\"v\": [1]}}]";
        let whole = lines(input);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            let mut reader = ArrayLines::default();
            let mut out = Vec::new();
            reader.push(a, &mut out);
            reader.push(b, &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }
}
