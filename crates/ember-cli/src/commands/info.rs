//! `ember info`: a model configuration, its parameters and size.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ember_model::{GptConfig, ModelConfig};

use crate::args::model::resolve_model;

/// Options of `ember info`.
#[derive(Debug, Clone, clap::Args)]
pub struct InfoArgs {
    /// Architecture preset.
    #[arg(long, default_value = "gpt2-small")]
    pub preset: String,
    /// A model to describe instead of a preset: a model directory, a run directory, or a
    /// Hub repository id OWNER/NAME[@REVISION] that is no path here (from the Hugging
    /// Face cache, downloaded into it if need be).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `ember info` for any architecture: GPT-2's figures as the book gives them (with and
/// without a tied head), the others' parameter count.
pub fn run(args: &InfoArgs) -> Result<()> {
    // A model is described from its config.json, checked against its weights, without
    // being built.
    let config = match &args.model {
        Some(model) => {
            let path = resolve_model(model)?;
            ember_model::describe_model(&path)
                .with_context(|| format!("cannot describe the model {}", model.display()))?
                .0
        }
        None => ModelConfig::Gpt2(GptConfig::preset(&args.preset)?),
    };
    print(&config, args.json)
}

/// Prints `config`'s figures.
fn print(config: &ModelConfig, json: bool) -> Result<()> {
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
