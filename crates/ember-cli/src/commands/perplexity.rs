//! `ember perplexity`: the mean next-token loss of a text and its perplexity.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use ember_train::{perplexity as ppl, text_loss};

use crate::args::model::ModelArgs;

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
pub fn run(args: &PerplexityArgs, device: &Device) -> Result<()> {
    let _autocast = args.model.autocast()?;
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
