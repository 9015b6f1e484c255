//! The model a fine-tuning run starts from.

use std::path::Path;

use burn::prelude::*;
use ember_model::weights::is_pth;
use ember_model::{GptConfig, GptModel, load_model};

use crate::error::FinetuneError;

/// `base` loaded (a run directory stands for its `model/`; a book `.pth` takes its
/// shape from `model`), or a new `model` drawn on `device` when there is no base.
pub fn base_model(
    base: Option<&Path>,
    model: &GptConfig,
    device: &Device,
) -> Result<GptModel, FinetuneError> {
    let Some(base) = base else {
        return Ok(model.init(device));
    };
    Ok(load_model(base, is_pth(base).then_some(model), device)?.model)
}
