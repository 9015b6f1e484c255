//! The Llama family: Llama 3.x ([`model`], the Hub's names) and Qwen3 ([`qwen3`], the
//! same block with per-head query/key norms), configured by [`config`] and named by
//! [`hub`]'s table.

pub mod config;
pub mod hub;
pub mod model;
pub mod qwen3;

pub use config::{Family, LlamaConfig, token_ids};
pub use hub::{projections, table};
pub use model::{LlamaBlock, LlamaDecoder, LlamaModel};

use burn::prelude::*;
use serde_json::Value;

use crate::model::ArchitectureConfig;
use crate::weights::{NameTable, TensorSource};

impl ArchitectureConfig for LlamaConfig {
    type Model = LlamaModel;
    const MODEL_TYPES: &'static [&'static str] = &["llama", "qwen3"];
    const EMBEDDING: &'static str = "model.embed_tokens.weight";

    fn from_hub_json(json: &Value) -> Result<Self, String> {
        LlamaConfig::from_hub_json(json)
    }

    fn to_hub_json(&self) -> Value {
        LlamaConfig::to_hub_json(self)
    }

    fn model_type(&self) -> &'static str {
        match self.family {
            Family::Llama => "llama",
            Family::Qwen3 => "qwen3",
        }
    }

    fn num_params(&self) -> usize {
        LlamaConfig::num_params(self)
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn tied(&self) -> bool {
        self.tie_word_embeddings
    }

    fn validate(&self) -> Result<(), String> {
        LlamaConfig::validate(self)
    }

    fn init(&self, device: &Device) -> LlamaModel {
        LlamaConfig::init(self, device)
    }

    fn name_table(&self, _: Option<&dyn TensorSource>) -> NameTable {
        table()
    }
}
