//! One type for every architecture Ember runs, chosen by `config.json`'s `model_type`:
//! GPT-2 ([`crate::gpt`]) and the Llama family, Llama 3.x and Qwen3 ([`crate::llama`],
//! [`crate::qwen3`]).
//!
//! Generation, evaluation, fine-tuning and serving go through [`CausalLm`], which
//! every model implements; [`LanguageModel`] is the architecture picked at run time.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use ember_attention::{AttentionError, KvCache};
use serde_json::Value;

use crate::config::GptConfig;
use crate::gpt::GptModel;
use crate::llama::{LlamaConfig, LlamaModel};
use crate::weights::WeightsError;

/// What generation and evaluation need from a model.
pub trait CausalLm {
    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, vocab]`
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3>;

    /// Logits of the new positions `ids`, which continue the sequence in `cache`.
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, new, vocab]`
    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError>;

    /// Logits of the token after the new positions `ids` (which continue the sequence
    /// in `cache`): the output head on the last position only, all generation needs (a
    /// prompt of n tokens would otherwise cost n vocabulary-sized products).
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, vocab]`
    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError>;

    /// A cache for one sequence batch.
    fn new_cache(&self) -> KvCache;

    /// The longest sequence the model attends over.
    fn context_length(&self) -> usize;

    /// Number of tokens in the vocabulary.
    fn vocab_size(&self) -> usize;
}

impl CausalLm for GptModel {
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward(ids)
    }

    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        self.forward_cached(ids, cache)
    }

    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError> {
        let hidden = self.forward_cached_hidden(ids, cache)?;
        Ok(last_position_logits(hidden, |x| self.head(x)))
    }

    fn new_cache(&self) -> KvCache {
        GptModel::new_cache(self)
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }
}

impl CausalLm for LlamaModel {
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward(ids)
    }

    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        self.forward_cached(ids, cache)
    }

    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError> {
        let hidden = self.forward_cached_hidden(ids, cache)?;
        Ok(last_position_logits(hidden, |x| self.head(x)))
    }

    fn new_cache(&self) -> KvCache {
        LlamaModel::new_cache(self)
    }

    fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}

/// `head` applied to the last position of `hidden` only.
///
/// # Shapes
/// - hidden: `[batch, seq, d]` → `[batch, vocab]`
fn last_position_logits(hidden: Tensor<3>, head: impl Fn(Tensor<3>) -> Tensor<3>) -> Tensor<2> {
    let [batch, seq, _] = hidden.dims();
    let logits = head(hidden.narrow(1, seq - 1, 1));
    let vocab = logits.dims()[2];
    logits.reshape([batch, vocab])
}

/// The architecture of a model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// GPT-2 (`model_type` `gpt2`, or Ember's own GPT configuration).
    Gpt2(GptConfig),
    /// Llama 3.x or Qwen3 (`model_type` `llama`, `qwen3`).
    Llama(LlamaConfig),
}

/// The `model_type`s Ember runs.
pub const MODEL_TYPES: [&str; 3] = ["gpt2", "llama", "qwen3"];

impl ModelConfig {
    /// The architecture a `config.json` describes, by its `model_type` (Ember's own GPT
    /// configurations carry an `"ember"` key; a GPT-2 file from before `model_type`
    /// existed is read as GPT-2).
    pub fn from_json(json: &Value, path: &Path) -> Result<Self, WeightsError> {
        if json.get(crate::weights::gpt2::EMBER_KEY).is_some() {
            return Ok(Self::Gpt2(crate::weights::gpt2::read_config(json, path)?));
        }
        match json.get("model_type").and_then(Value::as_str) {
            None | Some("gpt2") => Ok(Self::Gpt2(crate::weights::gpt2::read_config(json, path)?)),
            Some("llama" | "qwen3") => Ok(Self::Llama(LlamaConfig::from_hub_json(json, path)?)),
            Some(other) => Err(WeightsError::format(
                path,
                format!(
                    "model_type \"{other}\" is not supported (supported: {})",
                    MODEL_TYPES.join(", ")
                ),
            )),
        }
    }

    /// Number of parameters (a tied head counted once).
    pub fn num_params(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.num_params(),
            Self::Llama(c) => c.num_params(),
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Llama(c) => c.vocab_size,
        }
    }

    /// Width of the embeddings.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.emb_dim,
            Self::Llama(c) => c.hidden_size,
        }
    }

    /// Whether the output head is the token embedding.
    pub fn tied(&self) -> bool {
        match self {
            Self::Gpt2(c) => c.tie_embeddings,
            Self::Llama(c) => c.tie_word_embeddings,
        }
    }

    /// The model's `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Llama(c) => match c.family {
                crate::llama::Family::Llama => "llama",
                crate::llama::Family::Qwen3 => "qwen3",
            },
        }
    }

    /// A model of this architecture with undrawn (lazy) parameters.
    pub fn init(&self, device: &Device) -> LanguageModel {
        match self {
            Self::Gpt2(c) => LanguageModel::Gpt2(c.init(device)),
            Self::Llama(c) => LanguageModel::Llama(c.init(device)),
        }
    }

    /// Checks the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Gpt2(c) => c.validate().map_err(|e| e.to_string()),
            Self::Llama(c) => c.validate(),
        }
    }
}

