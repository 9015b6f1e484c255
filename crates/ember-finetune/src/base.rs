//! The model a fine-tuning run starts from, and its tokenizer.

use std::path::Path;

use burn::prelude::*;
use ember_model::weights::is_pth;
use ember_model::{GptConfig, LanguageModel, load_model, model_tokenizer};
use ember_tokenizer::ModelTokenizer;

use crate::error::FinetuneError;

/// `base` loaded, of any architecture Ember runs (a run directory stands for its
/// `model/`; a book `.pth` takes its shape from `model`), or a new GPT `model` drawn on
/// `device` when there is no base; with the tokenizer that goes with it (the base's
/// own files, GPT-2's for GPT-2 models without them).
pub fn base_model(
    base: Option<&Path>,
    model: &GptConfig,
    device: &Device,
) -> Result<(LanguageModel, ModelTokenizer), FinetuneError> {
    let Some(base) = base else {
        return Ok((
            LanguageModel::Gpt2(model.init(device)),
            ModelTokenizer::gpt2()?,
        ));
    };
    let loaded = load_model(base, is_pth(base).then_some(model), device)?;
    let tokenizer = model_tokenizer(&loaded)?;
    Ok((loaded.model, tokenizer))
}
