//! Downloading a model from the Hugging Face Hub (or any server laid out like it): its
//! configuration, tokenizer and generation files, and its weights, one file or the
//! shards of a sharded checkpoint; resumable and verified.
//!
//! Plain HTTP through `ureq`: each file is fetched from
//! `{endpoint}/{repo}/resolve/{revision}/{file}` into `{file}.part`, then checked and
//! renamed into place. What is trusted:
//! - a transfer that stalls (no byte for `read_timeout`) or drops is retried, and
//!   continues from the `.part` file with a `Range` request only when the server can
//!   confirm the part: it announced an `ETag` (sent back as `If-Range`, so a changed
//!   file restarts from zero) or a SHA-256 that the result is checked against;
//!   otherwise a leftover `.part` file is discarded;
//! - the size the server announces (`X-Linked-Size` on the Hub's redirect, or
//!   `Content-Length`) is enforced: a body that runs past it is refused, and without
//!   any announced size a file may not exceed `max_unannounced_bytes`;
//! - the SHA-256 the Hub announces for large files (`X-Linked-Etag` on the redirect, or
//!   an `ETag` that is a SHA-256) is checked before the file is moved into place.
//!
//! [`download_into`] downloads into the Hugging Face cache, where
//! [`cache::resolve`](crate::cache::resolve) finds models. This module is the
//! `download` feature (on by default).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{FetchError, HubError};

/// What to fetch and where.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DownloadOptions {
    /// Hub address, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// Repository, e.g. `openai-community/gpt2`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Files to fetch; empty: a whole model ([`download_model`] decides which).
    pub files: Vec<String>,
    /// Destination directory.
    pub out_dir: PathBuf,
    /// Attempts per file for transient failures.
    pub attempts: u32,
    /// Show a progress bar on stderr (with the `progress` feature, when stderr is a
    /// terminal).
    pub progress: bool,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long a transfer may go without receiving a byte before it is retried.
    pub read_timeout: Duration,
    /// The largest file accepted from a server that announces no size.
    pub max_unannounced_bytes: u64,
    /// A Hub access token, sent as `Authorization: Bearer` (`HF_TOKEN`).
    pub token: Option<String>,
}

impl DownloadOptions {
    /// Options with Ember's defaults: 5 attempts, 30 s to connect, 60 s without a byte,
    /// files of at most 64 GiB from a server that announces no size, no token.
    pub fn new(endpoint: &str, repo: &str, revision: &str, out_dir: PathBuf) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            repo: repo.to_string(),
            revision: revision.to_string(),
            files: Vec::new(),
            out_dir,
            attempts: 5,
            progress: true,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_unannounced_bytes: 64 << 30,
            token: None,
        }
    }

    /// These options with the token of `HF_TOKEN`, if set and not empty.
    pub fn with_env_token(mut self) -> Self {
        self.token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        self
    }
}

/// What a model directory holds beside its weights: the configuration (required) and,
/// when the repository has them, the tokenizer and generation settings.
pub const MODEL_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The weights of an unsharded model.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The index of a sharded model's weights (`weight_map`: tensor name to shard file).
pub const INDEX_FILE: &str = "model.safetensors.index.json";

fn agent(options: &DownloadOptions) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(options.connect_timeout))
        .timeout_per_read(Some(options.read_timeout))
        .build()
        .into()
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A SHA-256 in an ETag (`"…"`, possibly weak), if that is what it holds.
fn sha256_of_etag(etag: &str) -> Option<String> {
    let value = etag
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase();
    (value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit())).then_some(value)
}

fn join_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        // Same host: keep scheme and authority of `base`.
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let host_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        format!("{}{}", &base[..host_end], location)
    }
}

