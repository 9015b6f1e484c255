//! `ember download`: a model from the Hugging Face Hub (or any server laid out like it):
//! its configuration, tokenizer and generation files, and its weights, one file or the
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

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Options of `ember download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// gpt2-small, gpt2-medium, gpt2-large or gpt2-xl.
    #[arg(long, default_value = "gpt2-small")]
    pub size: String,
    /// Destination directory (default models/SIZE; for --repo, the Hugging Face cache,
    /// shared with the Python tools, where `--model OWNER/NAME` finds it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hub address (default $HF_ENDPOINT or https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A Hub repository, OWNER/NAME (GPT-2, Llama 3.x, Qwen3), instead of a GPT-2 size.
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Attempts per file for transient failures.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Seconds a transfer may go without receiving a byte before it is retried.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `ember download`
pub fn run(args: DownloadArgs) -> Result<()> {
    let repo = match &args.repo {
        Some(repo) => repo.clone(),
        None => repo_for(&args.size)?.to_string(),
    };
    let endpoint = crate::hub_cache::endpoint_or_default(args.endpoint.as_deref());
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("models").join(&args.size));
    let mut options = DownloadOptions::new(&endpoint, &repo, &args.revision, out_dir);
    options.attempts = args.attempts.max(1);
    options.read_timeout = Duration::from_secs(args.timeout.max(1));
    options.token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let dir = if args.repo.is_some() && args.out.is_none() {
        crate::hub_cache::download_into(&crate::hub_cache::cache_dir(), &mut options)?
    } else {
        download_model(&options)?;
        options.out_dir.clone()
    };
    println!("{}", dir.display());
    Ok(())
}

/// The repositories of the four GPT-2 sizes.
pub fn repo_for(size: &str) -> Result<&'static str> {
    Ok(match size {
        "gpt2" | "gpt2-small" | "124M" => "openai-community/gpt2",
        "gpt2-medium" | "355M" => "openai-community/gpt2-medium",
        "gpt2-large" | "774M" => "openai-community/gpt2-large",
        "gpt2-xl" | "1558M" => "openai-community/gpt2-xl",
        other => {
            bail!("unknown GPT-2 size \"{other}\" (gpt2-small, gpt2-medium, gpt2-large, gpt2-xl)")
        }
    })
}

/// What to fetch and where.
#[derive(Debug, Clone)]
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
    /// Show a progress bar.
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
    /// files of at most 64 GiB from a server that announces no size.
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
}

/// What a model directory holds beside its weights: the configuration (required) and,
/// when the repository has them, the tokenizer and generation settings.
pub const MODEL_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The file a server does not have (HTTP 404).
#[derive(Debug)]
struct NotOnServer(String);

impl std::fmt::Display for NotOnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not in the repository (HTTP 404)", self.0)
    }
}

impl std::error::Error for NotOnServer {}

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

/// A failure worth another attempt.
#[derive(Debug)]
struct Transient(String);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Transient {}

fn transient(message: String) -> anyhow::Error {
    anyhow!(Transient(message))
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

/// Fetches a model: `config.json`; the tokenizer and generation files the repository
/// has; and the weights, one `model.safetensors` or the shards that
/// `model.safetensors.index.json` lists. Returns the files written.
pub fn download_model(options: &DownloadOptions) -> Result<Vec<PathBuf>> {
    let mut written = download(&DownloadOptions {
        files: vec!["config.json".into()],
        ..options.clone()
    })?;
    for file in &MODEL_FILES[1..] {
        written.extend(fetch_optional(options, file)?);
    }
    match fetch_optional(options, ember_model::weights::INDEX_FILE)? {
        Some(index) => {
            let text = std::fs::read_to_string(&index)?;
            let parsed: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid shard index", index.display()))?;
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
            if let Some(bad) = shards.iter().find(|s| s.contains('/') || s.contains('\\')) {
                bail!("{}: shard \"{bad}\" is not a file name", index.display());
            }
            if shards.is_empty() {
                bail!("{}: the index lists no shards", index.display());
            }
            written.push(index);
            written.extend(download(&DownloadOptions {
                files: shards,
                ..options.clone()
            })?);
        }
        None => written.extend(download(&DownloadOptions {
            files: vec![ember_model::weights::WEIGHTS_FILE.into()],
            ..options.clone()
        })?),
    }
    Ok(written)
}

/// `file` if the repository has it (`None` on HTTP 404).
fn fetch_optional(options: &DownloadOptions, file: &str) -> Result<Option<PathBuf>> {
    match download(&DownloadOptions {
        files: vec![file.to_string()],
        ..options.clone()
    }) {
        Ok(mut paths) => Ok(paths.pop()),
        Err(e) if e.chain().any(|c| c.downcast_ref::<NotOnServer>().is_some()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fetch every file of `options.files`; returns their final paths.
pub fn download(options: &DownloadOptions) -> Result<Vec<PathBuf>> {
    if !(options.endpoint.starts_with("http://") || options.endpoint.starts_with("https://")) {
        bail!(
            "endpoint \"{}\" is not an http:// or https:// address",
            options.endpoint
        );
    }
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;
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
                Err(e) if e.downcast_ref::<Transient>().is_some() && attempt < options.attempts => {
                    tracing::warn!(file = %file, attempt, error = %e, "download interrupted; retrying");
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                }
                Err(e) => return Err(e.context(format!("cannot download {url}"))),
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
) -> Result<()> {
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
        let response = request
            .call()
            .map_err(|e| transient(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        if let Some(sha) = header(&response, "x-linked-etag").and_then(|e| sha256_of_etag(&e)) {
            announced.sha256 = Some(sha);
        }
        if let Some(size) = header(&response, "x-linked-size").and_then(|s| s.parse().ok()) {
            announced.size = Some(size);
        }
        if (300..400).contains(&status) {
            redirects += 1;
            let location = header(&response, "location")
                .ok_or_else(|| anyhow!("redirect without a location"))?;
            if redirects > 5 {
                bail!("too many redirects");
            }
            current = join_url(&current, &location);
            continue;
        }
        if status >= 500 || status == 429 {
            return Err(transient(format!("server answered HTTP {status}")));
        }
        if status == 404 {
            return Err(anyhow!(NotOnServer(
                target
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            )));
        }
        if status == 401 || status == 403 {
            bail!("server answered HTTP {status}: the repository needs an access token (HF_TOKEN)");
        }
        if !(200..300).contains(&status) && status != 416 {
            bail!("server answered HTTP {status}");
        }
        if announced.sha256.is_none() {
            announced.sha256 = header(&response, "etag").and_then(|e| sha256_of_etag(&e));
        }
        break response;
    };
    let status = response.status().as_u16();
    let etag = header(&response, "etag");
    let start_over = || -> Result<()> {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&info_path);
        Ok(())
    };
    if status == 416 {
        // The range starts at or past the end: the part may be whole, if it checks out.
        if announced.sha256.is_some() {
            return finish(&part, &info_path, target, &announced, have > 0);
        }
        start_over()?;
        return Err(transient(
            "the server refused the range of a partial download; starting over".into(),
        ));
    }
    let resuming = status == 206;
    if resuming {
        let range_start = header(&response, "content-range")
            .and_then(|r| r.strip_prefix("bytes ").map(str::to_string))
            .and_then(|r| r.split('-').next().and_then(|s| s.parse::<u64>().ok()));
        if range_start != Some(have) {
            start_over()?;
            return Err(transient(format!(
                "the server answered a range request for byte {have} from byte {range_start:?}; starting over"
            )));
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
    .with_context(|| format!("cannot write {}", info_path.display()))?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    if !resuming {
        file.set_len(0)?;
    }
    let limit = total.unwrap_or(options.max_unannounced_bytes);
    let bar = ember_data::progress::bar(
        options.progress,
        total,
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    );
    bar.set_message(
        target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
    );
    bar.set_position(offset);
    let mut reader = response.body_mut().as_reader();
    let mut buffer = vec![0u8; 1 << 16];
    let mut written = offset;
    loop {
        let n = reader.read(&mut buffer).map_err(|e| {
            transient(format!(
                "connection lost after {} bytes: {e}",
                written - offset
            ))
        })?;
        if n == 0 {
            break;
        }
        if written + n as u64 > limit {
            drop(file);
            start_over()?;
            bail!(
                "the server sent more than the {} announced bytes of {}; the partial file was removed",
                limit,
                target.display()
            );
        }
        file.write_all(&buffer[..n])?;
        written += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    drop(file);
    if let Some(total) = total
        && written < total
    {
        return Err(transient(format!(
            "connection closed after {written} of {total} bytes"
        )));
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
) -> Result<()> {
    if let Some(expected) = &announced.sha256 {
        let actual = ember_data::files::sha256_file(part)
            .with_context(|| format!("cannot read {}", part.display()))?;
        if &actual != expected {
            std::fs::remove_file(part).ok();
            std::fs::remove_file(info_path).ok();
            if resumed {
                return Err(transient(format!(
                    "a resumed download of {} did not check out; starting over",
                    target.display()
                )));
            }
            bail!(
                "checksum mismatch for {}: expected sha256 {expected}, got {actual}; the partial file was removed",
                target.display()
            );
        }
    }
    if let Some(size) = announced.size {
        let actual = std::fs::metadata(part)?.len();
        if actual != size {
            std::fs::remove_file(part).ok();
            std::fs::remove_file(info_path).ok();
            bail!(
                "{} holds {actual} bytes, the server announced {size}; the partial file was removed",
                target.display()
            );
        }
    }
    std::fs::rename(part, target)
        .with_context(|| format!("cannot move {} into place", part.display()))?;
    std::fs::remove_file(info_path).ok();
    if let Some(dir) = target.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
