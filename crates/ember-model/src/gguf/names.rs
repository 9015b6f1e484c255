//! Which Hub tensor each GGUF tensor is, per architecture, and how its values are
//! rearranged on the way (llama.cpp's `convert_hf_to_gguf.py` and `llama-arch.cpp`
//! name the same tensors).

use crate::gpt2::GptConfig;
use crate::llama::{Family, LlamaConfig};
use crate::model::ModelConfig;
use crate::weights::TensorSource;

/// How a Hub tensor's values become the GGUF tensor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rearrange {
    /// The same values in the same order.
    Same,
    /// A GPT-2 `Conv1D` weight, stored `[in, out]`: GGUF's rows are its columns.
    Transpose,
    /// Llama's query or key projection with `heads` heads: llama.cpp's rotary embedding
    /// takes pairs of adjacent values where transformers takes halves, so each head's
    /// rows are interleaved (`convert_hf_to_gguf.py`'s `permute`).
    InterleaveHalves {
        /// Heads (of the queries, or of the keys).
        heads: usize,
    },
}

/// One GGUF tensor and the Hub tensor it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub gguf: String,
    /// The Hub name (`model.layers.0.self_attn.q_proj.weight`).
    pub hub: String,
    /// How the values are rearranged.
    pub rearrange: Rearrange,
    /// Whether llama.cpp's quantizer leaves it unquantized even when a matrix
    /// (GPT-2's position embeddings).
    pub keep_float: bool,
}

impl Mapping {
    fn new(gguf: impl Into<String>, hub: impl Into<String>) -> Self {
        Self {
            gguf: gguf.into(),
            hub: hub.into(),
            rearrange: Rearrange::Same,
            keep_float: false,
        }
    }

    fn rearranged(mut self, rearrange: Rearrange) -> Self {
        self.rearrange = rearrange;
        self
    }
}

/// GGUF's name of the architecture (`general.architecture`), if Ember maps it.
pub fn gguf_architecture(config: &ModelConfig) -> Option<&'static str> {
    match config {
        ModelConfig::Gpt2(_) => Some("gpt2"),
        ModelConfig::Llama(c) => Some(match c.family {
            Family::Llama => "llama",
            Family::Qwen3 => "qwen3",
        }),
        _ => None,
    }
}

/// The tensors of a model of `config` that `keep` keeps (those the source has), in
/// the order llama.cpp's converter writes them; GPT-2's Hub names begin with
/// `gpt2_prefix` (Ember writes `transformer.`, the Hub's GPT-2 has none).
pub fn mappings(
    config: &ModelConfig,
    gpt2_prefix: &str,
    keep: &dyn Fn(&Mapping) -> bool,
) -> Option<Vec<Mapping>> {
    let mut all = match config {
        ModelConfig::Gpt2(c) => gpt2(c, gpt2_prefix),
        ModelConfig::Llama(c) => llama(c),
        _ => return None,
    };
    all.retain(|m| keep(m));
    Some(all)
}

/// The Hub names' prefix of the GPT-2 checkpoint `source`.
pub fn gpt2_prefix(source: &dyn TensorSource) -> &'static str {
    if source.shape("transformer.wte.weight").is_some() {
        "transformer."
    } else {
        ""
    }
}

fn gpt2(config: &GptConfig, p: &str) -> Vec<Mapping> {
    let mut out = vec![
        Mapping::new("token_embd.weight", format!("{p}wte.weight")),
        Mapping {
            keep_float: true,
            ..Mapping::new("position_embd.weight", format!("{p}wpe.weight"))
        },
    ];
    for i in 0..config.n_layers {
        let h = format!("{p}h.{i}");
        let b = format!("blk.{i}");
        for (gguf, hub, conv) in [
            ("attn_norm", "ln_1", false),
            ("attn_qkv", "attn.c_attn", true),
            ("attn_output", "attn.c_proj", true),
            ("ffn_norm", "ln_2", false),
            ("ffn_up", "mlp.c_fc", true),
            ("ffn_down", "mlp.c_proj", true),
        ] {
            let weight = Mapping::new(format!("{b}.{gguf}.weight"), format!("{h}.{hub}.weight"));
            out.push(if conv {
                weight.rearranged(Rearrange::Transpose)
            } else {
                weight
            });
            out.push(Mapping::new(
                format!("{b}.{gguf}.bias"),
                format!("{h}.{hub}.bias"),
            ));
        }
    }
    out.push(Mapping::new(
        "output_norm.weight",
        format!("{p}ln_f.weight"),
    ));
    out.push(Mapping::new("output_norm.bias", format!("{p}ln_f.bias")));
    if !config.tie_embeddings {
        out.push(Mapping::new("output.weight", "lm_head.weight"));
    }
    out
}

