//! `ember export --gguf`: a model as one GGUF file for llama.cpp, Ollama and LM Studio.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ember_model::Dtype;

use crate::args::model::resolve_model;

/// Options of `ember export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The model: a model directory (Ember's saved models, a Hub download), a run
    /// directory, or a Hub repository id OWNER/NAME[@REVISION] from the cache.
    #[arg(long)]
    pub model: PathBuf,
    /// The GGUF file to write (replaced only once it is complete).
    #[arg(long)]
    pub gguf: PathBuf,
    /// Precision of the weight matrices: f32, f16, bf16, or quantized as llama.cpp's
    /// quantizer does: q8_0, q4_0, q4_k (rows that are not whole super-blocks of 256 in
    /// q8_0). Norms and biases stay f32.
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Writes the GGUF file.
pub fn run(args: &ExportArgs) -> Result<()> {
    if args.gguf.is_dir() {
        bail!(
            "--gguf {} is a directory; name the file to write",
            args.gguf.display()
        );
    }
    let model = resolve_model(&args.model)?;
    let started = std::time::Instant::now();
    let summary = ember_model::gguf::export_gguf(&model, &args.gguf, args.dtype)
        .with_context(|| format!("cannot export {} as GGUF", args.model.display()))?;
    let tensors: serde_json::Map<String, serde_json::Value> = summary
        .tensors
        .iter()
        .map(|(t, n)| (format!("{t:?}"), (*n).into()))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "gguf": args.gguf,
                "architecture": summary.architecture,
                "dtype": args.dtype,
                "tensors": tensors,
                "bytes": summary.bytes,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        let counts: Vec<String> = tensors.iter().map(|(t, n)| format!("{n} {t}")).collect();
        println!(
            "wrote {} ({}, {:.1} MB: {} tensors) in {:.1} s",
            args.gguf.display(),
            summary.architecture,
            summary.bytes as f64 / 1e6,
            counts.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
