//! Tokenizers for Ember, a Rust implementation of *Build a Large Language Model (From Scratch)*.
//!
//! ```
//! use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
//!
//! let tokenizer = Gpt2Tokenizer::gpt2()?; // embedded: works offline
//! let ids = tokenizer.encode("Hello, world", false)?;
//! assert_eq!(ids, [15496, 11, 995]); // tiktoken's `gpt2` ids
//! assert_eq!(tokenizer.decode(&ids)?, "Hello, world");
//! # Ok::<(), ember_tokenizer::TokenizerError>(())
//! ```
//!
//! * [`HubTokenizer`] (alias [`Gpt2Tokenizer`]): the pretrained GPT-2 byte-level BPE tokenizer
//!   (50,257 tokens), backed by HuggingFace `tokenizers` and producing exactly tiktoken's `gpt2`
//!   ids; the GPT-2 `tokenizer.json` is embedded, so [`HubTokenizer::gpt2`] works offline. The
//!   same type loads any model's `tokenizer.json` (Llama 3, Qwen3).
//! * [`ModelTokenizer`]: what a model directory says about its text: the tokenizer, the
//!   beginning- and end-of-text tokens, and its [`ChatTemplate`] ([`chat`], rendered with
//!   minijinja with the `chat-template` feature).
//! * [`SimpleTokenizerV1`] / [`SimpleTokenizerV2`]: the book's chapter 2 word-level tokenizers.
//! * [`BpeTokenizer`]: a byte-level BPE implemented from scratch, trainable on any text and able to
//!   load GPT-2's `encoder.json` + `vocab.bpe` (reproducing GPT-2's ids).
//!
//! All of them implement the [`Tokenizer`] trait.
//!
//! # Features
//!
//! * `chat-template` (on by default): renders chat templates with minijinja. Without it
//!   a model's template is still read and [`ModelTokenizer::chat_template`] still
//!   reports it, but rendering one is a [`TokenizerError::MissingFeature`], so a chat
//!   model is never prompted as if it had no template.
//!
//! # Special-token policy
//!
//! Like tiktoken's default, special tokens are opt-in:
//!
//! * `encode(text, allow_special = false)`: if `text` contains a special token (for GPT-2 only
//!   [`END_OF_TEXT`], `<|endoftext|>`), encoding fails with
//!   [`TokenizerError::SpecialTokenNotAllowed`]. This prevents user-supplied text from silently
//!   injecting document separators.
//! * `encode(text, allow_special = true)`: every occurrence of `<|endoftext|>` becomes the single id
//!   [`END_OF_TEXT_ID`] (50256), and the text around it is encoded independently.
//! * Other `<|...|>` strings (`<|startoftext|>`, `<|ENDOFTEXT|>`, ...) are ordinary text either way.
//!
//! Decoding a special id yields its literal text.
//!
//! # Decoding partial characters
//!
//! Byte-level BPE tokens need not end on UTF-8 character boundaries. [`Tokenizer::decode`] replaces
//! invalid/incomplete byte sequences by U+FFFD (lossy); [`Gpt2Tokenizer::decode_bytes`] and
//! [`BpeTokenizer::decode_bytes`] return the raw bytes for streaming output.

#![warn(missing_docs)]

pub mod bounded;
mod bpe;
pub mod byte_level;
pub mod chat;
mod error;
mod gpt2;
mod model_tokenizer;
mod simple;
pub mod text_stream;

pub use bpe::{BpeTokenizer, GPT2_PATTERN, gpt2_pretokenize};
pub use chat::{ChatMessage, ChatTemplate};
pub use error::TokenizerError;
pub use gpt2::HubTokenizer;
pub use model_tokenizer::ModelTokenizer;
pub use text_stream::TextStream;

/// The GPT-2 tokenizer of chapter 2 ([`HubTokenizer::gpt2`]); the same type loads any
/// Hub `tokenizer.json`.
pub type Gpt2Tokenizer = HubTokenizer;
pub use simple::{SimpleTokenizerV1, SimpleTokenizerV2, UNKNOWN, simple_split};

/// GPT-2's end-of-text (document separator) special token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Id of [`END_OF_TEXT`] in GPT-2's vocabulary.
pub const END_OF_TEXT_ID: u32 = 50256;

/// A text ↔ token-id mapping.
pub trait Tokenizer {
    /// Encodes `text` to token ids. With `allow_special = false`, text containing a special token is
    /// an error ([`TokenizerError::SpecialTokenNotAllowed`]); see the crate docs.
    fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>, TokenizerError>;

    /// Decodes ids to text. Bytes that are not valid UTF-8 (e.g. a character cut in the middle) are
    /// replaced by U+FFFD. Unknown ids are an error.
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError>;

    /// Number of ids in the vocabulary (including special tokens).
    fn vocab_size(&self) -> usize;
}
