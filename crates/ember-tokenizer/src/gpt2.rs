//! Tokenizers of the Hugging Face Hub (`tokenizer.json`), GPT-2's embedded, backed by
//! HuggingFace `tokenizers`.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::byte_level::token_string_to_bytes;
use crate::{END_OF_TEXT, Tokenizer, TokenizerError};

/// GPT-2's `tokenizer.json` (HuggingFace format), embedded so [`Gpt2Tokenizer::gpt2`] works offline.
static GPT2_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/gpt2-tokenizer.json");

/// A tokenizer loaded from a HuggingFace `tokenizer.json`: GPT-2's by default (the same
/// ids as `tiktoken.get_encoding("gpt2")`), or a model's own (Llama 3, Qwen3).
///
/// [`Tokenizer::encode`] follows tiktoken's special-token policy (see the crate
/// documentation); [`HubTokenizer::encode_default`] encodes as transformers does by
/// default (special tokens in the text recognized, and a beginning-of-text token added
/// where the tokenizer adds one).
#[derive(Clone)]
pub struct HubTokenizer {
    inner: HfTokenizer,
    /// Contents of every special added token (for GPT-2: just `<|endoftext|>`).
    special_tokens: Vec<(String, u32)>,
    /// Whether the decoder is GPT-2's byte-level decoder (token strings map to bytes).
    byte_level: bool,
    vocab_size: usize,
}

impl std::fmt::Debug for HubTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("special_tokens", &self.special_tokens)
            .field("byte_level", &self.byte_level)
            .finish()
    }
}

impl HubTokenizer {
    /// The original GPT-2 tokenizer (50,257 tokens), loaded from the copy embedded in this crate.
    pub fn gpt2() -> Result<Self, TokenizerError> {
        let inner = HfTokenizer::from_bytes(GPT2_TOKENIZER_JSON)
            .map_err(|e| TokenizerError::parse("embedded gpt2-tokenizer.json", e.to_string()))?;
        Ok(Self::from_hf(inner))
    }

