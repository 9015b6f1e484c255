//! The `--model` argument every command shares.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::Device;
use clap::Args;
use ember_hub::ModelRef;
use ember_model::{
    Dtype, GptConfig, LoadedModel, ModelConfig, load_model_as, model_tokenizer, read_model_config,
};
use ember_tokenizer::ModelTokenizer;

/// The local path of the model `model` names (see [`ModelRef`]): `model` itself, or for
/// a Hub repository `OWNER/NAME[@REVISION]` that is nothing here, its snapshot in the
/// Hugging Face cache, downloaded there first if need be. What every flag that takes a
/// model goes through before the path reaches a library crate.
pub fn resolve_model(model: &Path) -> Result<PathBuf> {
    let reference = ModelRef::parse(model);
    reference
        .resolve()
        .with_context(|| format!("cannot get the model {reference}"))
}

/// Where a model comes from.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model directory as the Hub ships it (GPT-2, Llama 3.x, Qwen3), a model Ember
    /// saved or its run directory, a GGUF file (GPT-2, Llama, Qwen3: llama.cpp's or
    /// `ember export`'s; its quantized matrices run as they are), a book `.pth` state
    /// dict (which needs --preset or --config), or a Hub repository id OWNER/NAME[@REVISION] that is no path here,
    /// found in (or downloaded into) the Hugging Face cache ($HF_HUB_CACHE,
    /// $HF_HOME/hub; HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply).
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
    /// Precision of the weight matrices: f32; bf16 / f16 (half the memory and faster
    /// generation on a CPU); q8_0 / q4_0 (GGUF's blocks of 32 with one f16 scale: 8.5
    /// and 4.5 bits per weight, faster again); q4_k (GGUF's super-blocks of 256 with a
    /// scale and a minimum per 32: 4.5 bits per weight, closer to q8_0's quality; rows
    /// that are not whole super-blocks in q8_0). Quantized products quantize the
    /// activations to 8 bits, as llama.cpp does. Norms and the KV cache stay f32.
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Arithmetic of the matrix products: f32, or bf16 (with --dtype bf16: the
    /// activations rounded to bf16, as transformers' bf16 models and llama.cpp
    /// compute; on CPUs with AVX512_BF16 twice the multiply-adds per instruction, so
    /// batches and long prompts go faster; results differ a little from f32's, and a
    /// server's replies are still the same alone or batched).
    #[arg(long, default_value_t = Dtype::F32)]
    pub precision: Dtype,
}

impl ModelArgs {
    /// [`inference_autocast`] of --precision.
    pub fn autocast(&self) -> Result<ember_kernels::autocast::AutocastGuard> {
        inference_autocast(self.precision)
    }

    /// Where the model is: `--model` itself, or for a Hub repository id that is not a
    /// path here, its snapshot in the Hugging Face cache (downloaded if need be).
    pub fn location(&self) -> Result<PathBuf> {
        resolve_model(&self.model)
    }

    /// Load the model onto `device`.
    pub fn load(&self, device: &Device) -> Result<LoadedModel> {
        let path = self.location()?;
        let config = match (&self.preset, &self.config) {
            (Some(preset), _) => {
                let mut c = GptConfig::preset(preset)?;
                c.qkv_bias |= self.qkv_bias;
                Some(c)
            }
            (None, Some(path)) => match read_model_config(path)?.0 {
                ModelConfig::Gpt2(c) => Some(c),
                other => anyhow::bail!(
                    "{}: a {} configuration; a .pth file holds a GPT-2 model",
                    path.display(),
                    other.model_type()
                ),
            },
            (None, None) => None,
        };
        load_model_as(&path, config.as_ref(), self.dtype, device)
            .with_context(|| format!("cannot load the model {}", self.model.display()))
    }

    /// Load the model and the tokenizer that goes with it.
    pub fn load_with_tokenizer(&self, device: &Device) -> Result<(LoadedModel, ModelTokenizer)> {
        let loaded = self.load(device)?;
        let tokenizer = model_tokenizer(&loaded)
            .with_context(|| format!("cannot load the model {}", self.model.display()))?;
        Ok((loaded, tokenizer))
    }
}

/// Sets `precision` (--precision) for this thread's products until the guard drops; a
/// format products of a loaded model do not compute in (f16, the q formats) is an
/// error.
pub fn inference_autocast(precision: Dtype) -> Result<ember_kernels::autocast::AutocastGuard> {
    if !matches!(precision, Dtype::F32 | Dtype::Bf16) {
        anyhow::bail!("--precision {precision}: products compute in f32 or bf16");
    }
    Ok(ember_kernels::autocast(precision))
}
