//! What the fine-tuning runs share: the model a run starts from and its tokenizer, LoRA
//! on every block, and the checks of the generative runs' settings.

use std::path::Path;

use burn::module::{Lora, ParamGroup};
use burn::prelude::*;
use ember_model::weights::is_pth;
use ember_model::{GptConfig, LanguageModel, load_model, model_tokenizer};
use ember_tokenizer::ModelTokenizer;
use ember_train::{InvalidSetting, TrainConfig};

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

/// The LoRA alpha of the book's appendix E.
pub fn default_lora_alpha() -> f64 {
    16.0
}

/// `model` with LoRA adapters of `rank` on every projection of every block, or as it
/// is without a rank.
pub fn with_lora(model: LanguageModel, rank: Option<usize>, alpha: f64) -> LanguageModel {
    match rank {
        Some(rank) => {
            let targets = ParamGroup::from_paths(model.lora_targets(""));
            model.apply_lora(Lora::new(rank, alpha).set_param_group(targets))
        }
        None => model,
    }
}

/// The checks every generative fine-tuning (instructions, DPO) shares: the model of a
/// from-scratch run, the optimisation, dropout and the truncation length.
pub fn check_generative(
    model: &GptConfig,
    train: &TrainConfig,
    drop_rate: f64,
    allowed_max_length: usize,
) -> Result<(), InvalidSetting> {
    model
        .validate()
        .map_err(|e| InvalidSetting::new("model", e.to_string()))?;
    train.validate()?;
    if !(0.0..1.0).contains(&drop_rate) {
        return Err(InvalidSetting::new(
            "drop_rate",
            format!("must be in [0, 1), got {drop_rate}"),
        ));
    }
    if allowed_max_length < 2 {
        return Err(InvalidSetting::new(
            "allowed_max_length",
            "must be at least 2",
        ));
    }
    Ok(())
}
