//! Gemma 3 (Google, 2025; the book's Gemma 3 270M bonus chapter), text models from
//! 270M up: [`config`] reads its `config.json`, [`model`] is the network, [`table`]
//! names its tensors as the Hub does.

pub mod config;
pub mod model;

pub use config::{Gemma3Config, Gemma3HubConfig, LayerType};
pub use model::{Gemma3Block, Gemma3Decoder, Gemma3Model};

use burn::prelude::*;
use serde_json::Value;

use crate::model::ArchitectureConfig;
use crate::weights::{NameTable, TensorSource};

/// Gemma 3's tensor names: Ember's parameters carry the Hub's, with the `nn.Linear`
/// weights stored `[out, in]`, the convention of the Llama family's table.
pub fn table() -> NameTable {
    crate::llama::table()
}

impl ArchitectureConfig for Gemma3Config {
    type Model = Gemma3Model;
    const MODEL_TYPES: &'static [&'static str] = &["gemma3_text"];
    const EMBEDDING: &'static str = "model.embed_tokens.weight";

    fn from_hub_json(json: &Value) -> Result<Self, String> {
        Gemma3Config::from_hub_json(json)
    }

    fn to_hub_json(&self) -> Value {
        Gemma3Config::to_hub_json(self)
    }

    fn model_type(&self) -> &'static str {
        "gemma3_text"
    }

    fn num_params(&self) -> usize {
        Gemma3Config::num_params(self)
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
        Gemma3Config::validate(self)
    }

    fn init(&self, device: &Device) -> Gemma3Model {
        Gemma3Config::init(self, device)
    }

    fn name_table(&self, _: Option<&dyn TensorSource>) -> NameTable {
        table()
    }
}
