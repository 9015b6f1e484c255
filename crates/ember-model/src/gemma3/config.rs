//! Gemma 3's `config.json` (`model_type` `gemma3_text`): [`Gemma3HubConfig`] mirrors the
//! Hub's keys in both forms found in the wild, transformers 4's (`rope_theta`,
//! `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`) and transformers
//! 5's (`rope_parameters` per layer type, `layer_types`); [`Gemma3Config`] is what it
//! means, reached through `TryFrom`, which validates every value.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::layers::RopeConfig;
use crate::llama::config::{
    check_decoder_shape, eos_json, rope_config, rope_scaling_json, token_ids,
};

/// What one layer attends over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerType {
    /// Every earlier position (`full_attention`).
    #[serde(rename = "full_attention")]
    Full,
    /// The last `sliding_window` positions (`sliding_attention`).
    #[serde(rename = "sliding_attention")]
    Sliding,
}

/// The architecture of a Gemma 3 text model, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
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
    /// Attention scores are divided by its square root (not `head_dim`'s).
    pub query_pre_attn_scalar: f64,
    /// Positions a sliding-window layer sees, the query's own included.
    pub sliding_window: usize,
    /// Each layer's attention, one per block.
    pub layer_types: Vec<LayerType>,
    /// Rotary embedding of the full-attention layers.
    pub rope: RopeConfig,
    /// Rotary embedding of the sliding-window layers (their own base).
    pub rope_local: RopeConfig,
    /// `cap · tanh(logits / cap)` on the output logits, if set.
    pub final_logit_softcapping: Option<f64>,
    /// Whether the output head is the token embedding.
    pub tie_word_embeddings: bool,
    /// The beginning-of-text token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Every token that ends generation.
    pub eos_token_ids: Vec<u32>,
}

/// `config.json` of a Gemma 3 text model as the Hub has it: every key transformers'
/// `Gemma3TextConfig` reads that changes the computation, with its defaults. Keys that
/// change nothing here (initializer range, dropout of 0, caching) are not read.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3HubConfig {
    /// `gemma3_text`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (default: as many as query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head (default 256).
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// The longest sequence (default 131,072).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// ε of every RMSNorm (default 1e-6).
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Scores are divided by its square root (default 256).
    #[serde(default = "default_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    /// Window of the sliding layers (default 4096).
    #[serde(default = "default_sliding_window")]
    pub sliding_window: usize,
    /// Each layer's attention (transformers 5, and recent transformers 4 files).
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    /// Every `n`-th layer is a full-attention one (older files; default 6).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// The same, as transformers 5 writes it.
    #[serde(default, rename = "_sliding_window_pattern")]
    pub sliding_window_pattern_private: Option<usize>,
    /// transformers 5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// transformers 4: the full-attention layers' base (default 1,000,000).
    #[serde(default)]
    pub rope_theta: Option<Value>,
    /// transformers 4: the sliding layers' base (default 10,000).
    #[serde(default)]
    pub rope_local_base_freq: Option<Value>,
    /// transformers 4: the full-attention layers' scaling.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// Softcapping of the output logits.
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Softcapping of the attention scores (Gemma 2's; null in Gemma 3).
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    /// The feed-forward network's gate activation.
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Whether the output head is the token embedding (default true).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections (none in Gemma 3).
    #[serde(default)]
    pub attention_bias: bool,
    /// EmbeddingGemma's bidirectional attention.
    #[serde(default)]
    pub use_bidirectional_attention: bool,
    /// The beginning-of-text token.
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    /// The tokens that end generation (a number or a list).
    #[serde(default)]
    pub eos_token_id: Option<Value>,
}

fn default_head_dim() -> usize {
    256
}
fn default_max_positions() -> usize {
    131_072
}
fn default_eps() -> f64 {
    1e-6
}
fn default_query_pre_attn_scalar() -> f64 {
    256.0
}
fn default_sliding_window() -> usize {
    4096
}
fn default_true() -> bool {
    true
}

impl TryFrom<Gemma3HubConfig> for Gemma3Config {
    type Error = String;

