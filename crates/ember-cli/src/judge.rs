//! `ember judge`: scores model responses 0-100 with an LLM judge (section 7.8), through
//! the Ollama chat API or an OpenAI-compatible endpoint.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ember_data::{InstructionEntry, format_input, read_instruction_data};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

/// Which wire protocol the judge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeApi {
    /// Ollama's `/api/chat`.
    Ollama,
    /// `/v1/chat/completions`.
    OpenAi,
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
    /// Attempts per entry for connection errors and HTTP 5xx.
    pub attempts: u32,
    /// Show a progress bar.
    pub progress: bool,
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
    let mut response = agent
        .post(&url)
        .header("Content-Type", "application/json")
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

/// Scores every entry of `path` (each with `model_response`).
pub fn judge_file(path: &Path, options: &JudgeOptions) -> Result<JudgeSummary> {
    let entries = read_instruction_data(path)?;
    if entries.is_empty() {
        bail!("{}: no entries to judge", path.display());
    }
    if let Some(i) = entries.iter().position(|e| e.model_response.is_none()) {
        bail!("{}: entry {i} has no \"model_response\"", path.display());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let bar = ProgressBar::with_draw_target(
        Some(entries.len() as u64),
        if options.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("judging [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut scores = Vec::with_capacity(entries.len());
    for entry in &entries {
        let prompt = judge_prompt(entry, entry.model_response.as_deref().unwrap_or_default());
        let mut attempt = 0;
        let score = loop {
            attempt += 1;
            match ask(&agent, options, &prompt) {
                Ok(answer) => break parse_score(&answer),
                Err(Failure::Transient(e)) if attempt < options.attempts => {
                    tracing::warn!(attempt, error = %e, "judge request failed; retrying");
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                }
                Err(Failure::Transient(e)) => {
                    tracing::warn!(error = %e, "judge request failed; giving up on this entry");
                    break None;
                }
                Err(Failure::Fatal(e)) => {
                    return Err(anyhow!(e)).context("the judge refused the request");
                }
            }
        };
        scores.push(score);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let scored: Vec<u32> = scores.iter().flatten().copied().collect();
    Ok(JudgeSummary {
        count: entries.len(),
        scored: scored.len(),
        average: (!scored.is_empty())
            .then(|| scored.iter().map(|&s| s as f64).sum::<f64>() / scored.len() as f64),
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
