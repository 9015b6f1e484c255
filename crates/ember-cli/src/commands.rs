//! One function per `ember` subcommand.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use ember_model::{GenerationConfig, GptConfig, generate};
use ember_tokenizer::{END_OF_TEXT_ID, Gpt2Tokenizer, Tokenizer};
use ember_train::{PretrainConfig, StopReason, cross_entropy, perplexity as ppl};

use crate::runs::{RunArgs, fmt_opt, interrupt_flag};

use crate::model_arg::ModelArgs;

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

/// `ember info`
pub fn info(config: &GptConfig, json: bool) -> Result<()> {
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

/// Streams one token: prints the whole UTF-8 characters received so far and keeps the
/// bytes of a character that a token ended in the middle of.
fn print_token(tokenizer: &Gpt2Tokenizer, id: u32, pending: &mut Vec<u8>, out: &mut impl Write) {
    if let Ok(bytes) = tokenizer.decode_bytes(&[id]) {
        pending.extend(bytes);
        let valid = match std::str::from_utf8(pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        // A closed stdout (a pipe to `head`) must not stop the generation with a panic.
        let _ = out.write_all(&pending[..valid]);
        let _ = out.flush();
        pending.drain(..valid);
    }
}

/// Ends a streamed answer: whatever incomplete bytes remain, then a newline.
fn finish_stream(pending: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    if !pending.is_empty() {
        out.write_all(String::from_utf8_lossy(pending).as_bytes())?;
    }
    writeln!(out)
}

/// Settings of `ember generate`.
pub struct GenerateArgs<'a> {
    /// Prompt text.
    pub prompt: &'a str,
    /// Sampling settings.
    pub config: GenerationConfig,
    /// JSON output instead of streamed text.
    pub json: bool,
}

/// `ember generate`
pub fn generate_text(model: &ModelArgs, args: GenerateArgs<'_>, device: &Device) -> Result<()> {
    // Every setting is checked before anything is printed.
    args.config.validate()?;
    let loaded = model.load(device)?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;
    let prompt_ids = tokenizer.encode(args.prompt, true)?;
    ember_model::check_prompt(&loaded.model, &prompt_ids)?;
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new();
    let stream = !args.json;
    if stream {
        write!(out, "{}", args.prompt)?;
        out.flush()?;
    }
    let generated = generate(&loaded.model, &prompt_ids, &args.config, device, |id| {
        if stream {
            print_token(&tokenizer, id, &mut pending, &mut out);
        }
    })?;
    if stream {
        finish_stream(&pending, &mut out)?;
    } else {
        let text = tokenizer.decode(&generated)?;
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "text": text,
            })
        )?;
    }
    Ok(())
}

/// `ember perplexity`: mean next-token loss over the text, in windows of the context
/// length when it does not fit in one.
pub fn perplexity(model: &ModelArgs, text_file: &Path, json: bool, device: &Device) -> Result<()> {
    let loaded = model.load(device)?;
    let bytes =
        std::fs::read(text_file).with_context(|| format!("cannot read {}", text_file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: not valid UTF-8 (byte {})",
            text_file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;
    let ids = tokenizer.encode(&text, true)?;
    if ids.len() < 2 {
        bail!(
            "{}: {} token(s); perplexity needs at least 2",
            text_file.display(),
            ids.len()
        );
    }
    let context = loaded.model.context_length;
    let mut total = 0.0f64;
    let mut count = 0usize;
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + context + 1).min(ids.len());
        let window = &ids[start..end];
        let n = window.len() - 1;
        let to_tensor = |s: &[u32]| {
            Tensor::<2, Int>::from_data(
                TensorData::new(
                    s.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [1, s.len()],
                ),
                device,
            )
        };
        let logits = loaded.model.forward(to_tensor(&window[..n]));
        let loss: f32 = cross_entropy(logits, to_tensor(&window[1..])).into_scalar();
        total += loss as f64 * n as f64;
        count += n;
        start += context;
    }
    let loss = total / count as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({"tokens": ids.len(), "loss": loss, "perplexity": ppl(loss)})
        );
    } else {
        println!(
            "tokens {}  loss {loss:.4}  perplexity {:.2}",
            ids.len(),
            ppl(loss)
        );
    }
    Ok(())
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
    /// Start from these weights (any model Ember loads, of the configured shape)
    /// instead of drawing new ones.
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
    let (config, run_dir) = args.run.resolve(base, "runs/pretrain", |c| {
        if let Some(data) = &args.data {
            c.data.path = data.clone();
        }
        if let Some(init) = &args.init {
            c.init = Some(init.clone());
        }
    })?;
    let interrupt = interrupt_flag();
    tracing::info!(
        run_dir = %run_dir.display(),
        params = config.model.num_params(),
        data = %config.data.path.display(),
        "pretraining"
    );
    let outcome = ember_train::pretrain(&config, &run_dir, device, args.run.options(&interrupt))?;
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

/// `ember chat`: each line of standard input becomes the instruction of an Alpaca
/// prompt (the chapter 7 format); the answer streams until `<|endoftext|>`, the token
/// limit, or the end of the context. An empty line, `exit` or end of input quits.
pub fn chat(
    model: &ModelArgs,
    system: Option<&str>,
    config: GenerationConfig,
    device: &Device,
) -> Result<()> {
    use std::io::BufRead;
    let loaded = model.load(device)?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(());
        }
        let message = line.trim();
        if message.is_empty() || message == "exit" || message == "quit" {
            return Ok(());
        }
        let entry = ember_data::InstructionEntry::question(
            system.map_or_else(|| message.to_string(), |s| format!("{s}\n\n{message}")),
        );
        let prompt = ember_data::format_prompt(&entry);
        let ids = tokenizer.encode(&prompt, false)?;
        let mut pending: Vec<u8> = Vec::new();
        generate(&loaded.model, &ids, &config, device, |id| {
            if id != END_OF_TEXT_ID {
                print_token(&tokenizer, id, &mut pending, &mut out);
            }
        })?;
        finish_stream(&pending, &mut out)?;
    }
}

/// The `<|endoftext|>` id, where generation stops unless `--no-stop`.
pub const EOT: u32 = END_OF_TEXT_ID;
