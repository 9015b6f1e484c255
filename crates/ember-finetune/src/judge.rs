//! The LLM judge of section 7.8: each model response is scored 0-100 by a larger model
//! behind the Ollama chat API or an OpenAI-compatible endpoint, with the book's prompt.
//!
//! ```
//! use ember_finetune::judge::parse_score;
//!
//! // The first integer of the judge's answer, when it is a score.
//! assert_eq!(parse_score("Score: 92/100"), Some(92));
//! assert_eq!(parse_score("I'd say 250"), None);
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ember_data::{DataError, InstructionEntry, format_input, read_instruction_data};
use serde_json::{Value, json};

/// Why judging a file failed as a whole (single entries that fail are counted, not
/// errors).
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// The judge's address is not an HTTP URL.
    #[error("judge URL \"{0}\" is not an http:// or https:// address")]
    BadUrl(String),
    /// The responses file could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The responses file has nothing to judge.
    #[error("{}: no entries to judge", .0.display())]
    Empty(PathBuf),
    /// An entry has no `model_response`.
    #[error("{}: entry {index} has no \"model_response\"", path.display())]
    NoResponse {
        /// The responses file.
        path: PathBuf,
        /// The entry, counted from 0.
        index: usize,
    },
    /// Not one response got a score.
    #[error("no response could be scored ({tried} tried): {first_failure}")]
    NothingScored {
        /// Entries tried before giving up.
        tried: usize,
        /// What went wrong first.
        first_failure: String,
    },
}

/// Which wire protocol the judge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeApi {
    /// Ollama's `/api/chat`.
    Ollama,
    /// `/v1/chat/completions`.
    OpenAi,
}

impl FromStr for JudgeApi {
    type Err = String;

    /// `ollama` or `openai`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ollama" => Ok(Self::Ollama),
            "openai" => Ok(Self::OpenAi),
            other => Err(format!("unknown judge API \"{other}\" (ollama, openai)")),
        }
    }
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct JudgeOptions {
    /// Server address, e.g. `http://localhost:11434`.
    pub url: String,
    /// Model name, e.g. `llama3`.
    pub model: String,
    /// Protocol.
    pub api: JudgeApi,
    /// Attempts per entry for connection errors, timeouts, HTTP 429 and 5xx.
    pub attempts: u32,
    /// Show a progress bar.
    pub progress: bool,
    /// How long one request may take.
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
}

/// The outcome over a file.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeSummary {
    /// Entries in the file.
    pub count: usize,
    /// Entries that got a score.
    pub scored: usize,
    /// Mean score over the scored entries.
    pub average: Option<f64>,
    /// Entries without a score (unparseable answer or failed requests).
    pub failures: usize,
    /// Per entry: the score, if any.
    pub scores: Vec<Option<u32>>,
}

/// The book's judge prompt.
pub fn judge_prompt(entry: &InstructionEntry, response: &str) -> String {
    format!(
        "Given the input `{}` and correct output `{}`, score the model response `{}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.",
        format_input(entry),
        entry.output,
        response
    )
}

/// The first integer in the answer, if it is a valid score (0-100).
pub fn parse_score(answer: &str) -> Option<u32> {
    let mut digits = String::new();
    for c in answer.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else if !digits.is_empty() {
            break;
        }
    }
    digits.parse().ok().filter(|s| *s <= 100)
}

enum Failure {
    Transient(String),
    Fatal(String),
}

