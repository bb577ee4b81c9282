//! Finding where things end in JSON text, for the code that edits bodies byte-exactly.
//!
//! serde reads what a value *means*; the rewriters ([`super::rewrite`] takes a request's
//! `stream_options`, [`super::added_usage`] takes a stream event's `usage`) also need where
//! each member of an object *sits*, to cut or change it without moving any other byte. A
//! [`Cursor`] walks the text structurally: strings (escapes included), containers by depth,
//! scalars up to their delimiter. It does not validate: callers hand it text serde has already
//! accepted, or treat a `None` as "not JSON". The walk is iterative, so nesting cannot exhaust
//! the stack, and it never reads past the end of the text.

use core::ops::Range;

use alloc::string::String;
use alloc::vec::Vec;

/// One member of a JSON object: where its key's characters (between the quotes) and its value
/// sit in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) key: Range<usize>,
    pub(crate) value: Range<usize>,
}

impl Member {
    /// The key with its quotes.
    pub(crate) fn quoted_key(&self) -> Range<usize> {
        self.key.start.saturating_sub(1)..self.key.end.saturating_add(1)
    }

    /// The key's raw bytes are exactly `name` (a key spelled with escapes is not matched).
    pub(crate) fn key_is_raw(&self, text: &[u8], name: &[u8]) -> bool {
        text.get(self.key.clone()) == Some(name)
    }

    /// The key spells `name` once its escapes are decoded (`"\u0069nclude_usage"` is
    /// `include_usage`), as any JSON parser reads it.
    pub(crate) fn key_is(&self, text: &[u8], name: &str) -> bool {
        let Some(raw) = text.get(self.key.clone()) else {
            return false;
        };
        if !raw.contains(&b'\\') {
            return raw == name.as_bytes();
        }
        text.get(self.quoted_key())
            .and_then(|quoted| serde_json::from_slice::<String>(quoted).ok())
            .is_some_and(|key| key == name)
    }
}

/// The members of the object that `text` is (leading white space allowed), in order; `None`
/// when the text does not start with a JSON object. What follows the object is not looked at.
pub(crate) fn object_members(text: &[u8]) -> Option<Vec<Member>> {
    let mut cursor = Cursor::new(text);
    cursor.ws();
    cursor.object_members()
}

/// A position in JSON text. See the module docs.
pub(crate) struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub(crate) fn new(text: &'a [u8]) -> Self {
        Cursor { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn bump(&mut self) {
        self.at = self.at.saturating_add(1);
    }

    /// Skips JSON white space.
    pub(crate) fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.bump())
    }

    /// At a `"`: skips the string, returning the range of its contents.
    pub(crate) fn string(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match self.peek()? {
                b'"' => {
                    let end = self.at;
                    self.bump();
                    return Some(start..end);
                }
                b'\\' => {
                    self.bump();
                    self.bump();
                }
                _ => self.bump(),
            }
        }
    }

    /// Skips one value of any type, returning its range (`None` where there is none).
    pub(crate) fn value(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth = depth.saturating_add(1),
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.bump();
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.bump();
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.bump();
                }
            }
        }
        (self.at > start).then_some(start..self.at)
    }

    /// At a `{`: the object's members, leaving the cursor after its `}`.
    pub(crate) fn object_members(&mut self) -> Option<Vec<Member>> {
        self.eat(b'{')?;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(members);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value = self.value()?;
            members.push(Member { key, value });
            self.ws();
            match self.peek()? {
                b',' => self.bump(),
                b'}' => {
                    self.bump();
                    return Some(members);
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn texts<'a>(text: &'a [u8], members: &[Member]) -> Vec<(&'a [u8], &'a [u8])> {
        members
            .iter()
            .map(|m| (&text[m.key.clone()], &text[m.value.clone()]))
            .collect()
    }

    #[test]
    fn members_of_every_value_type_are_found_where_they_sit() {
        let text = br#" { "a" : "x\"}" , "b":[1,{"c":"]"}] ,"d":-1.5e3,"e":null,"\u0066":{}} "#;
        let members = object_members(text).unwrap();
        assert_eq!(
            texts(text, &members),
            [
                (&b"a"[..], &br#""x\"}""#[..]),
                (b"b", br#"[1,{"c":"]"}]"#),
                (b"d", b"-1.5e3"),
                (b"e", b"null"),
                (br"\u0066", b"{}"),
            ]
        );
        assert_eq!(&text[members[0].quoted_key()], b"\"a\"");
        assert!(members[4].key_is(text, "f"));
        assert!(!members[4].key_is_raw(text, b"f"));
        assert!(members[3].key_is_raw(text, b"e"));
        assert_eq!(object_members(b"{}"), Some(Vec::new()));
    }

    #[test]
    fn text_that_is_not_an_object_has_no_members() {
        for text in [
            &b"[1]"[..],
            b"",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":[1,2}",
        ] {
            assert_eq!(
                object_members(text),
                None,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        let mut text = Vec::from(&b"{\"a\":"[..]);
        text.extend(core::iter::repeat_n(b'[', 100_000));
        text.extend(core::iter::repeat_n(b']', 100_000));
        text.push(b'}');
        let members = object_members(&text).unwrap();
        assert_eq!(members[0].value.len(), 200_000);
    }
}