/// The SHA-256 of a file's content, as 64 lowercase hex digits, read in pieces.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Fetches a model: `config.json`; the tokenizer and generation files the repository
/// has; and the weights, one `model.safetensors` or the shards that
/// `model.safetensors.index.json` lists. Returns the files written.
pub fn download_model(options: &DownloadOptions) -> Result<Vec<PathBuf>, HubError> {
    let mut written = download(&DownloadOptions {
        files: vec![MODEL_FILES[0].into()],
        ..options.clone()
    })?;
    for file in &MODEL_FILES[1..] {
        written.extend(fetch_optional(options, file)?);
    }
    match fetch_optional(options, INDEX_FILE)? {
        Some(index) => {
            let text = std::fs::read_to_string(&index).map_err(|source| HubError::Read {
                path: index.clone(),
                source,
            })?;
            let parsed: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| HubError::InvalidIndex {
                    path: index.clone(),
                    source,
                })?;
            let mut shards: Vec<String> = parsed["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            if let Some(bad) = shards.iter().find(|s| !is_file_name(s)) {
                return Err(HubError::ShardNotAFileName {
                    path: index,
                    shard: bad.clone(),
                });
            }
            if shards.is_empty() {
                return Err(HubError::NoShards { path: index });
            }
            written.push(index);
            written.extend(download(&DownloadOptions {
                files: shards,
                ..options.clone()
            })?);
        }
        None => written.extend(download(&DownloadOptions {
            files: vec![WEIGHTS_FILE.into()],
            ..options.clone()
        })?),
    }
    Ok(written)
}

/// A name that stays inside the directory it is joined to.
fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

