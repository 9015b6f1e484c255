//! The Hugging Face Hub, for Ember and for any other program: what a model flag names,
//! where the Hub's cache keeps a model, and how to download one.
//!
//! - [`ModelRef`]: a model as a command line names it, a local path or a repository
//!   `OWNER/NAME[@REVISION]`; anything that exists here is a path, so a directory is
//!   never mistaken for a repository. [`ModelRef::resolve`] gives the local directory.
//! - [`cache`](mod@cache): the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`,
//!   `~/.cache/huggingface/hub`) as `huggingface_hub` lays it out, so the Python tools
//!   and this crate share one copy of a model; `HF_ENDPOINT`, `HF_TOKEN` and
//!   `HF_HUB_OFFLINE` apply.
//! - [`download`](mod@download): a model's files over plain HTTP, resumable after a
//!   dropped or stalled connection, checked against the sizes and SHA-256 sums the Hub
//!   announces.
//! - [`HubError`] and [`FetchError`]: typed errors naming the file, URL or repository,
//!   each keeping its cause as its [`source`](std::error::Error::source).
//!
//! # Features
//!
//! - `download` (on by default): the [`download`](mod@download) module and downloading
//!   into the cache (ureq with rustls, sha2). Without it the crate still finds models
//!   in the cache, and a repository that is not there is a
//!   [`HubError::DownloadNotBuilt`].
//! - `progress` (on by default, implies `download`): a progress bar per file on stderr
//!   (indicatif).
//!
//! ```
//! use std::path::Path;
//! use ember_hub::{ModelRef, is_repo_id, repo_dir};
//!
//! assert!(is_repo_id("Qwen/Qwen3-0.6B"));
//! assert!(!is_repo_id("./models/gpt2") && !is_repo_id("runs/spam/model/x"));
//! assert_eq!(
//!     repo_dir(Path::new("/cache"), "Qwen/Qwen3-0.6B"),
//!     Path::new("/cache/models--Qwen--Qwen3-0.6B")
//! );
//!
//! // Nothing is at `no-such-owner/tiny-model@v1` here, so it names a repository.
//! let reference = ModelRef::parse("no-such-owner/tiny-model@v1");
//! assert_eq!(
//!     reference,
//!     ModelRef::Hub { repo: "no-such-owner/tiny-model".into(), revision: "v1".into() }
//! );
//! // A path stays a path, whether it exists or not.
//! assert_eq!(ModelRef::parse("./models/gpt2"), ModelRef::Path("./models/gpt2".into()));
//! ```

#![warn(missing_docs)]

pub mod cache;
#[cfg(feature = "download")]
pub mod download;
mod error;
mod model_ref;
#[cfg(feature = "download")]
mod progress;

pub use cache::{
    DEFAULT_ENDPOINT, cache_dir, endpoint_or_default, is_repo_id, offline, repo_dir, resolve,
    resolve_in, snapshot,
};
#[cfg(feature = "download")]
pub use download::{
    DownloadOptions, INDEX_FILE, MODEL_FILES, WEIGHTS_FILE, download, download_into, download_model,
};
pub use error::{BoxError, FetchError, HubError};
pub use model_ref::{DEFAULT_REVISION, ModelRef};

/// `error` and its causes, `what: why: ...`.
#[cfg(feature = "download")]
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