    /// Loads any HuggingFace `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = crate::bounded::read_bounded(path, crate::bounded::MAX_TOKENIZER_BYTES)?;
        let inner = HfTokenizer::from_bytes(&bytes)
            .map_err(|e| TokenizerError::parse(path.display().to_string(), e.to_string()))?;
        Ok(Self::from_hf(inner))
    }

    /// Loads a `tokenizer.json` document held in memory (`what` names it in errors).
    pub fn from_json_bytes(what: &str, bytes: &[u8]) -> Result<Self, TokenizerError> {
        let inner = HfTokenizer::from_bytes(bytes)
            .map_err(|e| TokenizerError::parse(what.to_string(), e.to_string()))?;
        Ok(Self::from_hf(inner))
    }

    /// Builds a GPT-2 style tokenizer from OpenAI's `encoder.json` and `vocab.bpe` files:
    /// byte-level pre-tokenizer without prefix space, byte-level decoder, and `<|endoftext|>` as a
    /// special token.
    pub fn from_vocab_merges(
        encoder_json: impl AsRef<Path>,
        vocab_bpe: impl AsRef<Path>,
    ) -> Result<Self, TokenizerError> {
        let (encoder_json, vocab_bpe) = (encoder_json.as_ref(), vocab_bpe.as_ref());
        for p in [encoder_json, vocab_bpe] {
            if !p.is_file() {
                return Err(TokenizerError::io(
                    p,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
                ));
            }
        }
        let what = format!("{} + {}", encoder_json.display(), vocab_bpe.display());
        let (Some(v), Some(m)) = (encoder_json.to_str(), vocab_bpe.to_str()) else {
            return Err(TokenizerError::parse(what, "paths must be valid UTF-8"));
        };
        let bpe = BPE::from_file(v, m)
            .build()
            .map_err(|e| TokenizerError::parse(what.clone(), e.to_string()))?;
        let mut inner = HfTokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        inner
            .add_special_tokens([AddedToken::from(END_OF_TEXT, true)])
            .map_err(|e| TokenizerError::Backend(e.to_string()))?;
        Ok(Self::from_hf(inner))
    }

    fn from_hf(inner: HfTokenizer) -> Self {
        let mut special_tokens: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        special_tokens.sort_by_key(|&(_, id)| id);
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let vocab_size = inner.get_vocab_size(true);
        Self {
            inner,
            special_tokens,
            byte_level,
            vocab_size,
        }
    }

    /// Encodes `text` as transformers' `tokenizer(text)` does: special tokens written in
    /// the text are recognized, and the tokenizer's post-processor adds what it adds by
    /// default (Llama 3's `<|begin_of_text|>`; nothing for GPT-2 or Qwen3).
    pub fn encode_default(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if text.len() <= PIECE_BYTES || !self.byte_level {
            return self.encode_with_specials(text);
        }
        // A long text in pieces: what the post-processor adds to an empty text (a
        // beginning-of-text token) goes first.
        let mut ids = self.encode_with_specials("")?;
        ids.extend(self.encode_plain(text)?);
        Ok(ids)
    }

    /// Encodes `text` recognizing the special tokens written in it but adding none: a
    /// rendered chat template, which carries its own.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if !self.byte_level {
            return self.encode_piece(text);
        }
        let mut ids = Vec::with_capacity(text.len() / 3);
        for piece in pieces(text, PIECE_BYTES) {
            ids.extend(self.encode_piece(piece)?);
        }
        Ok(ids)
    }

    /// `text` encoded with the post-processor's special tokens.
    fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| TokenizerError::Backend(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The token string of `id` (special tokens included), if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The `tokenizer.json` this tokenizer serialises to.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(true)
            .map_err(|e| TokenizerError::Backend(e.to_string()))
    }

    /// The wrapped HuggingFace tokenizer.
    pub fn inner(&self) -> &HfTokenizer {
        &self.inner
    }

    /// The special tokens (content, id), sorted by id. For GPT-2: `[("<|endoftext|>", 50256)]`.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.special_tokens
    }

    /// The id of a token string (special or regular, in the tokenizer's internal spelling,
    /// e.g. `"Ġthe"`), if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The raw bytes of one token (`<|endoftext|>` gives its literal text).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        if let Some((content, _)) = self.special_tokens.iter().find(|(_, i)| *i == id) {
            return Ok(content.as_bytes().to_vec());
        }
        let token = self
            .inner
            .id_to_token(id)
            .ok_or(TokenizerError::UnknownId(id))?;
        if self.byte_level {
            token_string_to_bytes(&token).ok_or_else(|| {
                TokenizerError::parse(
                    format!("token {id}"),
                    format!("token string {token:?} is not in the byte-level alphabet"),
                )
            })
        } else {
            let text = self
                .inner
                .decode(&[id], false)
                .map_err(|e| TokenizerError::Backend(e.to_string()))?;
            Ok(text.into_bytes())
        }
    }

    /// Decodes ids to raw bytes, without any UTF-8 validation.
    ///
    /// A token sequence that ends in the middle of a multi-byte character (common while streaming
    /// generated tokens) yields the incomplete bytes; keep them and prepend them to the next chunk.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        if self.byte_level {
            let mut out = Vec::with_capacity(ids.len() * 4);
            for &id in ids {
                out.extend_from_slice(&self.token_bytes(id)?);
            }
            Ok(out)
        } else {
            self.check_ids(ids)?;
            self.inner
                .decode(ids, false)
                .map(String::into_bytes)
                .map_err(|e| TokenizerError::Backend(e.to_string()))
        }
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), TokenizerError> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(&id) => Err(TokenizerError::UnknownId(id)),
            None => Ok(()),
        }
    }
}

/// Bytes per piece when a long text is encoded piece by piece.
const PIECE_BYTES: usize = 1 << 18;

/// Splits `text` into pieces of about `size` bytes at places where a byte-level BPE
/// tokenizer (GPT-2's, Llama 3's, Qwen's pre-tokenizer patterns) starts a new
/// pre-token anyway: before a single space that has a non-space on both sides. Every
/// such pattern begins a pre-token at that space (` ?\p{L}+`, ` ?\p{N}+`,
/// ` ?[^\s\p{L}\p{N}]+`, or a lone `\s+`) and none continues across it, so the
/// pieces' ids, concatenated, are the whole text's.
pub(crate) fn pieces(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let mut end = (start + size).min(bytes.len());
        if end < bytes.len() {
            // The next safe split at or after `end`; the rest of the text if there is none.
            end = (end.max(start + 1)..bytes.len() - 1)
                .find(|&i| {
                    bytes[i] == b' '
                        && !bytes[i - 1].is_ascii_whitespace()
                        && !bytes[i + 1].is_ascii_whitespace()
                        && text.is_char_boundary(i)
                        && !text[..i].ends_with(char::is_whitespace)
                        && !text[i + 1..].starts_with(char::is_whitespace)
                })
                .unwrap_or(bytes.len());
        }
        let piece = &text[start..end];
        start = end;
        Some(piece)
    })
}

