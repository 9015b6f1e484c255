//! The Llama 3 architecture (Llama 3.1 and 3.2), in the Hub's names; Qwen3 is this
//! model with an RMSNorm on each head's queries and keys (see [`crate::qwen3`]).
//!
//! ```text
//! ids ─ embed_tokens ─┬─ [input_layernorm ─ self_attn] ─(+)─┬─ [post_attention_layernorm ─ mlp] ─(+)─ ... ─ norm ─ lm_head ─ logits
//!                     └──────────────────────────────────┘ └──────────────────────────────────────┘
//!                         one LlamaBlock: RMSNorm before grouped-query attention with rotary
//!                         embeddings, RMSNorm before the SwiGLU feed-forward network
//! ```
//!
//! Unlike GPT-2 there are no position embeddings (positions enter as rotations of the
//! queries and keys), no biases, RMSNorm instead of LayerNorm, and fewer key/value
//! heads than query heads.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use ember_attention::{AttentionError, KvCache};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::layers::{
    GroupedQueryAttention, GroupedQueryAttentionConfig, Llama3Scaling, RmsNorm, RmsNormConfig,
    RopeConfig, RopeTables, SwiGlu, SwiGluConfig,
};
use crate::weights::WeightsError;

/// Which member of the family a model is (its `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama 3.x (`llama`).
    Llama,
    /// Qwen3 (`qwen3`): RMSNorm on each head's queries and keys.
    Qwen3,
}

