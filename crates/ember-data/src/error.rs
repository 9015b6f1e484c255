//! Error type of the data pipeline.

use std::path::PathBuf;

use ember_tokenizer::TokenizerError;

/// Everything that can go wrong while building datasets, batching or preparing/reading shards.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Too few tokens to cut even one `(input, target)` window.
    #[error("text has {num_tokens} tokens, needs more than max_length {max_length}")]
    TooFewTokens {
        /// Number of tokens available.
        num_tokens: usize,
        /// Requested window length.
        max_length: usize,
    },
    /// An argument is out of range (zero stride, zero batch size, bad fraction, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed (the cause follows in the error chain).
    #[error("{path}", path = path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An input file is not valid UTF-8.
    #[error("{path} is not valid UTF-8 (first invalid byte at offset {offset})", path = path.display())]
    InvalidUtf8 {
        /// The offending file.
        path: PathBuf,
        /// Byte offset (in the file, or in the line for `.jsonl`) of the first invalid byte.
        offset: usize,
    },
    /// A `.jsonl` line is not a JSON object with a string `"text"` field.
    #[error("{path}:{line}: {message}", path = path.display())]
    Json {
        /// The offending file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The input holds no text / no tokens.
    #[error("{path}: {message}", path = path.display())]
    EmptyInput {
        /// The input file or directory.
        path: PathBuf,
        /// What is empty.
        message: String,
    },
    /// An input path is neither a `.txt`/`.jsonl` file nor a directory.
    #[error("{path}: unsupported input (expected a .txt or .jsonl file, or a directory)", path = path.display())]
    UnsupportedInput {
        /// The offending path.
        path: PathBuf,
    },
    /// A token shard is malformed (bad magic/version, truncated, ...).
    #[error("bad token shard {path}: {message}", path = path.display())]
    BadShard {
        /// The offending shard.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No `{split}_*.bin` shard exists in a directory.
    #[error("no {split}_*.bin shards in {dir}", dir = dir.display())]
    NoShards {
        /// The directory searched.
        dir: PathBuf,
        /// The split name (`train`, `val`).
        split: String,
    },
    /// A token id does not fit the shard format's uint16.
    #[error("token id {id} does not fit in a uint16 shard (vocabulary too large)")]
    TokenTooLarge {
        /// The token id.
        id: u32,
    },
    /// Tokenizing a document failed.
    #[error("tokenizing {path}", path = path.display())]
    Tokenize {
        /// The file the document came from.
        path: PathBuf,
        /// The tokenizer error.
        #[source]
        source: TokenizerError,
    },
    /// A tokenizer error outside of corpus preparation.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A JSON file that does not hold what it should.
    #[error("{path}: invalid JSON", path = path.display())]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        #[source]
        source: serde_json::Error,
    },
    /// A window/batch index is out of range.
    #[error("{what} index {index} is out of range (length {len})")]
    OutOfRange {
        /// What was indexed (window, batch, token).
        what: &'static str,
        /// The index.
        index: usize,
        /// The valid length.
        len: usize,
    },
}

/// An error and its causes on one line, `error: cause: cause`: what the `ember` binary
/// prints. Error types across Ember keep their causes as sources instead of repeating
/// them in their own message, so this is the whole story.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl DataError {
    /// Builds a [`DataError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