impl HubTokenizer {
    fn encode_piece(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Backend(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl Tokenizer for HubTokenizer {
    fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>, TokenizerError> {
        if !allow_special
            && let Some((token, _)) = self
                .special_tokens
                .iter()
                .find(|(token, _)| text.contains(token.as_str()))
        {
            return Err(TokenizerError::SpecialTokenNotAllowed {
                token: token.clone(),
            });
        }
        // A long text is encoded piece by piece: the backend's working memory grows
        // with its input (2.7 GB for 20 MB of text at once), the pieces' does not.
        self.encode_plain(text)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::END_OF_TEXT_ID;

    #[test]
    fn book_example() {
        let tok = HubTokenizer::gpt2().unwrap();
        assert_eq!(tok.vocab_size(), 50257);
        let text =
            "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(
            ids,
            [
                15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
                286, 617, 34680, 27271, 13
            ]
        );
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    /// Encoding piece by piece gives the whole text's ids, on every reference string and
    /// on the-verdict cut into pieces of 64 bytes.
    #[test]
    fn pieces_encode_like_the_whole_text() {
        let tok = HubTokenizer::gpt2().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut texts =
            vec![std::fs::read_to_string(root.join("datasets/the-verdict.txt")).unwrap()];
        let cases =
            std::fs::read_to_string(root.join("tests/fixtures/tokenizer_cases.jsonl")).unwrap();
        for line in cases.lines() {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            texts.push(case["text"].as_str().unwrap().to_string());
        }
        for text in &texts {
            let whole = tok.encode_piece(text).unwrap();
            let mut joined = Vec::new();
            let mut rebuilt = String::new();
            for piece in pieces(text, 64) {
                rebuilt.push_str(piece);
                joined.extend(tok.encode_piece(piece).unwrap());
            }
            assert_eq!(&rebuilt, text);
            assert_eq!(joined, whole, "{}", &text[..text.len().min(80)]);
        }
        assert!(pieces(&texts[0], 64).count() > 100);
    }

    #[test]
    fn special_token_policy() {
        let tok = HubTokenizer::gpt2().unwrap();
        let err = tok.encode("a <|endoftext|> b", false).unwrap_err();
        assert!(
            matches!(err, TokenizerError::SpecialTokenNotAllowed { ref token } if token == END_OF_TEXT)
        );
        assert_eq!(
            err.to_string(),
            "text contains the special token \"<|endoftext|>\"; allow special tokens to encode it"
        );
        assert_eq!(tok.encode(END_OF_TEXT, true).unwrap(), [END_OF_TEXT_ID]);
        // Other <|...|> strings are ordinary text, with or without allow_special.
        let expected = [27, 91, 9688, 1659, 5239, 91, 29];
        assert_eq!(tok.encode("<|startoftext|>", false).unwrap(), expected);
        assert_eq!(tok.encode("<|startoftext|>", true).unwrap(), expected);
    }

    #[test]
    fn partial_utf8_decoding() {
        let tok = HubTokenizer::gpt2().unwrap();
        let ids = tok.encode("🤗", false).unwrap();
        assert!(ids.len() > 1);
        let head = tok.decode_bytes(&ids[..1]).unwrap();
        assert!(std::str::from_utf8(&head).is_err());
        assert!(tok.decode(&ids[..1]).unwrap().contains('\u{FFFD}'));
        assert_eq!(tok.decode(&ids).unwrap(), "🤗");
        assert_eq!(tok.decode_bytes(&ids).unwrap(), "🤗".as_bytes());
    }

    #[test]
    fn unknown_id_is_an_error() {
        let tok = HubTokenizer::gpt2().unwrap();
        assert!(matches!(
            tok.decode(&[50257]),
            Err(TokenizerError::UnknownId(50257))
        ));
        assert!(matches!(
            tok.token_bytes(u32::MAX),
            Err(TokenizerError::UnknownId(_))
        ));
        assert_eq!(tok.token_bytes(220).unwrap(), b" ");
        assert_eq!(
            tok.token_bytes(END_OF_TEXT_ID).unwrap(),
            END_OF_TEXT.as_bytes()
        );
    }
}
