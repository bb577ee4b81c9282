//! The generated text: deterministic, 4 ASCII characters per completion token, streamed in at
//! most [`MAX_DELTAS`] deltas of whole tokens, so a byte count of the streamed text gives back
//! the token count.

/// Characters of generated text per completion token.
pub const CHARS_PER_TOKEN: u64 = 4;
/// The generated text is streamed in at most this many deltas.
pub const MAX_DELTAS: u64 = 10;

/// `tokens` × [`CHARS_PER_TOKEN`] ASCII characters that need no escaping.
pub fn completion_text(tokens: u64) -> String {
    const WORDS: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do ";
    let len = usize::try_from(tokens.saturating_mul(CHARS_PER_TOKEN)).unwrap_or(usize::MAX);
    WORDS.chars().cycle().take(len).collect()
}

/// The text in deltas: at most [`MAX_DELTAS`], each a whole number of tokens.
pub fn deltas(text: &str) -> Vec<&str> {
    let tokens = (text.len() as u64).div_ceil(CHARS_PER_TOKEN);
    let per = tokens.div_ceil(MAX_DELTAS).max(1);
    let size = usize::try_from(per * CHARS_PER_TOKEN).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // ASCII only, so every index is a character boundary; `get` keeps that from mattering.
        let at = size.min(rest.len());
        let (Some(head), Some(tail)) = (rest.get(..at), rest.get(at..)) else {
            out.push(rest);
            break;
        };
        out.push(head);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_whole_tokens_and_few() {
        let text = completion_text(200);
        assert_eq!(text.len(), 800);
        let d = deltas(&text);
        assert_eq!(d.len(), 10);
        assert!(d.iter().all(|p| p.len() == 80));
        assert_eq!(deltas(&completion_text(3)).len(), 3);
        assert!(deltas("").is_empty());
    }
}