fn llama(config: &LlamaConfig) -> Vec<Mapping> {
    let mut out = vec![Mapping::new(
        "token_embd.weight",
        "model.embed_tokens.weight",
    )];
    let interleave = |heads| match config.family {
        Family::Llama => Rearrange::InterleaveHalves { heads },
        Family::Qwen3 => Rearrange::Same,
    };
    for i in 0..config.num_hidden_layers {
        let h = format!("model.layers.{i}");
        let b = format!("blk.{i}");
        let q = interleave(config.num_attention_heads);
        let k = interleave(config.num_key_value_heads);
        for (gguf, hub, rearrange) in [
            (
                "attn_norm.weight",
                "input_layernorm.weight",
                Rearrange::Same,
            ),
            ("attn_q.weight", "self_attn.q_proj.weight", q),
            ("attn_q.bias", "self_attn.q_proj.bias", q),
            ("attn_k.weight", "self_attn.k_proj.weight", k),
            ("attn_k.bias", "self_attn.k_proj.bias", k),
            ("attn_v.weight", "self_attn.v_proj.weight", Rearrange::Same),
            ("attn_v.bias", "self_attn.v_proj.bias", Rearrange::Same),
            (
                "attn_output.weight",
                "self_attn.o_proj.weight",
                Rearrange::Same,
            ),
            (
                "attn_q_norm.weight",
                "self_attn.q_norm.weight",
                Rearrange::Same,
            ),
            (
                "attn_k_norm.weight",
                "self_attn.k_norm.weight",
                Rearrange::Same,
            ),
            (
                "ffn_norm.weight",
                "post_attention_layernorm.weight",
                Rearrange::Same,
            ),
            ("ffn_gate.weight", "mlp.gate_proj.weight", Rearrange::Same),
            ("ffn_up.weight", "mlp.up_proj.weight", Rearrange::Same),
            ("ffn_down.weight", "mlp.down_proj.weight", Rearrange::Same),
        ] {
            out.push(
                Mapping::new(format!("{b}.{gguf}"), format!("{h}.{hub}")).rearranged(rearrange),
            );
        }
    }
    out.push(Mapping::new("output_norm.weight", "model.norm.weight"));
    if !config.tie_word_embeddings {
        out.push(Mapping::new("output.weight", "lm_head.weight"));
    }
    out
}

/// `values` (`rows` rows, row-major) rearranged as `rearrange` says: the GGUF
/// tensor's rows from the Hub tensor's (`forward`) or back.
pub fn rearrange(values: &[f32], rows: usize, rearrange: Rearrange, forward: bool) -> Vec<f32> {
    let cols = values.len().checked_div(rows).unwrap_or(0);
    match rearrange {
        Rearrange::Same => values.to_vec(),
        Rearrange::Transpose => {
            // Forward: the Hub's [in, out] (`rows` = in) to [out, in]; back: the reverse.
            let mut out = vec![0.0; values.len()];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
            out
        }
        Rearrange::InterleaveHalves { heads } => {
            let head_dim = rows / heads;
            let half = head_dim / 2;
            let mut out = vec![0.0; values.len()];
            for h in 0..heads {
                for i in 0..half {
                    for j in 0..2 {
                        // GGUF row h·d + 2i + j is the Hub's row h·d + j·d/2 + i.
                        let gguf = h * head_dim + 2 * i + j;
                        let hub = h * head_dim + j * half + i;
                        let (to, from) = if forward { (gguf, hub) } else { (hub, gguf) };
                        out[to * cols..(to + 1) * cols]
                            .copy_from_slice(&values[from * cols..(from + 1) * cols]);
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interleaving is llama.cpp's `permute`: `reshape(heads, 2, d/2, cols)
    /// .swapaxes(1, 2)`; and going back undoes it, as transposing back does.
    #[test]
    fn rearranging_is_the_converters_and_goes_back() {
        let (heads, head_dim, cols) = (2, 4, 3);
        let rows = heads * head_dim;
        let values: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let forward = rearrange(&values, rows, Rearrange::InterleaveHalves { heads }, true);
        // Head 0's rows 0, 1 | 2, 3 become 0, 2, 1, 3.
        let row = |v: &[f32], r: usize| v[r * cols] as usize / cols;
        let order: Vec<usize> = (0..rows).map(|r| row(&forward, r)).collect();
        assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
        let back = rearrange(&forward, rows, Rearrange::InterleaveHalves { heads }, false);
        assert_eq!(back, values);
        let t = rearrange(&values, rows, Rearrange::Transpose, true);
        assert_eq!(t[1], values[cols]);
        assert_eq!(rearrange(&t, cols, Rearrange::Transpose, true), values);
    }
}
