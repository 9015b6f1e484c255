//! Qwen3 (0.6B to 32B dense): the Llama block of [`super`] with one addition,
//! an RMSNorm over each head's queries and keys (`q_norm`, `k_norm`, `[head_dim]`)
//! before the rotary embedding, which keeps attention logits in range.
//!
//! ```text
//! x ─ q_proj ─ split heads ─ q_norm ─ RoPE ─┐
//! x ─ k_proj ─ split heads ─ k_norm ─ RoPE ─┼─ grouped-query attention ─ o_proj
//! x ─ v_proj ─ split heads ─────────────────┘
//! ```
//!
//! Its other differences are values in `config.json`: a head width independent of
//! `hidden_size / num_attention_heads` (`head_dim` 128 with hidden 1024 and 16 heads in
//! Qwen3-0.6B), `rope_theta` 1,000,000 without scaling, a tied head in the small models.
//! So a Qwen3 model is a [`LlamaModel`] built from a [`LlamaConfig`] whose family is
//! [`Family::Qwen3`]: [`crate::layers::GroupedQueryAttention`] then carries the two norms.

pub use super::{Family, LlamaConfig, LlamaModel};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// What the Qwen3-0.6B `config.json` of the Hub describes: 596M parameters (the
    /// tied head counted once), 128-wide heads, queries and keys normalized.
    #[test]
    fn the_hub_config_of_qwen3_0_6b() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/configs/qwen3-0.6b.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let config = LlamaConfig::from_hub_json(&json).unwrap();
        assert_eq!(config.family, Family::Qwen3);
        assert_eq!((config.head_dim, config.num_key_value_heads), (128, 8));
        assert_eq!(config.rope.llama3, None);
        assert_eq!(config.num_params(), 596_049_920);
    }
}
