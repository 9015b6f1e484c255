//! The Llama 3 architecture (Llama 3.1 and 3.2), in the Hub's names; Qwen3 is this
//! model with an RMSNorm on each head's queries and keys (see [`super::qwen3`]).
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

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use ember_attention::{AttentionError, CacheMut, KvCache};

use super::config::{Family, LlamaConfig};
use crate::layers::{
    GroupedQueryAttention, GroupedQueryAttentionConfig, RmsNorm, RmsNormConfig, RopeTables, SwiGlu,
    SwiGluConfig,
};
use crate::model::{Architecture, trainable_last_blocks};

impl LlamaConfig {
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
        cache: Option<(CacheMut<'_>, usize)>,
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

impl Architecture for LlamaModel {
    type Config = LlamaConfig;

    fn config(&self) -> LlamaConfig {
        self.config.clone()
    }

    fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let rope = self.rope_tables(0, ids.dims()[1], &ids.device());
        let mut x = ember_kernels::embedding(&self.model.embed_tokens, ids);
        for block in &self.model.layers {
            x = block.forward(x, &rope, None);
        }
        self.model.norm.forward(x)
    }

    fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        mut cache: CacheMut<'_>,
    ) -> Result<Tensor<3>, AttentionError> {
        let new = ids.dims()[1];
        cache.check_room(new)?;
        let rope =
            self.config
                .rope
                .tables_at(self.config.head_dim, &cache.positions(new), &ids.device());
        let mut x = ember_kernels::embedding(&self.model.embed_tokens, ids);
        for (layer, block) in self.model.layers.iter().enumerate() {
            x = block.forward(x, &rope, Some((cache.reborrow(), layer)));
        }
        Ok(self.model.norm.forward(x))
    }

    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => ember_kernels::linear(head, x),
            // Tied: the token embedding matrix, transposed, is the head.
            None => ember_kernels::unembed(&self.model.embed_tokens, x),
        }
    }

    fn head_matrix(&self) -> Option<Tensor<2>> {
        crate::model::plain_head_matrix(self.lm_head.as_ref(), &self.model.embed_tokens)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.model.layers.len(), self.config.max_position_embeddings)
    }

    fn cache_floats_per_position(&self) -> usize {
        let c = &self.config;
        c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim
    }

    fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn num_blocks(&self) -> usize {
        self.model.layers.len()
    }

    fn lora_targets(&self, prefix: &str) -> Vec<String> {
        super::projections(prefix, self.model.layers.len())
    }

    fn freeze_all_but_last_blocks(self, n: usize) -> Self {
        let mut llama = self.no_grad();
        llama.model.layers = trainable_last_blocks(llama.model.layers, n);
        llama.model.norm = llama.model.norm.set_require_grad(true);
        llama
    }
}

impl LlamaModel {
    /// The rotation tables of positions `start..start + len`, shared by every block.
    fn rope_tables(&self, start: usize, len: usize, device: &Device) -> RopeTables {
        self.config
            .rope
            .tables(self.config.head_dim, start, len, device)
    }
}
