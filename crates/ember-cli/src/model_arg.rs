//! The `--model` argument every command shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Device;
use clap::Args;
use ember_model::{GptConfig, LoadedModel, load_model, read_model_config};

/// Where a model comes from.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A Hugging Face GPT-2 directory, an Ember checkpoint or run directory, or a book
    /// `.pth` state dict (which needs --preset or --config).
    #[arg(long)]
    pub model: PathBuf,
    /// Architecture preset for a `.pth` file (gpt2-small, gpt2-medium, gpt2-large,
    /// gpt2-xl, book, tiny).
    #[arg(long)]
    pub preset: Option<String>,
    /// A Hugging Face `config.json` describing a `.pth` file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With --preset: the QKV projections have a bias (GPT-2's released weights do).
    #[arg(long)]
    pub qkv_bias: bool,
}

impl ModelArgs {
    /// Load the model onto `device`.
    pub fn load(&self, device: &Device) -> Result<LoadedModel> {
        let config = match (&self.preset, &self.config) {
            (Some(preset), _) => {
                let mut c = GptConfig::preset(preset)?;
                c.qkv_bias |= self.qkv_bias;
                Some(c)
            }
            (None, Some(path)) => Some(read_model_config(path)?.0),
            (None, None) => None,
        };
        load_model(&self.model, config.as_ref(), device)
            .with_context(|| format!("cannot load the model {}", self.model.display()))
    }
}