/// `file` if the repository has it (`None` on HTTP 404).
fn fetch_optional(options: &DownloadOptions, file: &str) -> Result<Option<PathBuf>, HubError> {
    match download(&DownloadOptions {
        files: vec![file.to_string()],
        ..options.clone()
    }) {
        Ok(mut paths) => Ok(paths.pop()),
        Err(HubError::Download {
            source: FetchError::NotFound { .. },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fetches every file of `options.files` into `options.out_dir`, each retried up to
/// `options.attempts` times while its failure is transient; returns their final paths.
pub fn download(options: &DownloadOptions) -> Result<Vec<PathBuf>, HubError> {
    if !(options.endpoint.starts_with("http://") || options.endpoint.starts_with("https://")) {
        return Err(HubError::InvalidEndpoint {
            endpoint: options.endpoint.clone(),
        });
    }
    std::fs::create_dir_all(&options.out_dir).map_err(|source| HubError::CreateDir {
        path: options.out_dir.clone(),
        source,
    })?;
    let agent = agent(options);
    let mut paths = Vec::new();
    for file in &options.files {
        let target = options.out_dir.join(file);
        let url = format!(
            "{}/{}/resolve/{}/{}",
            options.endpoint.trim_end_matches('/'),
            options.repo,
            options.revision,
            file
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            match fetch_file(&agent, options, &url, &target) {
                Ok(()) => break,
                Err(e) if e.is_transient() && attempt < options.attempts => {
                    tracing::warn!(file = %file, attempt, error = %crate::error_chain(&e), "download interrupted; retrying");
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                }
                Err(source) => return Err(HubError::Download { url, source }),
            }
        }
        paths.push(target);
    }
    Ok(paths)
}

/// What is known about a `.part` file: how the server identified the file when the
/// part began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct PartInfo {
    /// The URL the bytes came from.
    url: String,
    /// The server's `ETag` for them, if it sent one.
    etag: Option<String>,
    /// The announced SHA-256, if any.
    sha256: Option<String>,
}

fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("download");
    target.with_file_name(format!("{name}{suffix}"))
}

/// What the server said about a file before its body.
struct Announced {
    sha256: Option<String>,
    size: Option<u64>,
}

fn fetch_file(
    agent: &ureq::Agent,
    options: &DownloadOptions,
    url: &str,
    target: &Path,
) -> Result<(), FetchError> {
    let part = sibling(target, ".part");
    let info_path = sibling(target, ".part.json");
    let previous: Option<PartInfo> = std::fs::read(&info_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|info: &PartInfo| info.url == url);
    let have = std::fs::metadata(&part).map_or(0, |m| m.len());
    // A part is continued only when the server can confirm it (its ETag) or the
    // result can be checked (a SHA-256); anything else starts over.
    let trusted = previous
        .as_ref()
        .is_some_and(|p| p.etag.is_some() || p.sha256.is_some());
    let have = if have > 0 && !trusted {
        tracing::warn!(part = %part.display(), "discarding a partial download the server cannot confirm");
        0
    } else {
        have
    };
    let mut announced = Announced {
        sha256: None,
        size: None,
    };
    let mut current = url.to_string();
    let mut redirects = 0;
    let mut response = loop {
        let mut request = agent.get(&current);
        if let Some(token) = &options.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        if have > 0 {
            request = request.header("Range", &format!("bytes={have}-"));
            if let Some(etag) = previous.as_ref().and_then(|p| p.etag.clone()) {
                request = request.header("If-Range", &etag);
            }
        }
        let response = request.call().map_err(|e| FetchError::Request {
            source: Box::new(e),
        })?;
        let status = response.status().as_u16();
        if let Some(sha) = header(&response, "x-linked-etag").and_then(|e| sha256_of_etag(&e)) {
            announced.sha256 = Some(sha);
        }
        if let Some(size) = header(&response, "x-linked-size").and_then(|s| s.parse().ok()) {
            announced.size = Some(size);
        }
        if (300..400).contains(&status) {
            redirects += 1;
            let location =
                header(&response, "location").ok_or(FetchError::RedirectWithoutLocation)?;
            if redirects > 5 {
                return Err(FetchError::TooManyRedirects);
            }
            current = join_url(&current, &location);
            continue;
        }
        if status >= 500 || status == 429 {
            return Err(FetchError::ServerBusy { status });
        }
        if status == 404 {
            return Err(FetchError::NotFound {
                file: target
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
            });
        }
        if status == 401 || status == 403 {
            return Err(FetchError::Unauthorized { status });
        }
        if !(200..300).contains(&status) && status != 416 {
            return Err(FetchError::Status { status });
        }
        if announced.sha256.is_none() {
            announced.sha256 = header(&response, "etag").and_then(|e| sha256_of_etag(&e));
        }
        break response;
    };
    let status = response.status().as_u16();
    let etag = header(&response, "etag");
    let start_over = || {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&info_path);
    };
    if status == 416 {
        // The range starts at or past the end: the part may be whole, if it checks out.
        if announced.sha256.is_some() {
            return finish(&part, &info_path, target, &announced, have > 0);
        }
        start_over();
        return Err(FetchError::RangeRefused);
    }
    let resuming = status == 206;
    if resuming {
        let range_start = header(&response, "content-range")
            .and_then(|r| r.strip_prefix("bytes ").map(str::to_string))
            .and_then(|r| r.split('-').next().and_then(|s| s.parse::<u64>().ok()));
        if range_start != Some(have) {
            start_over();
            return Err(FetchError::RangeMismatch {
                requested: have,
                answered: range_start,
            });
        }
    }
    let offset = if resuming { have } else { 0 };
    let length: Option<u64> = header(&response, "content-length").and_then(|v| v.parse().ok());
    let total = announced.size.or(length.map(|l| l + offset));
    let info = PartInfo {
        url: url.to_string(),
        etag: etag.clone(),
        sha256: announced.sha256.clone(),
    };
    std::fs::write(
        &info_path,
        serde_json::to_vec(&info).expect("part info serialises"),
    )
    .map_err(|source| FetchError::Write {
        path: info_path.clone(),
        source,
    })?;
    let write_error = |source: std::io::Error| FetchError::Write {
        path: part.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(write_error)?;
    if !resuming {
        file.set_len(0).map_err(write_error)?;
    }
    let limit = total.unwrap_or(options.max_unannounced_bytes);
    let bar = crate::progress::Bar::new(
        options.progress,
        total,
        target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        offset,
    );
    let mut reader = response.body_mut().as_reader();
    let mut buffer = vec![0u8; 1 << 16];
    let mut written = offset;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|source| FetchError::ConnectionLost {
                bytes: written - offset,
                source,
            })?;
        if n == 0 {
            break;
        }
        if written + n as u64 > limit {
            drop(file);
            start_over();
            return Err(FetchError::TooLarge {
                path: target.to_path_buf(),
                limit,
            });
        }
        file.write_all(&buffer[..n]).map_err(write_error)?;
        written += n as u64;
        bar.inc(n as u64);
    }
    bar.finish();
    file.sync_all().map_err(write_error)?;
    drop(file);
    if let Some(total) = total
        && written < total
    {
        return Err(FetchError::ConnectionClosed {
            received: written,
            total,
        });
    }
    finish(&part, &info_path, target, &announced, resuming)
}

