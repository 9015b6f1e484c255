//! `ember classify`: a text labelled by a classifier `ember finetune-spam` made.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use ember_finetune::spam_finetune::{classify_text, load_classifier};

use crate::args::model::resolve_model;

/// Options of `ember classify`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// The classifier (its run directory or its model/ directory, or a Hub repository
    /// id OWNER/NAME[@REVISION] that is no path here).
    #[arg(long)]
    pub model: PathBuf,
    /// Print `{"label": ..., "probabilities": {...}}`.
    #[arg(long)]
    pub json: bool,
    /// The text.
    pub text: String,
}

/// `ember classify`: the label and the class probabilities of `text`.
pub fn run(args: &ClassifyArgs, device: &Device) -> Result<()> {
    let model = resolve_model(&args.model)?;
    if args.text.trim().is_empty() {
        bail!("the text to classify is empty");
    }
    let (classifier, info, tokenizer) = load_classifier(&model, device)?;
    let probs = classify_text(&classifier, &info, &tokenizer, &args.text, device)?;
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = info
            .labels
            .iter()
            .zip(&probs)
            .map(|(l, p)| (l.clone(), serde_json::json!(p)))
            .collect();
        println!(
            "{}",
            serde_json::json!({"label": info.labels[best], "probabilities": map})
        );
    } else {
        let detail: Vec<String> = info
            .labels
            .iter()
            .zip(&probs)
            .map(|(l, p)| format!("{l} {p:.4}"))
            .collect();
        println!("{} ({})", info.labels[best], detail.join(", "));
    }
    Ok(())
}