/// A model of any architecture Ember runs.
#[derive(Module, Debug)]
pub enum LanguageModel {
    /// GPT-2.
    Gpt2(GptModel),
    /// Llama 3.x or Qwen3.
    Llama(LlamaModel),
}

impl LanguageModel {
    /// The final-norm output for every position (classification heads start here).
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, hidden]`
    pub fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Self::Gpt2(m) => m.forward_hidden(ids),
            Self::Llama(m) => m.forward_hidden(ids),
        }
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, vocab]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.logits(ids)
    }

    /// The configuration, read back from the model.
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::Gpt2(m) => ModelConfig::Gpt2(m.config()),
            Self::Llama(m) => ModelConfig::Llama(m.config.clone()),
        }
    }

    /// Sets every dropout probability (GPT-2's; the Llama family has none).
    pub fn with_dropout(self, p: f64) -> Self {
        match self {
            Self::Gpt2(m) => Self::Gpt2(m.with_dropout(p)),
            llama => llama,
        }
    }

    /// Number of transformer blocks.
    pub fn num_blocks(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.h.len(),
            Self::Llama(m) => m.model.layers.len(),
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.config().hidden_size()
    }

    /// The parameter paths of the weight matrices LoRA adapts: every projection of
    /// every block (the book's appendix E adapts GPT-2's attention and feed-forward
    /// layers; for the Llama family, the q/k/v/o and gate/up/down projections).
    pub fn lora_targets(&self, prefix: &str) -> Vec<String> {
        let mut paths = Vec::new();
        match self {
            Self::Gpt2(m) => {
                for i in 0..m.h.len() {
                    for layer in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] {
                        paths.push(format!("{prefix}Gpt2.h.{i}.{layer}.weight"));
                    }
                }
            }
            Self::Llama(m) => {
                for i in 0..m.model.layers.len() {
                    for layer in [
                        "self_attn.q_proj",
                        "self_attn.k_proj",
                        "self_attn.v_proj",
                        "self_attn.o_proj",
                        "mlp.gate_proj",
                        "mlp.up_proj",
                        "mlp.down_proj",
                    ] {
                        paths.push(format!("{prefix}Llama.model.layers.{i}.{layer}.weight"));
                    }
                }
            }
        }
        paths
    }

    /// Freezes everything but the last `n` blocks and the final norm (the book's
    /// section 6.5).
    pub fn freeze_all_but_last_blocks(self, n: usize) -> Self {
        match self {
            Self::Gpt2(m) => {
                let mut gpt = m.no_grad();
                let first = gpt.h.len().saturating_sub(n);
                gpt.h = gpt
                    .h
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| {
                        if i >= first {
                            b.set_require_grad(true)
                        } else {
                            b
                        }
                    })
                    .collect();
                gpt.ln_f = gpt.ln_f.set_require_grad(true);
                Self::Gpt2(gpt)
            }
            Self::Llama(m) => {
                let mut llama = m.no_grad();
                let first = llama.model.layers.len().saturating_sub(n);
                llama.model.layers = llama
                    .model
                    .layers
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| {
                        if i >= first {
                            b.set_require_grad(true)
                        } else {
                            b
                        }
                    })
                    .collect();
                llama.model.norm = llama.model.norm.set_require_grad(true);
                Self::Llama(llama)
            }
        }
    }
}

impl CausalLm for LanguageModel {
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Self::Gpt2(m) => m.forward(ids),
            Self::Llama(m) => m.forward(ids),
        }
    }

    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        match self {
            Self::Gpt2(m) => m.forward_cached(ids, cache),
            Self::Llama(m) => m.forward_cached(ids, cache),
        }
    }

    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError> {
        match self {
            Self::Gpt2(m) => m.next_token_logits(ids, cache),
            Self::Llama(m) => m.next_token_logits(ids, cache),
        }
    }

    fn new_cache(&self) -> KvCache {
        match self {
            Self::Gpt2(m) => m.new_cache(),
            Self::Llama(m) => m.new_cache(),
        }
    }

    fn context_length(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.context_length,
            Self::Llama(m) => CausalLm::context_length(m),
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(m) => CausalLm::vocab_size(m),
            Self::Llama(m) => CausalLm::vocab_size(m),
        }
    }
}
