//! Decoding tokens one at a time into text that can be shown at once.
//!
//! A byte-level token may end inside a UTF-8 character (an emoji is often three or four
//! tokens), and a model may produce bytes that are no valid UTF-8 at all. A
//! [`TextStream`] lets through whole characters only, waits for the rest of one that
//! is incomplete, and replaces an invalid sequence with U+FFFD as soon as it is known
//! to be invalid, so one bad byte never holds back the text after it.

use crate::ModelTokenizer;

/// Streams a model's tokens as text.
pub struct TextStream<'a> {
    tokenizer: &'a ModelTokenizer,
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tokenizer`.
    pub fn new(tokenizer: &'a ModelTokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// The text `id` completes (possibly none).
    pub fn push(&mut self, id: u32) -> String {
        if let Ok(bytes) = self.tokenizer.decode_bytes(&[id]) {
            self.pending.extend(bytes);
        }
        drain_utf8(&mut self.pending)
    }

    /// What is left at the end: an incomplete character, replaced.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Takes the decodable text off the front of `bytes`: valid characters, and U+FFFD for
/// each invalid sequence; an incomplete character at the end stays.
pub fn drain_utf8(bytes: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut used = 0;
    loop {
        match std::str::from_utf8(&bytes[used..]) {
            Ok(rest) => {
                text.push_str(rest);
                used = bytes.len();
                break;
            }
            Err(e) => {
                let valid = used + e.valid_up_to();
                text.push_str(std::str::from_utf8(&bytes[used..valid]).expect("valid prefix"));
                match e.error_len() {
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        used = valid + bad;
                    }
                    None => {
                        used = valid;
                        break;
                    }
                }
            }
        }
    }
    bytes.drain(..used);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_characters_wait_and_invalid_bytes_do_not_block() {
        let mut bytes = vec![b'a', 0xF0, 0x9F];
        assert_eq!(drain_utf8(&mut bytes), "a");
        assert_eq!(bytes, [0xF0, 0x9F]);
        bytes.extend([0x99, 0x82, b'b']);
        assert_eq!(drain_utf8(&mut bytes), "🙂b");
        // A lone continuation byte, then text: replaced at once, the text follows.
        let mut bytes = vec![0x80, b'x', 0xFF, b'y', 0xE6];
        assert_eq!(drain_utf8(&mut bytes), "\u{FFFD}x\u{FFFD}y");
        assert_eq!(bytes, [0xE6]);
    }

    #[test]
    fn a_stream_of_gpt2_tokens_gives_back_the_text() {
        let tokenizer = ModelTokenizer::gpt2().unwrap();
        let text = "naïve 日本語 🙂 done";
        let mut stream = TextStream::new(&tokenizer);
        let mut out = String::new();
        for id in tokenizer.encode(text).unwrap() {
            out += &stream.push(id);
        }
        out += &stream.finish();
        assert_eq!(out, text);
    }
}
