//! The Llama family as the Hub ships it (`LlamaForCausalLM`, `Qwen3ForCausalLM`): Ember's
//! parameters carry the Hub's names, so the table only marks the `nn.Linear` weights,
//! stored `[out, in]`, as transposed.

use crate::weights::table::{Layout, NameTable};

/// The Llama family's tensor names.
pub fn table() -> NameTable {
    NameTable::new(
        &[
            (r"^(.+_proj\.weight)$", "$1", Layout::Transposed),
            (r"^lm_head\.weight$", "lm_head.weight", Layout::Transposed),
            (r"^(.+)$", "$1", Layout::Same),
        ],
        // Older checkpoints store the rotary frequencies, which are computed here.
        &[r"rotary_emb\.inv_freq$"],
    )
}

/// The q/k/v/o and gate/up/down projections of `layers` blocks named as the Hub does
/// (`model.layers.{i}.self_attn.q_proj.weight`), under `prefix`: what LoRA adapts in the
/// architectures that use the Hub's names.
pub fn projections(prefix: &str, layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|i| {
            [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ]
            .map(|layer| format!("{prefix}model.layers.{i}.{layer}.weight"))
        })
        .collect()
}