/// The architecture of a Llama-family model, as its `config.json` states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama` or `qwen3`.
    pub family: Family,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width (`hidden_size`).
    pub hidden_size: usize,
    /// Feed-forward width (`intermediate_size`).
    pub intermediate_size: usize,
    /// Blocks (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The longest sequence (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// ε of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Rotary embeddings.
    pub rope: RopeConfig,
    /// Whether the output head is the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on the query, key and value projections.
    pub attention_bias: bool,
    /// The beginning-of-text token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Every token that ends generation.
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Reads a Hub `config.json` (`model_type` `llama` or `qwen3`), in both forms found
    /// in the wild: transformers 4's (`rope_theta` + `rope_scaling`) and transformers 5's
    /// (`rope_parameters`). Every value is validated.
    pub fn from_hub_json(json: &Value, path: &Path) -> Result<Self, WeightsError> {
        let bad = |message: String| WeightsError::format(path, message);
        let family = match json.get("model_type").and_then(Value::as_str) {
            Some("llama") => Family::Llama,
            Some("qwen3") => Family::Qwen3,
            other => return Err(bad(format!("model_type {other:?} is not llama or qwen3"))),
        };
        let get = |key: &str| -> Result<usize, WeightsError> {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("missing or non-integer \"{key}\"")))
        };
        if let Some(act) = json.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(bad(format!("hidden_act \"{act}\" is not supported (silu)")));
        }
        let heads = get("num_attention_heads")?;
        let hidden = get("hidden_size")?;
        let head_dim = match json.get("head_dim").and_then(Value::as_u64) {
            Some(d) => d as usize,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let config = Self {
            family,
            vocab_size: get("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: get("intermediate_size")?,
            num_hidden_layers: get("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: json
                .get("num_key_value_heads")
                .and_then(Value::as_u64)
                .map_or(heads, |v| v as usize),
            head_dim,
            max_position_embeddings: get("max_position_embeddings")?,
            rms_norm_eps: json
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope: read_rope(json).map_err(bad)?,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: json
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: json
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids: token_ids(json.get("eos_token_id")),
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Checks the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope.theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// The `config.json` transformers reads (the Hub's transformers-4 form).
    pub fn to_hub_json(&self) -> Value {
        let (model_type, architecture) = match self.family {
            Family::Llama => ("llama", "LlamaForCausalLM"),
            Family::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        };
        let rope_scaling = self.rope.llama3.map(|s| {
            json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })
        });
        let eos = match self.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        json!({
            "architectures": [architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": "float32",
        })
    }

    /// Number of parameters, computed from the shapes (a tied head counted once).
    pub fn num_params(&self) -> usize {
        let (v, d, f) = (self.vocab_size, self.hidden_size, self.intermediate_size);
        let (q, kv) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let qk_norm = if self.family == Family::Qwen3 {
            2 * self.head_dim
        } else {
            0
        };
        let block = d * (q + 2 * kv) + bias + q * d + 3 * d * f + 2 * d + qk_norm;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * block + d + head
    }

    /// A model with undrawn (lazy) parameters, for loading.
    pub fn init(&self, device: &Device) -> LlamaModel {
        let attention = GroupedQueryAttentionConfig::new(
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )
        .with_qkv_bias(self.attention_bias)
        .with_qk_norm_eps((self.family == Family::Qwen3).then_some(self.rms_norm_eps));
        let norm = || {
            RmsNormConfig::new(self.hidden_size)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        LlamaModel {
            model: LlamaDecoder {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
                layers: (0..self.num_hidden_layers)
                    .map(|_| LlamaBlock {
                        self_attn: attention.init(device),
                        mlp: SwiGluConfig::new(self.hidden_size, self.intermediate_size)
                            .init(device),
                        input_layernorm: norm(),
                        post_attention_layernorm: norm(),
                    })
                    .collect(),
                norm: norm(),
            },
            lm_head: (!self.tie_word_embeddings).then(|| {
                LinearConfig::new(self.hidden_size, self.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
            config: self.clone(),
        }
    }
}

/// Token ids given as a number, a list of numbers, or null.
pub fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The rotary embedding of a `config.json`: `rope_parameters` (transformers 5) or
/// `rope_theta` + `rope_scaling` (transformers 4, the Hub's).
fn read_rope(json: &Value) -> Result<RopeConfig, String> {
    let (theta, scaling) = match json.get("rope_parameters").filter(|v| v.is_object()) {
        Some(params) => (
            params.get("rope_theta").and_then(Value::as_f64),
            Some(params),
        ),
        None => (
            json.get("rope_theta").and_then(Value::as_f64),
            json.get("rope_scaling").filter(|v| v.is_object()),
        ),
    };
    let theta = theta.unwrap_or(10_000.0);
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let llama3 = match kind {
        "default" => None,
        "llama3" => {
            let s = scaling.expect("a rope_type comes with its parameters");
            let number = |key: &str| {
                s.get(key)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("rope scaling \"llama3\" needs \"{key}\""))
            };
            Some(Llama3Scaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as usize,
            })
        }
        other => {
            return Err(format!(
                "rope_type \"{other}\" is not supported (supported: default, llama3)"
            ));
        }
    };
    if let Some(s) = &llama3
        && !(s.factor > 0.0 && s.high_freq_factor > s.low_freq_factor && s.low_freq_factor > 0.0)
    {
        return Err(
            "rope scaling \"llama3\" needs factor > 0 and high_freq_factor > low_freq_factor > 0"
                .into(),
        );
    }
    Ok(RopeConfig { theta, llama3 })
}

/// One pre-norm block: attention then feed-forward, each around a residual.
#[derive(Module, Debug)]
pub struct LlamaBlock {
    /// Grouped-query attention with rotary embeddings.
    pub self_attn: GroupedQueryAttention,
    /// The SwiGLU feed-forward network.
    pub mlp: SwiGlu,
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// RMSNorm before the feed-forward network.
    pub post_attention_layernorm: RmsNorm,
}

impl LlamaBlock {
    /// # Shapes
    /// - x: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), rope, cache);
        let x = x + attn;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        x + mlp
    }
}

/// The decoder: embeddings, blocks, final norm (the Hub's `model.` prefix).
#[derive(Module, Debug)]
pub struct LlamaDecoder {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// The blocks.
    pub layers: Vec<LlamaBlock>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// A Llama-family causal language model (`LlamaForCausalLM`, `Qwen3ForCausalLM`).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// The decoder.
    pub model: LlamaDecoder,
    /// Output head `[hidden, vocab]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// The configuration (not a parameter).
    #[module(skip)]
    pub config: LlamaConfig,
}

impl LlamaModel {
    /// The final-norm output for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, hidden]`
    pub fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let rope = self.rope_tables(0, ids.dims()[1], &ids.device());
        let mut x = ember_kernels::embedding(&self.model.embed_tokens, ids);
        for block in &self.model.layers {
            x = block.forward(x, &rope, None);
        }
        self.model.norm.forward(x)
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, vocab]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.forward_hidden(ids))
    }

    /// Logits of the new positions `ids`, which continue the sequence in `cache`.
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, new, vocab]`
    pub fn forward_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        Ok(self.head(self.forward_cached_hidden(ids, cache)?))
    }

    /// The final-norm output of the new positions `ids`, which continue the sequence
    /// in `cache`.
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, new, hidden]`
    pub fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        cache.check_room(ids.dims()[1])?;
        let start = cache.len();
        let rope = self.rope_tables(start, ids.dims()[1], &ids.device());
        let mut x = ember_kernels::embedding(&self.model.embed_tokens, ids);
        for (layer, block) in self.model.layers.iter().enumerate() {
            x = block.forward(x, &rope, Some((&mut *cache, layer)));
        }
        Ok(self.model.norm.forward(x))
    }

    /// Output projection to vocabulary logits.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn head(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => ember_kernels::linear(head, x),
            // Tied: the token embedding matrix, transposed, is the head.
            None => ember_kernels::unembed(&self.model.embed_tokens, x),
        }
    }

    /// The rotation tables of positions `start..start + len`, shared by every block.
    fn rope_tables(&self, start: usize, len: usize, device: &Device) -> RopeTables {
        self.config
            .rope
            .tables(self.config.head_dim, start, len, device)
    }

    /// A cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.model.layers.len(), self.config.max_position_embeddings)
    }
}
