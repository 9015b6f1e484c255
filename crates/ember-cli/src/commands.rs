//! One function per `ember` subcommand.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use ember_model::ModelConfig;
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use ember_train::{PretrainConfig, StopReason};

use crate::runs::{RunArgs, fmt_opt, interrupt_flag};

/// Read all of stdin as UTF-8.
fn read_stdin_text() -> Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read standard input")?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "standard input is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `gpt2` (embedded) or a path to a Hugging Face `tokenizer.json`.
pub fn load_tokenizer(name: &str) -> Result<Gpt2Tokenizer> {
    if name == "gpt2" {
        return Ok(Gpt2Tokenizer::gpt2()?);
    }
    let path = Path::new(name);
    if !path.exists() {
        bail!("unknown tokenizer \"{name}\": use gpt2 or the path of a tokenizer.json");
    }
    Gpt2Tokenizer::from_file(path).with_context(|| format!("cannot load the tokenizer {name}"))
}

/// `ember tokenize`
pub fn tokenize(tokenizer: &str, allow_special: bool, json: bool) -> Result<()> {
    let tokenizer = load_tokenizer(tokenizer)?;
    let text = read_stdin_text()?;
    let ids = tokenizer.encode(&text, allow_special)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "ids": ids }))?;
    } else {
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", line.join(" "))?;
    }
    Ok(())
}

/// `ember detokenize`: ids separated by spaces, commas or newlines, or `{"ids": [...]}`.
pub fn detokenize(tokenizer: &str) -> Result<()> {
    let tokenizer = load_tokenizer(tokenizer)?;
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

/// `ember prepare`
pub fn prepare(
    input: &Path,
    output: &Path,
    val_fraction: f64,
    shard_tokens: usize,
    tokenizer: &str,
) -> Result<()> {
    let tokenizer = load_tokenizer(tokenizer)?;
    let options = ember_data::PrepareOptions {
        val_fraction,
        shard_tokens,
        progress: true,
    };
    let summary = ember_data::prepare_corpus(input, output, &tokenizer, options)?;
    println!(
        "{} files, {} documents: {} training tokens in {} shard(s), {} validation tokens ({} documents) in {} shard(s) under {}",
        summary.input_files.len(),
        summary.num_documents,
        summary.train_tokens,
        summary.train_shards.len(),
        summary.val_tokens,
        summary.val_documents,
        summary.val_shards.len(),
        output.display()
    );
    Ok(())
}

/// `ember info` for any architecture: GPT-2's figures as the book gives them (with and
/// without a tied head), the others' parameter count.
pub fn info(config: &ModelConfig, json: bool) -> Result<()> {
    let config = match config {
        ModelConfig::Gpt2(c) => c,
        other => {
            let params = other.num_params();
            let size_mb = params as f64 * 4.0 / (1024.0 * 1024.0);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model_type": other.model_type(),
                        "config": other.to_json(),
                        "params": params,
                        "size_mb": size_mb,
                    })
                );
            } else {
                println!("{other:#?}");
                println!("parameters:               {:>13}", group(params));
                println!("size in float32:          {size_mb:>10.2} MB");
            }
            return Ok(());
        }
    };
    let untied = config.clone().with_tied_embeddings(false);
    let tied = config.clone().with_tied_embeddings(true);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "config": config,
                "params": config.num_params(),
                "params_untied": untied.num_params(),
                "params_tied": tied.num_params(),
                "size_mb": config.size_mb(),
            })
        );
    } else {
        println!("{config:#?}");
        println!(
            "parameters (untied head): {:>13}",
            group(untied.num_params())
        );
        println!("parameters (tied head):   {:>13}", group(tied.num_params()));
        println!("size in float32:          {:>10.2} MB", config.size_mb());
    }
    Ok(())
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Options of `ember pretrain`.
#[derive(Debug, Clone, clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Run preset: book (chapter 5), tiny (minutes on a CPU), corpus (prepared shards).
    #[arg(long)]
    pub preset: Option<String>,
    /// Training text file or `ember prepare` shard directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Start from these weights (any model Ember loads, of the configured shape, or a
    /// Hub repository id OWNER/NAME[@REVISION] that is no path here) instead of drawing
    /// new ones.
    #[arg(long)]
    pub init: Option<PathBuf>,
}

/// `ember pretrain`
pub fn pretrain(args: PretrainArgs, device: &Device) -> Result<()> {
    if args.run.resume.is_some() && args.preset.is_some() {
        bail!(
            "--resume continues the run with its own config.toml; leave out --preset (change what may change with --set)"
        );
    }
    let base = PretrainConfig::preset(args.preset.as_deref().unwrap_or("book"))?;
    let (mut config, run_dir) = args.run.resolve(base, "runs/pretrain", |c| {
        if let Some(data) = &args.data {
            c.data.path = data.clone();
        }
        if let Some(init) = &args.init {
            c.init = Some(init.clone());
        }
    })?;
    // A Hub repository id becomes its snapshot in the Hugging Face cache, the path the
    // run's config.toml records.
    config.init = config
        .init
        .as_deref()
        .map(crate::model_arg::resolve_model)
        .transpose()?;
    let interrupt = interrupt_flag();
    tracing::info!(
        run_dir = %run_dir.display(),
        params = config.model.num_params(),
        data = %config.data.path.display(),
        "pretraining"
    );
    let devices = args.run.devices()?;
    let device = devices.first().unwrap_or(device);
    let outcome = ember_train::pretrain(
        &config,
        &run_dir,
        device,
        args.run.options(&interrupt, &devices),
    )?;
    println!(
        "{} after {} steps ({} tokens): train loss {}, val loss {}",
        match outcome.stop {
            StopReason::Finished => "finished",
            StopReason::MaxSteps | StopReason::Interrupted => "stopped at --max-steps",
        },
        outcome.state.step,
        outcome.state.tokens_seen,
        fmt_opt(outcome.train_loss),
        fmt_opt(outcome.val_loss),
    );
    println!(
        "run directory: {} (metrics.jsonl, loss.png, samples.txt, model/, checkpoints/)",
        outcome.run_dir.display()
    );
    Ok(())
}
