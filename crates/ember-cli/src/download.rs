//! `ember download`: the public GPT-2 weights from the Hugging Face Hub.
//!
//! Plain HTTP through `ureq`: each file is fetched from
//! `{endpoint}/{repo}/resolve/{revision}/{file}`, into `{file}.part` first. An
//! interrupted download resumes with a `Range` request; the result is checked against
//! the SHA-256 that the Hub announces for large files (`X-Linked-Etag` on the redirect,
//! or an `ETag` that is a SHA-256), then synced and renamed into place. Transient
//! failures (connection errors, HTTP 5xx) are retried.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

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
    /// Files to fetch.
    pub files: Vec<String>,
    /// Destination directory.
    pub out_dir: PathBuf,
    /// Attempts per file for transient failures.
    pub attempts: u32,
    /// Show a progress bar.
    pub progress: bool,
}

/// The files a GPT-2 directory needs.
pub const MODEL_FILES: [&str; 2] = ["config.json", "model.safetensors"];

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
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

/// Fetch every file; returns their final paths.
pub fn download(options: &DownloadOptions) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;
    let agent = agent();
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
            match fetch_file(&agent, &url, &target, options.progress) {
                Ok(()) => break,
                Err(e) if e.downcast_ref::<Transient>().is_some() && attempt < options.attempts => {
                    tracing::warn!(file = %file, attempt, error = %e, "download interrupted; resuming");
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                }
                Err(e) => return Err(e.context(format!("cannot download {url}"))),
            }
        }
        paths.push(target);
    }
    Ok(paths)
}

fn fetch_file(agent: &ureq::Agent, url: &str, target: &Path, progress: bool) -> Result<()> {
    let part = target.with_file_name(format!(
        "{}.part",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
    ));
    let mut expected_sha = None;
    let mut expected_size: Option<u64> = None;
    let mut current = url.to_string();
    let mut redirects = 0;
    let mut response = loop {
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        let mut request = agent.get(&current);
        if have > 0 {
            request = request.header("Range", &format!("bytes={have}-"));
        }
        let response = request
            .call()
            .map_err(|e| anyhow!(Transient(format!("request failed: {e}"))))?;
        let status = response.status().as_u16();
        if let Some(sha) = header(&response, "x-linked-etag").and_then(|e| sha256_of_etag(&e)) {
            expected_sha = Some(sha);
        }
        if let Some(size) = header(&response, "x-linked-size").and_then(|s| s.parse().ok()) {
            expected_size = Some(size);
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
            return Err(anyhow!(Transient(format!("server answered HTTP {status}"))));
        }
        if status == 416 && have > 0 {
            // The partial file is already whole.
            break response;
        }
        if !(200..300).contains(&status) {
            bail!("server answered HTTP {status}");
        }
        if expected_sha.is_none() {
            expected_sha = header(&response, "etag").and_then(|e| sha256_of_etag(&e));
        }
        break response;
    };
    let status = response.status().as_u16();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    if status == 200 {
        // The server ignored the range (or there was none): start over.
        file.set_len(0)?;
    }
    if status != 416 {
        let offset = file.metadata()?.len();
        let length: Option<u64> = header(&response, "content-length").and_then(|v| v.parse().ok());
        let total = expected_size.or(length.map(|l| l + offset));
        let bar = ProgressBar::with_draw_target(
            total,
            if progress {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
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
        let mut received = 0u64;
        loop {
            let n = reader.read(&mut buffer).map_err(|e| {
                anyhow!(Transient(format!(
                    "connection lost after {received} bytes: {e}"
                )))
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])?;
            received += n as u64;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        if let Some(length) = length
            && received < length
        {
            return Err(anyhow!(Transient(format!(
                "connection closed after {received} of {length} bytes"
            ))));
        }
    }
    file.sync_all()?;
    drop(file);
    if let Some(expected) = expected_sha {
        let actual = sha256_file(&part)?;
        if actual != expected {
            std::fs::remove_file(&part).ok();
            bail!(
                "checksum mismatch for {}: expected sha256 {expected}, got {actual}; the partial file was removed",
                target.display()
            );
        }
    }
    std::fs::rename(&part, target)
        .with_context(|| format!("cannot move {} into place", part.display()))?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path)?;
    file.rewind()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
