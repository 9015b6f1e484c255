//! Text that is safe to send while tokens arrive: whole UTF-8 characters, never the
//! beginning of a stop string that the next token might complete.

use ember_tokenizer::{ModelTokenizer, TextStream};

/// Decodes tokens into text that is safe to send: whole UTF-8 characters, and never
/// the beginning of a stop string that the next token might complete. When a stop
/// string appears, the text ends before it.
pub struct StopText<'a> {
    decoded: TextStream<'a>,
    stops: Vec<String>,
    text: String,
    sent: usize,
}

impl<'a> StopText<'a> {
    /// A decoder that stops at any of `stops` (empty strings are ignored).
    pub fn new(tokenizer: &'a ModelTokenizer, stops: Vec<String>) -> Self {
        Self {
            decoded: TextStream::new(tokenizer),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
        }
    }

    /// The text `id` lets through, and whether a stop string has now appeared.
    pub fn push(&mut self, id: u32) -> (String, bool) {
        let start_search = self
            .text
            .len()
            .saturating_sub(self.longest_stop().saturating_sub(1));
        let piece = self.decoded.push(id);
        self.text.push_str(&piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[floor_char(&self.text, start_search)..].find(s.as_str()))
            .min()
            .map(|at| floor_char(&self.text, start_search) + at);
        if let Some(at) = hit {
            self.text.truncate(at);
            let piece = self.text[self.sent.min(at)..].to_string();
            self.sent = self.text.len();
            return (piece, true);
        }
        // Hold back what could still become a stop string.
        let keep = self.longest_stop().saturating_sub(1);
        let safe = floor_char(&self.text, self.text.len().saturating_sub(keep)).max(self.sent);
        let piece = self.text[self.sent..safe].to_string();
        self.sent = safe;
        (piece, false)
    }

    /// What is left at the end: held-back text and an incomplete character, replaced.
    pub fn finish(&mut self) -> String {
        let mut rest = self.text[self.sent..].to_string();
        rest.push_str(&self.decoded.finish());
        self.sent = self.text.len();
        rest
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

/// The largest character boundary of `s` at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds GPT-2 tokens of `text` one by one; returns what was let through each time.
    fn pieces(text: &str, stops: &[&str]) -> (Vec<String>, bool, String) {
        let tokenizer = ModelTokenizer::gpt2().unwrap();
        let ids = tokenizer.encode(text).unwrap();
        let mut stream = StopText::new(&tokenizer, stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for id in ids {
            let (piece, stopped) = stream.push(id);
            out.push(piece);
            if stopped {
                return (out, true, String::new());
            }
        }
        let rest = stream.finish();
        (out, false, rest)
    }

    #[test]
    fn text_stops_before_a_stop_string_even_across_tokens() {
        let (out, stopped, _) = pieces("Hello world. ### Response: more", &["###"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello world. ");
        // Split over tokens: " Resp" + "onse".
        let (out, stopped, _) = pieces("Answer: yes\nResponse: no", &["\nResponse"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Answer: yes");
        let (out, stopped, rest) = pieces("no stop here", &["zzz"]);
        assert!(!stopped);
        assert_eq!(out.concat() + &rest, "no stop here");
    }

    #[test]
    fn characters_split_over_tokens_come_out_whole() {
        let (out, _, rest) = pieces("naïve 日本語 🙂", &[]);
        assert_eq!(out.concat() + &rest, "naïve 日本語 🙂");
        assert!(
            out.iter()
                .all(|p| std::str::from_utf8(p.as_bytes()).is_ok())
        );
    }
}