/// Checks a complete `.part` against the announced checksum and moves it into place.
/// A resumed file that fails is removed and fetched again from zero (a transient
/// failure); a file fetched in one go that fails is an error.
fn finish(
    part: &Path,
    info_path: &Path,
    target: &Path,
    announced: &Announced,
    resumed: bool,
) -> Result<(), FetchError> {
    let read_error = |source: std::io::Error| FetchError::Read {
        path: part.to_path_buf(),
        source,
    };
    if let Some(expected) = &announced.sha256 {
        let actual = sha256_file(part).map_err(read_error)?;
        if &actual != expected {
            std::fs::remove_file(part).ok();
            std::fs::remove_file(info_path).ok();
            if resumed {
                return Err(FetchError::ResumedMismatch {
                    path: target.to_path_buf(),
                });
            }
            return Err(FetchError::Checksum {
                path: target.to_path_buf(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    if let Some(size) = announced.size {
        let actual = std::fs::metadata(part).map_err(read_error)?.len();
        if actual != size {
            std::fs::remove_file(part).ok();
            std::fs::remove_file(info_path).ok();
            return Err(FetchError::Size {
                path: target.to_path_buf(),
                actual,
                announced: size,
            });
        }
    }
    std::fs::rename(part, target).map_err(|source| FetchError::Move {
        path: part.to_path_buf(),
        source,
    })?;
    std::fs::remove_file(info_path).ok();
    if let Some(dir) = target.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Downloads a model into `cache` (the Hugging Face cache, [`crate::cache`]) under the commit the revision points to (asked of
/// the Hub's API; a server without it gets the revision's name), then records the
/// revision in `refs/`. Sets `options.out_dir` to the snapshot directory and returns it.
pub fn download_into(cache: &Path, options: &mut DownloadOptions) -> Result<PathBuf, HubError> {
    let dir = crate::cache::repo_dir(cache, &options.repo);
    let commit = commit_of(options).unwrap_or_else(|e| {
        tracing::debug!(
            "no commit for {} {}: {}",
            options.repo,
            options.revision,
            crate::error_chain(&e)
        );
        options.revision.clone()
    });
    options.out_dir = dir.join("snapshots").join(&commit);
    download_model(options)?;
    let refs = dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(|source| HubError::CreateDir {
        path: refs.clone(),
        source,
    })?;
    if commit != options.revision {
        let file = refs.join(&options.revision);
        write_atomic(&file, commit.as_bytes())
            .map_err(|source| HubError::Write { path: file, source })?;
    }
    Ok(options.out_dir.clone())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place, so a
/// reader sees the old content or the new, never a part.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".ember-tmp-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The commit `options.revision` points to: `sha` of
/// `GET {endpoint}/api/models/{repo}/revision/{revision}`.
fn commit_of(options: &DownloadOptions) -> Result<String, HubError> {
    if options.revision.len() == 40 && options.revision.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(options.revision.clone());
    }
    let url = format!(
        "{}/api/models/{}/revision/{}",
        options.endpoint.trim_end_matches('/'),
        options.repo,
        options.revision
    );
    let failed = |source: crate::error::BoxError| HubError::NoCommit {
        url: url.clone(),
        source: Some(source),
    };
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
        .and_then(|mut response| response.body_mut().read_to_string())
        .map_err(|e| failed(Box::new(e)))?;
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| failed(Box::new(e)))?;
    let sha = json["sha"].as_str().unwrap_or_default();
    if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(HubError::NoCommit { url, source: None });
    }
    Ok(sha.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_holding_a_sha256_are_recognised() {
        let sha = "a".repeat(64);
        assert_eq!(sha256_of_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(
            sha256_of_etag(&format!("W/\"{}\"", sha.to_uppercase())),
            Some(sha)
        );
        assert_eq!(sha256_of_etag("\"abc\""), None);
    }

    #[test]
    fn redirects_keep_the_host_of_a_relative_location() {
        assert_eq!(
            join_url("http://127.0.0.1:9/test/tiny/resolve/main/x", "/cdn/x"),
            "http://127.0.0.1:9/cdn/x"
        );
        assert_eq!(
            join_url("http://a/b", "https://cdn.example/x"),
            "https://cdn.example/x"
        );
    }

    #[test]
    fn shard_names_stay_in_the_directory() {
        assert!(is_file_name("model-00001-of-00002.safetensors"));
        for bad in ["", ".", "..", "a/b", "..\\x"] {
            assert!(!is_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_must_be_http() {
        let out = tempfile::tempdir().unwrap();
        let options = DownloadOptions::new("ftp://x", "a/b", "main", out.path().into());
        let error = download(&options).unwrap_err();
        assert_eq!(
            error.to_string(),
            "endpoint \"ftp://x\" is not an http:// or https:// address"
        );
    }

    #[test]
    fn only_passing_failures_are_retried() {
        assert!(FetchError::ServerBusy { status: 503 }.is_transient());
        assert!(FetchError::RangeRefused.is_transient());
        assert!(!FetchError::NotFound { file: "x".into() }.is_transient());
        assert!(!FetchError::Unauthorized { status: 401 }.is_transient());
    }
}
