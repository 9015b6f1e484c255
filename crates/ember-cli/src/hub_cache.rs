//! The Hugging Face Hub's cache, shared with the Python tools (`huggingface_hub`,
//! transformers): `--model OWNER/NAME` finds a model there, and `ember download --repo`
//! writes there, so both see one copy.
//!
//! Layout (huggingface_hub's): `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; in it `models--OWNER--NAME/` with `refs/REVISION` (the
//! commit a branch or tag points to) and `snapshots/COMMIT/FILE`. huggingface_hub makes
//! each snapshot file a link into `blobs/`, to share files between revisions; Ember
//! writes them in place, which huggingface_hub reads the same way.
//!
//! `HF_HUB_OFFLINE=1` forbids downloading: a model not in the cache is then an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::download::{DownloadOptions, download_model};

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

/// Whether `text` reads as a Hub repository id (`OWNER/NAME`) rather than a path: one
/// slash, no leading `.` or `/`, only the characters the Hub allows.
pub fn is_repo_id(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    valid(owner) && valid(name)
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

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The model directory of `repo` at `revision`: from the cache, or downloaded into it
/// (from `endpoint`, default `$HF_ENDPOINT` or the Hub) unless offline.
pub fn resolve(repo: &str, revision: &str, endpoint: Option<&str>) -> Result<PathBuf> {
    let cache = cache_dir();
    if let Some(dir) = snapshot(&cache, repo, revision) {
        return Ok(dir);
    }
    if offline() {
        bail!(
            "{repo} ({revision}) is not in the Hugging Face cache {} and HF_HUB_OFFLINE forbids downloading it",
            cache.display()
        );
    }
    let endpoint = endpoint_or_default(endpoint);
    let mut options = DownloadOptions::new(&endpoint, repo, revision, PathBuf::new());
    options.token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    download_into(&cache, &mut options)
}

/// `$HF_ENDPOINT` or the Hub, unless given.
pub fn endpoint_or_default(endpoint: Option<&str>) -> String {
    endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| "https://huggingface.co".to_string())
}

/// Downloads a model into `cache` under the commit the revision points to (asked of
/// the Hub's API; a server without it gets the revision's name), then records the
/// revision in `refs/`. Returns the snapshot directory.
pub fn download_into(cache: &Path, options: &mut DownloadOptions) -> Result<PathBuf> {
    let dir = repo_dir(cache, &options.repo);
    let commit = commit_of(options).unwrap_or_else(|e| {
        tracing::debug!("no commit for {} {}: {e:#}", options.repo, options.revision);
        options.revision.clone()
    });
    options.out_dir = dir.join("snapshots").join(&commit);
    download_model(options)?;
    let refs = dir.join("refs");
    std::fs::create_dir_all(&refs).with_context(|| format!("cannot create {}", refs.display()))?;
    if commit != options.revision {
        ember_data::files::write_atomic(&refs.join(&options.revision), commit.as_bytes())
            .with_context(|| format!("cannot write {}", refs.display()))?;
    }
    Ok(options.out_dir.clone())
}

/// The commit `options.revision` points to: `sha` of
/// `GET {endpoint}/api/models/{repo}/revision/{revision}`.
fn commit_of(options: &DownloadOptions) -> Result<String> {
    if options.revision.len() == 40 && options.revision.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(options.revision.clone());
    }
    let url = format!(
        "{}/api/models/{}/revision/{}",
        options.endpoint.trim_end_matches('/'),
        options.repo,
        options.revision
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(options.connect_timeout))
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(token) = &options.token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let body = request
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .read_to_string()?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    let sha = json["sha"].as_str().unwrap_or_default();
    if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("{url}: no commit in the answer");
    }
    Ok(sha.to_string())
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
