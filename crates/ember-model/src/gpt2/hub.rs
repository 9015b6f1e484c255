//! GPT-2 as the Hub ships it (`GPT2LMHeadModel`): the name table and `config.json`.
//!
//! GPT-2 stores its projections as `Conv1D` weights, `[in, out]`, which is already
//! Burn's `Linear` layout, and `c_attn` holds Q, K, V side by side, which is Ember's
//! layout too: they load as they are. Only the untied `lm_head` is an `nn.Linear`.

use serde_json::{Value, json};

use super::GptConfig;
use crate::weights::table::{Layout, NameTable};
use crate::weights::tensors::TensorSource;

/// The key of `config.json` under which Ember keeps its full [`GptConfig`] (fields
/// transformers does not know, such as the initialisation scheme).
pub const EMBER_KEY: &str = "ember";

/// GPT-2's tensor names, with the `transformer.` prefix of `GPT2LMHeadModel` (the
/// original checkpoints on the Hub lack it: `prefixed` false).
pub fn table(prefixed: bool) -> NameTable {
    let (norm_w, norm_b, other) = if prefixed {
        (
            "transformer.$1.weight",
            "transformer.$1.bias",
            "transformer.$1",
        )
    } else {
        ("$1.weight", "$1.bias", "$1")
    };
    NameTable::new(
        &[
            (r"^lm_head\.weight$", "lm_head.weight", Layout::Transposed),
            (r"^(.+)\.gamma$", norm_w, Layout::Same),
            (r"^(.+)\.beta$", norm_b, Layout::Same),
            (r"^(.+)$", other, Layout::Same),
        ],
        // Causal-mask buffers of old checkpoints, not parameters (`c_attn.bias` does not
        // match).
        &[r"\.attn\.bias$", r"\.attn\.masked_bias$"],
    )
}

/// Whether `source` names its tensors with the `transformer.` prefix.
pub fn is_prefixed(source: &dyn TensorSource) -> bool {
    source.shape("wte.weight").is_none()
}

/// The architecture in a `config.json`: Ember's own (the `"ember"` key) or a Hugging
/// Face GPT-2 one (`n_embd`, `n_layer`, ...; QKV bias on, head tied by default). The
/// values are validated here, before anything is allocated.
pub fn read_config(json: &Value) -> Result<GptConfig, String> {
    let format = |message: String| message;
    let config = if let Some(ember) = json.get(EMBER_KEY) {
        serde_json::from_value(ember.clone())
            .map_err(|e| format(format!("invalid \"{EMBER_KEY}\" config: {e}")))?
    } else {
        let get = |key: &str| -> Result<usize, String> {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format(format!("missing or non-integer \"{key}\"")))
        };
        if let Some(act) = json.get("activation_function").and_then(Value::as_str)
            && !matches!(act, "gelu_new" | "gelu_pytorch_tanh")
        {
            return Err(format(format!(
                "activation_function \"{act}\" is not supported (GPT-2 uses gelu_new)"
            )));
        }
        GptConfig {
            vocab_size: get("vocab_size")?,
            context_length: get("n_positions")?,
            emb_dim: get("n_embd")?,
            n_heads: get("n_head")?,
            n_layers: get("n_layer")?,
            drop_rate: json
                .get("resid_pdrop")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            qkv_bias: true,
            tie_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            weight_init: Default::default(),
        }
    };
    config.validate().map_err(|e| format(e.to_string()))?;
    Ok(config)
}

/// The `config.json` of a saved model: what transformers' `GPT2Config` reads, plus
/// Ember's full config under [`EMBER_KEY`].
pub fn config_json(config: &GptConfig) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_head": config.n_heads,
        "n_layer": config.n_layers,
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": ember_tokenizer::END_OF_TEXT_ID,
        "eos_token_id": ember_tokenizer::END_OF_TEXT_ID,
        EMBER_KEY: config,
    })
}

/// The QKV biases a GPT-2 file of a model without them may hold: transformers' GPT-2
/// always has one, so such a model is saved with zero biases, which stand for their
/// absence. Found among `source`'s names (never by counting the configuration's layers,
/// which is not yet checked against the file).
pub fn zero_qkv_bias_names(config: &GptConfig, source: &dyn TensorSource) -> Vec<String> {
    if config.qkv_bias {
        return Vec::new();
    }
    source
        .names()
        .into_iter()
        .filter(|name| name.ends_with(".attn.c_attn.bias"))
        .collect()
}

/// The zero QKV biases transformers needs beside the tensors of a model without them.
pub fn zero_qkv_biases(config: &GptConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    if config.qkv_bias {
        return Vec::new();
    }
    let width = 3 * config.emb_dim;
    (0..config.n_layers)
        .map(|i| {
            let name = format!("transformer.h.{i}.attn.c_attn.bias");
            (name, vec![width], vec![0.0; width])
        })
        .collect()
}
