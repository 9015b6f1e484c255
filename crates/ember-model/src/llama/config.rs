//! The configuration of the Llama family (Llama 3.x, Qwen3) as its `config.json`
//! states it, and the rotary-embedding keys other architectures share.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::layers::{Llama3Scaling, RopeConfig};

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
    pub fn from_hub_json(json: &Value) -> Result<Self, String> {
        let bad = |message: String| message;
        let family = match json.get("model_type").and_then(Value::as_str) {
            Some("llama") => Family::Llama,
            Some("qwen3") => Family::Qwen3,
            other => return Err(bad(format!("model_type {other:?} is not llama or qwen3"))),
        };
        let get = |key: &str| -> Result<usize, String> {
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
        check_decoder_shape(
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )?;
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
        let rope_scaling = rope_scaling_json(&self.rope);
        let eos = eos_json(&self.eos_token_ids);
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

/// The `rope_scaling` of a transformers-4 `config.json` (`None` without scaling).
pub(crate) fn rope_scaling_json(rope: &RopeConfig) -> Option<Value> {
    match (rope.llama3, rope.linear) {
        (Some(s), _) => Some(json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })),
        (None, Some(factor)) => Some(json!({"rope_type": "linear", "factor": factor})),
        (None, None) => None,
    }
}

/// Checks the sizes of a decoder with grouped-query, rotary attention (the Llama
/// family's and Gemma's): `sizes` and the head counts positive, the query heads a
/// multiple of the key/value heads, the head width even.
pub(crate) fn check_decoder_shape(
    sizes: &[(&str, usize)],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(), String> {
    let heads_sizes = [
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("head_dim", head_dim),
    ];
    if let Some((name, _)) = sizes.iter().chain(&heads_sizes).find(|(_, v)| *v == 0) {
        return Err(format!("{name} must be positive"));
    }
    if !heads.is_multiple_of(kv_heads) {
        return Err(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        ));
    }
    if !head_dim.is_multiple_of(2) {
        return Err(format!(
            "head_dim {head_dim} must be even for rotary embeddings"
        ));
    }
    Ok(())
}

/// `eos_token_id` as the Hub writes it: one number, or a list.
pub(crate) fn eos_json(ids: &[u32]) -> Value {
    match ids {
        [one] => json!(one),
        many => json!(many),
    }
}

/// The rotary embedding of a `config.json`: `rope_parameters` (transformers 5) or
/// `rope_theta` + `rope_scaling` (transformers 4, the Hub's).
fn read_rope(json: &Value) -> Result<RopeConfig, String> {
    match json.get("rope_parameters").filter(|v| v.is_object()) {
        Some(params) => rope_config(params.get("rope_theta"), Some(params), 10_000.0),
        None => rope_config(
            json.get("rope_theta"),
            json.get("rope_scaling").filter(|v| v.is_object()),
            10_000.0,
        ),
    }
}

/// A rotary embedding from its base (`default_theta` when absent) and the scaling
/// parameters beside it (`rope_type` or `type`: `default`, `llama3` or `linear`).
pub(crate) fn rope_config(
    theta: Option<&Value>,
    scaling: Option<&Value>,
    default_theta: f64,
) -> Result<RopeConfig, String> {
    let theta = match theta {
        None | Some(Value::Null) => default_theta,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("rope_theta {v} is not a number"))?,
    };
    let scaling = scaling.filter(|s| s.is_object());
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |key: &str| {
        scaling
            .and_then(|s| s.get(key))
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("rope scaling \"{kind}\" needs \"{key}\""))
    };
    let mut rope = RopeConfig {
        theta,
        llama3: None,
        linear: None,
    };
    match kind {
        "default" => {}
        "llama3" => {
            let s = Llama3Scaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as usize,
            };
            if !(s.factor > 0.0
                && s.high_freq_factor > s.low_freq_factor
                && s.low_freq_factor > 0.0)
            {
                return Err("rope scaling \"llama3\" needs factor > 0 and high_freq_factor > low_freq_factor > 0".into());
            }
            rope.llama3 = Some(s);
        }
        "linear" => {
            let factor = number("factor")?;
            if factor.is_nan() || factor <= 0.0 {
                return Err(format!(
                    "rope scaling \"linear\" needs factor > 0, got {factor}"
                ));
            }
            rope.linear = Some(factor);
        }
        other => {
            return Err(format!(
                "rope_type \"{other}\" is not supported (supported: default, llama3, linear)"
            ));
        }
    }
    if rope.theta.is_nan() || rope.theta <= 0.0 {
        return Err(format!("rope_theta must be positive, got {}", rope.theta));
    }
    Ok(rope)
}
