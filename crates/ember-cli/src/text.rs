//! The commands that run a model on text, for every architecture Ember loads:
//! `ember generate`, `ember perplexity`, `ember chat`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use ember_model::{GenerationConfig, check_prompt, generate};
use ember_tokenizer::{ChatMessage, TextStream};
use ember_train::{perplexity as ppl, text_loss};

use crate::model_arg::ModelArgs;

/// Sampling options shared by `generate` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample within the top-p probability mass.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// Recompute every position at each step instead of using the KV cache.
    #[arg(long)]
    pub no_kv_cache: bool,
}

impl SamplingArgs {
    /// The generation settings, stopping at `stop_tokens`; `default_tokens` when
    /// `--max-new-tokens` is not given.
    pub fn config(&self, default_tokens: usize, stop_tokens: Vec<u32>) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens.unwrap_or(default_tokens),
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop_tokens,
            use_kv_cache: !self.no_kv_cache,
        }
    }
}

/// Options of `ember generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt, encoded as the model's tokenizer does by default.
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep going past every end-of-text token of the model.
    #[arg(long)]
    pub no_stop: bool,
    /// Print `{"prompt_ids", "generated_ids", "text"}` instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// Writes and flushes; a closed stdout (a pipe to `head`) does not stop generation.
fn emit(out: &mut impl Write, text: &str) {
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `ember generate`
pub fn generate_text(args: &GenerateArgs, device: &Device) -> Result<()> {
    // Every setting is checked before anything is printed.
    args.sampling.config(50, Vec::new()).validate()?;
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let prompt_ids = tokenizer.encode(&args.prompt)?;
    check_prompt(&loaded.model, &prompt_ids)?;
    let stops = if args.no_stop {
        Vec::new()
    } else {
        tokenizer.eos_ids().to_vec()
    };
    let config = args.sampling.config(50, stops);
    let mut out = std::io::stdout().lock();
    let mut stream = TextStream::new(&tokenizer);
    if !args.json {
        emit(&mut out, &args.prompt);
    }
    let generated = generate(&loaded.model, &prompt_ids, &config, device, |id| {
        if !args.json {
            let text = stream.push(id);
            emit(&mut out, &text);
        }
    })?;
    if args.json {
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
    } else {
        let rest = stream.finish();
        emit(&mut out, &format!("{rest}\n"));
    }
    Ok(())
}

/// Options of `ember perplexity`.
#[derive(Debug, Clone, clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text.
    #[arg(long)]
    pub text_file: PathBuf,
    /// Print `{"tokens", "loss", "perplexity"}`.
    #[arg(long)]
    pub json: bool,
    /// Also write the logits of the text's first window (`logits`, `[tokens, vocab]`)
    /// as a safetensors file, for comparing with another implementation.
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
}

/// Reads a UTF-8 text file.
fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: not valid UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// `ember perplexity`: the mean next-token loss over the text, tokenized as `generate`
/// tokenizes a prompt, in windows of the context length when it does not fit in one.
pub fn perplexity(args: &PerplexityArgs, device: &Device) -> Result<()> {
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let text = read_text(&args.text_file)?;
    let ids = tokenizer.encode(&text)?;
    let measured = text_loss(&loaded.model, &ids, device, |start, logits| {
        match (&args.logits_out, start) {
            (Some(path), 0) => write_logits(path, logits),
            _ => Ok(()),
        }
    })?;
    let Some(measured) = measured else {
        bail!(
            "{}: {} token(s); perplexity needs at least 2",
            args.text_file.display(),
            ids.len()
        );
    };
    let loss = measured.loss;
    if args.json {
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

/// Writes `logits` (`[1, tokens, vocab]`) as the tensor `logits`, `[tokens, vocab]`.
fn write_logits(path: &Path, logits: &Tensor<3>) -> Result<()> {
    let [_, rows, vocab] = logits.dims();
    let values = logits
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow!("logits: {e:?}"))?;
    ember_model::weights::write_safetensors(
        path,
        &[("logits".to_string(), vec![rows, vocab], values)],
    )?;
    Ok(())
}

/// Options of `ember chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message before the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// One turn without a terminal: answer this message and exit.
    #[arg(long)]
    pub message: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// With --message: print `{"prompt_ids", "generated_ids", "text"}`.
    #[arg(long, requires = "message")]
    pub json: bool,
}

/// `ember chat`: a conversation rendered with the model's chat template (the book's
/// Alpaca prompt for GPT-2 models without one); each answer streams until an
/// end-of-text token, the token limit or the end of the context. Interactive: an empty
/// line, `exit` or the end of input quits. With `--message`: one turn.
pub fn chat(args: &ChatArgs, device: &Device) -> Result<()> {
    args.sampling.config(256, Vec::new()).validate()?;
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let config = args.sampling.config(256, tokenizer.eos_ids().to_vec());
    let mut messages: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let mut out = std::io::stdout().lock();
    let answer = |messages: &[ChatMessage],
                  stream: bool,
                  out: &mut dyn Write|
     -> Result<(Vec<u32>, Vec<u32>, String)> {
        let prompt = ember_data::conversation_prompt(&tokenizer, messages)?;
        let ids = tokenizer.encode_rendered(&prompt)?;
        check_prompt(&loaded.model, &ids)?;
        let mut utf8 = TextStream::new(&tokenizer);
        let generated = generate(&loaded.model, &ids, &config, device, |id| {
            if stream && !tokenizer.eos_ids().contains(&id) {
                let text = utf8.push(id);
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        })?;
        if stream {
            let rest = utf8.finish();
            writeln!(out, "{rest}")?;
        }
        let spoken: Vec<u32> = generated
            .iter()
            .copied()
            .filter(|id| !tokenizer.eos_ids().contains(id))
            .collect();
        Ok((ids, generated, tokenizer.decode(&spoken)?))
    };
    if let Some(message) = &args.message {
        messages.push(ChatMessage::new("user", message.clone()));
        let (prompt_ids, generated_ids, text) = answer(&messages, !args.json, &mut out)?;
        if args.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "prompt_ids": prompt_ids,
                    "generated_ids": generated_ids,
                    "text": text,
                })
            )?;
        }
        return Ok(());
    }
    let stdin = std::io::stdin();
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
        messages.push(ChatMessage::new("user", message));
        let (_, _, text) = answer(&messages, true, &mut out)?;
        messages.push(ChatMessage::new("assistant", text));
    }
}
