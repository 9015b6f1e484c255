//! What can go wrong: [`HubError`] for what a caller asked (a model, a download, the
//! cache), [`FetchError`] for why one file could not be fetched.
//!
//! Every message names the file, URL or repository it is about and never repeats its
//! cause, which is kept as the error's [`source`](std::error::Error::source): printing
//! the chain (`what: why: ...`) reads each part once.

use std::path::PathBuf;

/// A cause from a dependency (the HTTP client, the JSON parser), kept as a source
/// without making its type part of this crate's API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The endpoint is not an HTTP address.
    #[error("endpoint \"{endpoint}\" is not an http:// or https:// address")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
    },
    /// A file of a repository could not be fetched (after every attempt the failure
    /// allowed).
    #[error("cannot download {url}")]
    Download {
        /// The file's address.
        url: String,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// A model is not in the cache, and `HF_HUB_OFFLINE` forbids downloading it.
    #[error(
        "{repo} ({revision}) is not in the Hugging Face cache {} and HF_HUB_OFFLINE forbids downloading it",
        cache.display()
    )]
    Offline {
        /// The repository, `OWNER/NAME`.
        repo: String,
        /// The branch, tag or commit asked for.
        revision: String,
        /// The cache directory looked in.
        cache: PathBuf,
    },
    /// A model is not in the cache, and this build cannot download it (the crate's
    /// `download` feature is off).
    #[error(
        "{repo} ({revision}) is not in the Hugging Face cache {}, and downloading is not built in (ember-hub's `download` feature)",
        cache.display()
    )]
    DownloadNotBuilt {
        /// The repository, `OWNER/NAME`.
        repo: String,
        /// The branch, tag or commit asked for.
        revision: String,
        /// The cache directory looked in.
        cache: PathBuf,
    },
    /// A repository's shard index cannot be read as JSON.
    #[error("{}: invalid shard index", path.display())]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A shard index names something that is not a plain file name.
    #[error("{}: shard \"{shard}\" is not a file name", path.display())]
    ShardNotAFileName {
        /// The index file.
        path: PathBuf,
        /// The name it lists.
        shard: String,
    },
    /// A shard index lists no shards.
    #[error("{}: the index lists no shards", path.display())]
    NoShards {
        /// The index file.
        path: PathBuf,
    },
    /// The Hub's API named no commit for a revision.
    #[error("{url}: no commit in the answer")]
    NoCommit {
        /// The API address asked.
        url: String,
        /// What went wrong on the way, if anything did (the request, the JSON).
        #[source]
        source: Option<BoxError>,
    },
    /// A directory could not be created.
    #[error("cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why one file could not be fetched. [`FetchError::is_transient`] tells the failures
/// worth another attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request failed before an answer (connection refused, timeout, a protocol
    /// error). Transient.
    #[error("request failed")]
    Request {
        /// The HTTP client's error.
        #[source]
        source: BoxError,
    },
    /// The server answered with an error that may pass (HTTP 5xx, 429). Transient.
    #[error("server answered HTTP {status}")]
    ServerBusy {
        /// The status code.
        status: u16,
    },
    /// The repository does not have the file (HTTP 404).
    #[error("{file} is not in the repository (HTTP 404)")]
    NotFound {
        /// The file's name.
        file: String,
    },
    /// The server wants credentials (HTTP 401, 403).
    #[error("server answered HTTP {status}: the repository needs an access token (HF_TOKEN)")]
    Unauthorized {
        /// The status code.
        status: u16,
    },
    /// Any other status that is not a success.
    #[error("server answered HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// A redirect without a `Location` header.
    #[error("redirect without a location")]
    RedirectWithoutLocation,
    /// More than five redirects.
    #[error("too many redirects")]
    TooManyRedirects,
    /// The server refused the range of a partial file that nothing can check; the part
    /// was removed. Transient.
    #[error("the server refused the range of a partial download; starting over")]
    RangeRefused,
    /// The server answered a range request from another byte; the part was removed.
    /// Transient.
    #[error(
        "the server answered a range request for byte {requested} from byte {answered:?}; starting over"
    )]
    RangeMismatch {
        /// Where the part ended.
        requested: u64,
        /// Where the server's range began, if it said.
        answered: Option<u64>,
    },
    /// The connection failed while the body was read. Transient.
    #[error("connection lost after {bytes} bytes")]
    ConnectionLost {
        /// Bytes received in this attempt.
        bytes: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed before the announced size. Transient.
    #[error("connection closed after {received} of {total} bytes")]
    ConnectionClosed {
        /// Bytes of the file received.
        received: u64,
        /// Bytes announced.
        total: u64,
    },
    /// A file continued from a part did not match its checksum; it was removed, to be
    /// fetched again from zero. Transient.
    #[error("a resumed download of {} did not check out; starting over", path.display())]
    ResumedMismatch {
        /// The file.
        path: PathBuf,
    },
    /// The server sent more than it announced (or, announcing nothing, more than
    /// [`DownloadOptions::max_unannounced_bytes`](crate::DownloadOptions)); the partial
    /// file was removed.
    #[error(
        "the server sent more than the {limit} announced bytes of {}; the partial file was removed",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bytes allowed.
        limit: u64,
    },
    /// The file's SHA-256 is not the one announced; the partial file was removed.
    #[error(
        "checksum mismatch for {}: expected sha256 {expected}, got {actual}; the partial file was removed",
        path.display()
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The announced SHA-256.
        expected: String,
        /// The received file's.
        actual: String,
    },
    /// The file's size is not the one announced; the partial file was removed.
    #[error(
        "{} holds {actual} bytes, the server announced {announced}; the partial file was removed",
        path.display()
    )]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        actual: u64,
        /// The announced size.
        announced: u64,
    },
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A complete file could not be moved into place.
    #[error("cannot move {} into place", path.display())]
    Move {
        /// The partial file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether another attempt may succeed: a failed request, a busy server, a dropped
    /// connection, or a partial file that had to be started over.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Request { .. }
                | Self::ServerBusy { .. }
                | Self::RangeRefused
                | Self::RangeMismatch { .. }
                | Self::ConnectionLost { .. }
                | Self::ConnectionClosed { .. }
                | Self::ResumedMismatch { .. }
        )
    }
}
