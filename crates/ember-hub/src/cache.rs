//! The Hugging Face Hub's cache, shared with the Python tools (`huggingface_hub`,
//! transformers): a [`ModelRef::Hub`](crate::ModelRef) (`ember --model OWNER/NAME`) is
//! found there, and `download_into` (`ember download --repo`, the `download` feature)
//! writes there, so both see one copy.
//!
//! Layout (huggingface_hub's): `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; in it `models--OWNER--NAME/` with `refs/REVISION` (the
//! commit a branch or tag points to) and `snapshots/COMMIT/FILE`. huggingface_hub makes
//! each snapshot file a link into `blobs/`, to share files between revisions; Ember
//! writes them in place, which huggingface_hub reads the same way.
//!
//! `HF_HUB_OFFLINE=1` forbids downloading: a model not in the cache is then an error,
//! as it always is when the crate is built without its `download` feature.

use std::path::{Path, PathBuf};

#[cfg(feature = "download")]
use crate::download::{DownloadOptions, download_into};
use crate::error::HubError;

/// The Hub's address when neither the caller nor `HF_ENDPOINT` names one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The cache directory the environment names.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether `text` reads as a Hub repository id (`OWNER/NAME`): one slash, no leading
/// `.`, `-` or `/`, only the characters the Hub allows. Text that reads so may still be
/// a path; [`ModelRef::parse`](crate::ModelRef::parse) tells the two apart.
pub fn is_repo_id(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    is_name(owner) && is_name(name)
}

/// One part of a repository id, or a revision: not empty, no leading `.` or `-`, only
/// ASCII letters, digits, `-`, `_` and `.`.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `models--OWNER--NAME` in `cache`.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The snapshot of `repo` at `revision` (a branch, a tag or a commit) in `cache`, if it
/// holds a model (`config.json`).
pub fn snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let dir = repo_dir(cache, repo);
    let commit = std::fs::read_to_string(dir.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snapshot = dir.join("snapshots").join(commit);
    snapshot.join("config.json").is_file().then_some(snapshot)
}

/// Whether `HF_HUB_OFFLINE` forbids downloading (`1`, `true`, `yes` or `on`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The model directory of `repo` at `revision`: from the cache the environment names
/// ([`cache_dir`]), or downloaded into it (from `endpoint`, default `$HF_ENDPOINT` or the
/// Hub, with `$HF_TOKEN`) unless `HF_HUB_OFFLINE` forbids it or the crate was built
/// without its `download` feature ([`HubError::DownloadNotBuilt`]).
pub fn resolve(repo: &str, revision: &str, endpoint: Option<&str>) -> Result<PathBuf, HubError> {
    resolve_in(&cache_dir(), repo, revision, endpoint)
}

/// [`resolve`] with the cache `cache`.
pub fn resolve_in(
    cache: &Path,
    repo: &str,
    revision: &str,
    endpoint: Option<&str>,
) -> Result<PathBuf, HubError> {
    if let Some(dir) = snapshot(cache, repo, revision) {
        return Ok(dir);
    }
    if offline() {
        return Err(HubError::Offline {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache.to_path_buf(),
        });
    }
    #[cfg(feature = "download")]
    {
        let endpoint = endpoint_or_default(endpoint);
        let mut options =
            DownloadOptions::new(&endpoint, repo, revision, PathBuf::new()).with_env_token();
        download_into(cache, &mut options)
    }
    #[cfg(not(feature = "download"))]
    {
        let _ = endpoint;
        Err(HubError::DownloadNotBuilt {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache.to_path_buf(),
        })
    }
}

/// `endpoint`, else `$HF_ENDPOINT`, else the Hub ([`DEFAULT_ENDPOINT`]).
pub fn endpoint_or_default(endpoint: Option<&str>) -> String {
    endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        for id in [
            "Qwen/Qwen3-0.6B",
            "meta-llama/Llama-3.2-1B",
            "openai-community/gpt2",
        ] {
            assert!(is_repo_id(id), "{id}");
        }
        // `models/gpt2` reads as an id too: a path that exists is taken as a path first.
        for path in [
            "./a/b",
            "/abs/path",
            "a/b/c",
            "runs",
            "../x/y",
            "a/",
            "runs/x y",
        ] {
            assert!(!is_repo_id(path), "{path}");
        }
    }

    /// Without the `download` feature, a model that is not in the cache is an error
    /// saying so, not an attempt to fetch it.
    #[cfg(not(feature = "download"))]
    #[test]
    fn without_download_a_model_not_in_the_cache_is_an_error() {
        if offline() {
            return; // HF_HUB_OFFLINE gives its own error first.
        }
        let cache = tempfile::tempdir().unwrap();
        let err = resolve_in(
            cache.path(),
            "Org/Model",
            "main",
            Some("http://127.0.0.1:9"),
        )
        .unwrap_err();
        assert!(matches!(err, HubError::DownloadNotBuilt { .. }), "{err:?}");
        assert!(err.to_string().contains("`download` feature"), "{err}");
    }

    /// A cache laid out by hand as huggingface_hub lays it out.
    #[test]
    fn snapshots_are_found_through_refs_or_by_commit() {
        let cache = tempfile::tempdir().unwrap();
        let repo = repo_dir(cache.path(), "Org/Model");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        assert_eq!(
            snapshot(cache.path(), "Org/Model", "main"),
            None,
            "no config.json yet"
        );
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert_eq!(
            snapshot(cache.path(), "Org/Model", "main"),
            Some(snap.clone())
        );
        assert_eq!(snapshot(cache.path(), "Org/Model", commit), Some(snap));
        assert_eq!(snapshot(cache.path(), "Org/Model", "dev"), None);
    }
}
