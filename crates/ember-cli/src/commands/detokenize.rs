//! `ember detokenize`: the text of the token ids on standard input.

use std::io::Write;

use anyhow::{Context, Result, anyhow};

use crate::args::tokenizer::{load_tokenizer, read_stdin_text};

/// Options of `ember detokenize`.
#[derive(Debug, Clone, clap::Args)]
pub struct DetokenizeArgs {
    /// `gpt2` or the path of a tokenizer.json.
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: String,
}

/// `ember detokenize`: ids separated by spaces, commas or newlines, or `{"ids": [...]}`.
pub fn run(args: &DetokenizeArgs) -> Result<()> {
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    let text = read_stdin_text()?;
    let ids: Vec<u32> = if text.trim_start().starts_with('{') || text.trim_start().starts_with('[')
    {
        let value: serde_json::Value =
            serde_json::from_str(&text).context("standard input is not valid JSON")?;
        let list = value.get("ids").cloned().unwrap_or(value);
        serde_json::from_value(list)
            .context("expected {\"ids\": [integers]} or a list of integers")?
    } else {
        text.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .map_err(|_| anyhow!("\"{s}\" is not a token id"))
            })
            .collect::<Result<_>>()?
    };
    let bytes = tokenizer.decode_bytes(&ids)?;
    std::io::stdout().lock().write_all(&bytes)?;
    Ok(())
}
