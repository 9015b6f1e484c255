//! The Llama family as the Hub ships it (`LlamaForCausalLM`, `Qwen3ForCausalLM`): Ember's
//! parameters carry the Hub's names, so the table only marks the `nn.Linear` weights,
//! stored `[out, in]`, as transposed.

use super::table::{Layout, NameTable};

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
