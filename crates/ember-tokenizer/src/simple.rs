//! The book's chapter 2 word-level tokenizers (`SimpleTokenizerV1` and `SimpleTokenizerV2`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;

use crate::{END_OF_TEXT, Tokenizer, TokenizerError};

/// The `<|unk|>` token that [`SimpleTokenizerV2`] substitutes for unknown words.
pub const UNKNOWN: &str = "<|unk|>";

fn split_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r#"([,.:;?_!"()']|--|\s)"#).expect("valid regex"))
}

fn cleanup_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r#"\s+([,.?!"()'])"#).expect("valid regex"))
}

/// Splits text like the book: `re.split(r'([,.:;?_!"()\']|--|\s)', text)`, strips every piece and
/// drops the empty ones.
pub fn simple_split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut last = 0;
    for m in split_regex().find_iter(text) {
        for piece in [&text[last..m.start()], m.as_str()] {
            let piece = piece.trim();
            if !piece.is_empty() {
                out.push(piece);
            }
        }
        last = m.end();
    }
    let tail = text[last..].trim();
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

/// Joins tokens with spaces and removes the spaces before punctuation (the book's decode).
fn join_tokens<'a>(tokens: impl Iterator<Item = &'a str>) -> String {
    let joined = tokens.collect::<Vec<_>>().join(" ");
    cleanup_regex().replace_all(&joined, "$1").into_owned()
}

/// A word → id vocabulary with its inverse.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vocab {
    str_to_int: BTreeMap<String, u32>,
    int_to_str: Vec<String>,
}

impl Vocab {
    fn build(text: &str, extra: &[&str]) -> Self {
        let mut words: Vec<String> = simple_split(text).into_iter().map(str::to_owned).collect();
        words.sort_unstable();
        words.dedup();
        for e in extra {
            words.push((*e).to_owned());
        }
        let str_to_int = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Self {
            str_to_int,
            int_to_str: words,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let tokens = ids
            .iter()
            .map(|&id| {
                self.int_to_str
                    .get(id as usize)
                    .map(String::as_str)
                    .ok_or(TokenizerError::UnknownId(id))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(join_tokens(tokens.into_iter()))
    }
}

/// Book listing 2.3: a word-level tokenizer whose vocabulary is built from a text. Encoding a word
/// outside the vocabulary is an error ([`TokenizerError::UnknownToken`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleTokenizerV1 {
    vocab: Vocab,
}

impl SimpleTokenizerV1 {
    /// Builds the vocabulary from `text`: the sorted unique pieces of [`simple_split`], ids `0..`.
    pub fn from_text(text: &str) -> Self {
        Self {
            vocab: Vocab::build(text, &[]),
        }
    }

    /// The vocabulary (word → id).
    pub fn vocab(&self) -> &BTreeMap<String, u32> {
        &self.vocab.str_to_int
    }

    /// The word for `id`, if any.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.int_to_str.get(id as usize).map(String::as_str)
    }
}

impl Tokenizer for SimpleTokenizerV1 {
    /// Encodes `text`; `allow_special` is irrelevant (V1 has no special tokens).
    fn encode(&self, text: &str, _allow_special: bool) -> Result<Vec<u32>, TokenizerError> {
        simple_split(text)
            .into_iter()
            .map(|w| {
                self.vocab
                    .str_to_int
                    .get(w)
                    .copied()
                    .ok_or_else(|| TokenizerError::UnknownToken(w.to_owned()))
            })
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.vocab.decode(ids)
    }

    fn vocab_size(&self) -> usize {
        self.vocab.int_to_str.len()
    }
}

/// Book listing 2.4: like [`SimpleTokenizerV1`] plus two special tokens appended to the
/// vocabulary, `<|endoftext|>` and `<|unk|>` (in that order); unknown words encode to `<|unk|>`.
///
/// Follows the crate's special-token policy: with `allow_special = false`, text containing
/// `<|endoftext|>` is rejected with [`TokenizerError::SpecialTokenNotAllowed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleTokenizerV2 {
    vocab: Vocab,
}

impl SimpleTokenizerV2 {
    /// Builds the vocabulary from `text`, then appends `<|endoftext|>` and `<|unk|>`.
    pub fn from_text(text: &str) -> Self {
        Self {
            vocab: Vocab::build(text, &[END_OF_TEXT, UNKNOWN]),
        }
    }

    /// The vocabulary (word → id), including the two special tokens.
    pub fn vocab(&self) -> &BTreeMap<String, u32> {
        &self.vocab.str_to_int
    }

    /// The word for `id`, if any.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.int_to_str.get(id as usize).map(String::as_str)
    }

    /// The id of `<|unk|>`.
    pub fn unk_id(&self) -> u32 {
        self.vocab.str_to_int[UNKNOWN]
    }

    /// The id of `<|endoftext|>`.
    pub fn end_of_text_id(&self) -> u32 {
        self.vocab.str_to_int[END_OF_TEXT]
    }
}

impl Tokenizer for SimpleTokenizerV2 {
    fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>, TokenizerError> {
        if !allow_special && text.contains(END_OF_TEXT) {
            return Err(TokenizerError::SpecialTokenNotAllowed {
                token: END_OF_TEXT.to_owned(),
            });
        }
        let unk = self.unk_id();
        Ok(simple_split(text)
            .into_iter()
            .map(|w| self.vocab.str_to_int.get(w).copied().unwrap_or(unk))
            .collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.vocab.decode(ids)
    }

    fn vocab_size(&self) -> usize {
        self.vocab.int_to_str.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_python() {
        assert_eq!(
            simple_split("Hello, world. Is this-- a test?"),
            [
                "Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"
            ]
        );
        assert!(simple_split("   \n ").is_empty());
    }

    #[test]
    fn small_vocab() {
        let tok = SimpleTokenizerV1::from_text("b a, c a");
        assert_eq!(tok.vocab_size(), 4);
        assert_eq!(tok.vocab()[","], 0);
        assert_eq!(tok.vocab()["a"], 1);
        assert_eq!(tok.encode("a, b", false).unwrap(), [1, 0, 2]);
        assert_eq!(tok.decode(&[1, 0, 2]).unwrap(), "a, b");
        assert!(matches!(
            tok.encode("d", false),
            Err(TokenizerError::UnknownToken(ref w)) if w == "d"
        ));
        assert!(matches!(
            tok.decode(&[9]),
            Err(TokenizerError::UnknownId(9))
        ));
    }

    #[test]
    fn v2_unknown_and_special() {
        let tok = SimpleTokenizerV2::from_text("b a");
        assert_eq!(tok.end_of_text_id(), 2);
        assert_eq!(tok.unk_id(), 3);
        assert_eq!(tok.encode("a zzz <|endoftext|>", true).unwrap(), [0, 3, 2]);
        assert!(tok.encode("a <|endoftext|>", false).is_err());
        assert_eq!(tok.decode(&[0, 3, 2]).unwrap(), "a <|unk|> <|endoftext|>");
    }
}