fn ask(agent: &ureq::Agent, options: &JudgeOptions, prompt: &str) -> Result<String, Failure> {
    let base = options.url.trim_end_matches('/');
    let messages = json!([{ "role": "user", "content": prompt }]);
    let (url, body) = match options.api {
        JudgeApi::Ollama => (
            format!("{base}/api/chat"),
            json!({
                "model": options.model,
                "messages": messages,
                "stream": false,
                "options": { "seed": 123, "temperature": 0, "num_ctx": 2048 },
            }),
        ),
        JudgeApi::OpenAi => (
            format!("{base}/v1/chat/completions"),
            json!({ "model": options.model, "messages": messages, "seed": 123, "temperature": 0 }),
        ),
    };
    let mut request = agent.post(&url).header("Content-Type", "application/json");
    if let Some(key) = &options.api_key {
        request = request.header("Authorization", &format!("Bearer {key}"));
    }
    let mut response = request
        .send(body.to_string())
        .map_err(|e| Failure::Transient(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| Failure::Transient(format!("{url}: {e}")))?;
    if status >= 500 || status == 429 {
        return Err(Failure::Transient(format!("{url}: HTTP {status}")));
    }
    if status >= 400 {
        return Err(Failure::Fatal(format!(
            "{url}: HTTP {status}: {}",
            text.trim()
        )));
    }
    // Ollama may stream one JSON object per line even when asked not to.
    let mut content = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Failure::Fatal(format!("{url}: not JSON: {e}")))?;
        let piece = match options.api {
            JudgeApi::Ollama => value["message"]["content"].as_str(),
            JudgeApi::OpenAi => value["choices"][0]["message"]["content"].as_str(),
        };
        content.push_str(piece.unwrap_or_default());
    }
    Ok(content)
}

/// Consecutive failed entries, with nothing scored yet, after which the judge is taken
/// to be unusable and the run stops.
const GIVE_UP_AFTER: usize = 3;

/// Scores every entry of `path` (each with `model_response`). An entry that cannot be
/// scored (after its retries) counts as a failure and the next one is tried; the scores
/// collected are kept. It is an error when nothing could be scored.
pub fn judge_file(path: &Path, options: &JudgeOptions) -> Result<JudgeSummary, JudgeError> {
    if !(options.url.starts_with("http://") || options.url.starts_with("https://")) {
        return Err(JudgeError::BadUrl(options.url.clone()));
    }
    let entries = read_instruction_data(path)?;
    if entries.is_empty() {
        return Err(JudgeError::Empty(path.to_path_buf()));
    }
    if let Some(index) = entries.iter().position(|e| e.model_response.is_none()) {
        return Err(JudgeError::NoResponse {
            path: path.to_path_buf(),
            index,
        });
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(options.timeout.min(Duration::from_secs(10))))
        .timeout_global(Some(options.timeout))
        .build()
        .into();
    let bar = ember_data::progress::bar(
        options.progress,
        Some(entries.len() as u64),
        "judging [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
    );
    let mut scores = Vec::with_capacity(entries.len());
    let mut first_failure: Option<String> = None;
    for entry in &entries {
        let prompt = judge_prompt(entry, entry.model_response.as_deref().unwrap_or_default());
        let mut attempt = 0;
        let score = loop {
            attempt += 1;
            match ask(&agent, options, &prompt) {
                Ok(answer) => {
                    let score = parse_score(&answer);
                    if score.is_none() {
                        first_failure.get_or_insert(format!("no score in the answer {answer:?}"));
                    }
                    break score;
                }
                Err(Failure::Transient(e)) if attempt < options.attempts => {
                    tracing::warn!(attempt, error = %e, "judge request failed; retrying");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                }
                Err(Failure::Transient(e) | Failure::Fatal(e)) => {
                    tracing::warn!(error = %e, "judge request failed; counting the entry as a failure");
                    first_failure.get_or_insert(e);
                    break None;
                }
            }
        };
        scores.push(score);
        bar.inc(1);
        if scores.len() >= GIVE_UP_AFTER && scores.iter().all(Option::is_none) {
            break;
        }
    }
    bar.finish_and_clear();
    let scored: Vec<u32> = scores.iter().flatten().copied().collect();
    if scored.is_empty() {
        return Err(JudgeError::NothingScored {
            tried: scores.len(),
            first_failure: first_failure.unwrap_or_default(),
        });
    }
    Ok(JudgeSummary {
        count: entries.len(),
        scored: scored.len(),
        average: Some(scored.iter().map(|&s| s as f64).sum::<f64>() / scored.len() as f64),
        failures: entries.len() - scored.len(),
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_parsed_robustly() {
        assert_eq!(parse_score("85"), Some(85));
        assert_eq!(parse_score("Score: 92/100"), Some(92));
        assert_eq!(parse_score("  100\n"), Some(100));
        assert_eq!(parse_score("I'd say 250"), None);
        assert_eq!(parse_score("no idea"), None);
    }
}
