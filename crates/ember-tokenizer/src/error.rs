//! Error type shared by every tokenizer in this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading, training or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading or writing a file failed.
    #[error("{path}", path = path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer file (tokenizer.json, encoder.json, vocab.bpe, ...) could not be parsed.
    #[error("could not parse {what}: {message}")]
    Parse {
        /// What was being parsed (usually a file path or a format name).
        what: String,
        /// Why parsing failed.
        message: String,
    },
    /// The text contains a special token but special tokens were not allowed.
    #[error("text contains the special token {token:?}; allow special tokens to encode it")]
    SpecialTokenNotAllowed {
        /// The special token found in the text.
        token: String,
    },
    /// A token id is not part of the vocabulary.
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(u32),
    /// A word/token is not part of the vocabulary (and the tokenizer has no `<|unk|>`).
    #[error("token {0:?} is not in the vocabulary")]
    UnknownToken(String),
    /// An argument is out of range (e.g. a vocabulary size that is too small to train).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A chat template that does not render.
    #[error("chat template: {0}")]
    Template(String),
    /// Something this build of the crate leaves out: a cargo feature that is off.
    #[error("{what} needs ember-tokenizer's `{feature}` feature, which this build leaves out")]
    MissingFeature {
        /// The feature.
        feature: &'static str,
        /// What was asked for.
        what: &'static str,
    },
    /// An error reported by the HuggingFace `tokenizers` backend.
    #[error("tokenizers backend error: {0}")]
    Backend(String),
}

impl TokenizerError {
    /// Builds an [`TokenizerError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds a [`TokenizerError::Parse`].
    pub fn parse(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Parse {
            what: what.into(),
            message: message.into(),
        }
    }
}
