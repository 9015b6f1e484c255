//! GPT-2 (OpenAI, 2019), the book's model: [`config`] ([`GptConfig`] and the presets,
//! 124M to 1558M), [`model`] ([`GptModel`] in nanoGPT's layout and GPT-2's parameter
//! names), [`hub`] (the Hub's tensor names and `config.json`), [`book`] (the book's
//! `.pth` state dicts).

pub mod book;
pub mod config;
pub mod hub;
pub mod model;

pub use config::{ConfigError, GptConfig, WeightInit};
pub use hub::{EMBER_KEY, config_json, is_prefixed, read_config, table};
pub use model::{FeedForward, GptModel, TransformerBlock};

use burn::prelude::*;
use serde_json::Value;

use crate::model::ArchitectureConfig;
use crate::weights::{NameTable, TensorSource};

impl ArchitectureConfig for GptConfig {
    type Model = GptModel;
    const MODEL_TYPES: &'static [&'static str] = &["gpt2"];
    const EMBEDDING: &'static str = "wte.weight";

    fn from_hub_json(json: &Value) -> Result<Self, String> {
        read_config(json)
    }

    fn to_hub_json(&self) -> Value {
        config_json(self)
    }

    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn num_params(&self) -> usize {
        GptConfig::num_params(self)
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.emb_dim
    }

    fn tied(&self) -> bool {
        self.tie_embeddings
    }

    fn validate(&self) -> Result<(), String> {
        GptConfig::validate(self).map_err(|e| e.to_string())
    }

    fn init(&self, device: &Device) -> GptModel {
        GptConfig::init(self, device)
    }

    /// The Hub's names, with or without the `transformer.` prefix as `source` has them.
    fn name_table(&self, source: Option<&dyn TensorSource>) -> NameTable {
        table(source.is_none_or(is_prefixed))
    }

    fn stand_in_tensors(&self, source: &dyn TensorSource) -> Vec<String> {
        hub::zero_qkv_bias_names(self, source)
    }
}
