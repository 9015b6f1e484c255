//! `ember tokenize`: the token ids of the UTF-8 text on standard input.

use std::io::Write;

use anyhow::Result;
use ember_tokenizer::Tokenizer;

use crate::args::tokenizer::{load_tokenizer, read_stdin_text};

/// Options of `ember tokenize`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizeArgs {
    /// `gpt2` or the path of a tokenizer.json.
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: String,
    /// Encode `<|endoftext|>` as its special id (otherwise it is an error).
    #[arg(long)]
    pub allow_special: bool,
    /// Print `{"ids": [...]}`.
    #[arg(long)]
    pub json: bool,
}

/// `ember tokenize`
pub fn run(args: &TokenizeArgs) -> Result<()> {
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    let text = read_stdin_text()?;
    let ids = tokenizer.encode(&text, args.allow_special)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "ids": ids }))?;
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", line.join(" "))?;
    }
    Ok(())
}