    fn try_from(hub: Gemma3HubConfig) -> Result<Self, String> {
        if hub.model_type != "gemma3_text" {
            return Err(format!(
                "model_type \"{}\" is not gemma3_text",
                hub.model_type
            ));
        }
        if let Some(act) = &hub.hidden_activation
            && !matches!(act.as_str(), "gelu_pytorch_tanh" | "gelu_new")
        {
            return Err(format!(
                "hidden_activation \"{act}\" is not supported (gelu_pytorch_tanh)"
            ));
        }
        if let Some(cap) = hub.attn_logit_softcapping {
            return Err(format!(
                "attn_logit_softcapping {cap} is not supported (Gemma 3 has none)"
            ));
        }
        if hub.attention_bias {
            return Err("attention_bias is not supported (Gemma 3 has none)".into());
        }
        if hub.use_bidirectional_attention {
            return Err("use_bidirectional_attention (an embedding model) is not supported".into());
        }
        let layer_types = match hub.layer_types {
            Some(types) => types,
            None => {
                // transformers: layer i slides unless (i + 1) is a multiple of the pattern.
                let pattern = hub
                    .sliding_window_pattern
                    .or(hub.sliding_window_pattern_private)
                    .unwrap_or(6);
                if pattern == 0 {
                    return Err("sliding_window_pattern must be positive".into());
                }
                (0..hub.num_hidden_layers)
                    .map(|i| {
                        if (i + 1).is_multiple_of(pattern) {
                            LayerType::Full
                        } else {
                            LayerType::Sliding
                        }
                    })
                    .collect()
            }
        };
        let (rope, rope_local) = match hub.rope_parameters.as_ref().filter(|v| v.is_object()) {
            Some(params) if params.get("full_attention").is_some() => {
                let of = |kind: &str, default_theta: f64| {
                    let p = params.get(kind);
                    rope_config(p.and_then(|p| p.get("rope_theta")), p, default_theta)
                };
                (
                    of("full_attention", 1_000_000.0)?,
                    of("sliding_attention", 10_000.0)?,
                )
            }
            // One set of parameters for every layer: the full-attention layers'; the
            // sliding ones keep their own base.
            Some(params) => (
                rope_config(params.get("rope_theta"), Some(params), 1_000_000.0)?,
                rope_config(hub.rope_local_base_freq.as_ref(), None, 10_000.0)?,
            ),
            None => (
                rope_config(
                    hub.rope_theta.as_ref(),
                    hub.rope_scaling.as_ref(),
                    1_000_000.0,
                )?,
                rope_config(hub.rope_local_base_freq.as_ref(), None, 10_000.0)?,
            ),
        };
        let config = Self {
            vocab_size: hub.vocab_size,
            hidden_size: hub.hidden_size,
            intermediate_size: hub.intermediate_size,
            num_hidden_layers: hub.num_hidden_layers,
            num_attention_heads: hub.num_attention_heads,
            num_key_value_heads: hub.num_key_value_heads.unwrap_or(hub.num_attention_heads),
            head_dim: hub.head_dim,
            max_position_embeddings: hub.max_position_embeddings,
            rms_norm_eps: hub.rms_norm_eps,
            query_pre_attn_scalar: hub.query_pre_attn_scalar,
            sliding_window: hub.sliding_window,
            layer_types,
            rope,
            rope_local,
            final_logit_softcapping: hub.final_logit_softcapping,
            tie_word_embeddings: hub.tie_word_embeddings,
            bos_token_id: hub
                .bos_token_id
                .as_ref()
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids: token_ids(hub.eos_token_id.as_ref()),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Gemma3Config {
    /// Reads a Hub `config.json` value (either form).
    pub fn from_hub_json(json: &Value) -> Result<Self, String> {
        let hub: Gemma3HubConfig =
            serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
        Self::try_from(hub)
    }

    /// Checks the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), String> {
        check_decoder_shape(
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("max_position_embeddings", self.max_position_embeddings),
                ("sliding_window", self.sliding_window),
            ],
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )?;
        if self.layer_types.len() != self.num_hidden_layers {
            return Err(format!(
                "layer_types names {} layers but num_hidden_layers is {}",
                self.layer_types.len(),
                self.num_hidden_layers
            ));
        }
        for (name, value) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            (
                "final_logit_softcapping",
                self.final_logit_softcapping.unwrap_or(1.0),
            ),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{name} must be positive, got {value}"));
            }
        }
        Ok(())
    }

    /// The `config.json` the Hub ships (transformers 4's form with `layer_types`, as
    /// Gemma 3 270M's), which transformers 4 and 5 both read.
    pub fn to_hub_json(&self) -> Value {
        json!({
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "sliding_window": self.sliding_window,
            "layer_types": self.layer_types,
            "rope_theta": self.rope.theta,
            "rope_scaling": rope_scaling_json(&self.rope),
            "rope_local_base_freq": self.rope_local.theta,
            "final_logit_softcapping": self.final_logit_softcapping,
            "attn_logit_softcapping": null,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos_json(&self.eos_token_ids),
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
        // Projections, the gated feed-forward network, four norms of the width and the
        // query/key norms of a head.
        let block = d * (q + 2 * kv) + q * d + 3 * d * f + 4 * d + 2 * self.head_dim;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * block + d + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_270m() -> Value {
        // The keys of Gemma 3 270M's config.json on the Hub.
        json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
            "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 256, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "query_pre_attn_scalar": 256, "sliding_window": 512, "_sliding_window_pattern": 6,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
            "final_logit_softcapping": null, "attn_logit_softcapping": null,
            "hidden_activation": "gelu_pytorch_tanh", "attention_bias": false,
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
            "use_bidirectional_attention": false, "torch_dtype": "bfloat16"
        })
    }

    /// Gemma 3 270M: 268M parameters (the tied head once), every sixth layer global.
    #[test]
    fn the_hub_config_of_gemma3_270m() {
        let config = Gemma3Config::from_hub_json(&hub_270m()).unwrap();
        assert_eq!(config.num_params(), 268_098_176);
        let full: Vec<usize> = (0..18)
            .filter(|&i| config.layer_types[i] == LayerType::Full)
            .collect();
        assert_eq!(full, [5, 11, 17]);
        assert_eq!((config.rope.theta, config.rope_local.theta), (1e6, 1e4));
        // Written back and read again, it is the same configuration.
        assert_eq!(
            Gemma3Config::from_hub_json(&config.to_hub_json()).unwrap(),
            config
        );
    }

    /// transformers 5's form with linear scaling of the global layers (Gemma 3 4B's).
    #[test]
    fn rope_parameters_per_layer_type() {
        let mut json = hub_270m();
        json["rope_parameters"] = json!({
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        });
        json["layer_types"] = json!(vec!["sliding_attention"; 18]);
        let config = Gemma3Config::from_hub_json(&json).unwrap();
        assert_eq!(config.rope.linear, Some(8.0));
        assert_eq!(config.rope_local.linear, None);
        assert!(config.layer_types.iter().all(|t| *t == LayerType::Sliding));
        assert_eq!(
            Gemma3Config::from_hub_json(&config.to_hub_json()).unwrap(),
            config
        );
    }

    #[test]
    fn what_gemma3_does_not_have_is_refused_by_name() {
        for (key, value, message) in [
            (
                "attn_logit_softcapping",
                json!(50.0),
                "attn_logit_softcapping 50",
            ),
            (
                "hidden_activation",
                json!("silu"),
                "hidden_activation \"silu\"",
            ),
            (
                "layer_types",
                json!(["full_attention"]),
                "layer_types names 1 layers",
            ),
            (
                "layer_types",
                json!(vec!["chunked_attention"; 18]),
                "unknown variant",
            ),
            ("num_key_value_heads", json!(3), "not a multiple"),
            ("hidden_size", json!("640"), "invalid type"),
        ] {
            let mut json = hub_270m();
            json[key] = value;
            let err = Gemma3Config::from_hub_json(&json).unwrap_err();
            assert!(err.contains(message), "{key}: {err}");
        }
    }
}
