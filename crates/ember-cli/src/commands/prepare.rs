//! `ember prepare`: a text corpus tokenized into uint16 shards.

use std::path::PathBuf;

use anyhow::Result;

use crate::args::tokenizer::load_tokenizer;

/// Options of `ember prepare`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// A .txt or .jsonl file, or a directory of them.
    #[arg(long)]
    pub input: PathBuf,
    /// Directory for train_*.bin and val_*.bin.
    #[arg(long)]
    pub output: PathBuf,
    /// Fraction of the documents kept for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Tokens per shard.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: usize,
    /// `gpt2` or the path of a tokenizer.json.
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: String,
}

/// `ember prepare`
pub fn run(args: &PrepareArgs) -> Result<()> {
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    let options = ember_data::PrepareOptions {
        val_fraction: args.val_fraction,
        shard_tokens: args.shard_tokens,
        progress: true,
    };
    let summary = ember_data::prepare_corpus(&args.input, &args.output, &tokenizer, options)?;
    println!(
        "{} files, {} documents: {} training tokens in {} shard(s), {} validation tokens ({} documents) in {} shard(s) under {}",
        summary.input_files.len(),
        summary.num_documents,
        summary.train_tokens,
        summary.train_shards.len(),
        summary.val_tokens,
        summary.val_documents,
        summary.val_shards.len(),
        args.output.display()
    );
    Ok(())
}
