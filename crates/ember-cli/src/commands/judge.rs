//! `ember judge`: scores model responses 0-100 with an LLM judge (section 7.8,
//! `ember_finetune::judge`), through the Ollama chat API or an OpenAI-compatible
//! endpoint.

use std::time::Duration;

use anyhow::Result;
use ember_finetune::judge::{JudgeApi, JudgeOptions, judge_file};
use serde_json::json;

/// Options of `ember judge`.
#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// JSON list of entries with instruction, input, output and model_response.
    #[arg(long)]
    pub responses: std::path::PathBuf,
    /// Judge server.
    #[arg(long, default_value = "http://localhost:11434")]
    pub url: String,
    /// Judge model.
    #[arg(long, default_value = "llama3")]
    pub model: String,
    /// `ollama` (/api/chat) or `openai` (/v1/chat/completions).
    #[arg(long, default_value = "ollama")]
    pub api: JudgeApi,
    /// Attempts per entry for connection errors, timeouts, HTTP 429 and 5xx.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// API key sent as `Authorization: Bearer` (default: $OPENAI_API_KEY with
    /// `--api openai`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Print `{"count", "scored", "average", "failures"}`.
    #[arg(long)]
    pub json: bool,
}

/// `ember judge`: fails (non-zero exit) when no response could be scored.
pub fn run(args: JudgeArgs) -> Result<()> {
    let api = args.api;
    let api_key = args.api_key.clone().or_else(|| {
        (api == JudgeApi::OpenAi)
            .then(|| std::env::var("OPENAI_API_KEY").ok())
            .flatten()
            .filter(|k| !k.is_empty())
    });
    let options = JudgeOptions {
        url: args.url,
        model: args.model,
        api,
        attempts: args.attempts.max(1),
        progress: !args.json,
        timeout: Duration::from_secs(args.timeout.max(1)),
        api_key,
    };
    let summary = judge_file(&args.responses, &options)?;
    if args.json {
        println!(
            "{}",
            json!({
                "count": summary.count,
                "scored": summary.scored,
                "average": summary.average,
                "failures": summary.failures,
            })
        );
    } else {
        println!(
            "scored {} of {} responses, average {}, {} failure(s)",
            summary.scored,
            summary.count,
            summary
                .average
                .map_or("-".to_string(), |a| format!("{a:.2}")),
            summary.failures
        );
    }
    Ok(())
}
