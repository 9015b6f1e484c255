//! The Gemma 3 text model (`Gemma3ForCausalLM`), in the Hub's names.
//!
//! ```text
//! ids ─ embed_tokens · √hidden ─┬─ [input_layernorm ─ self_attn ─ post_attention_layernorm] ─(+)─┐
//!                               └────────────────────────────────────────────────────────┘     │
//!     ┌─────────────────────────────────────────────────────────────────────────────────────────┘
//!     └─┬─ [pre_feedforward_layernorm ─ mlp ─ post_feedforward_layernorm] ─(+)─ ... ─ norm ─ lm_head
//!       └───────────────────────────────────────────────────────────────┘
//! ```
//!
//! Beside Llama's block: the embeddings are scaled by `√hidden_size`; every RMSNorm
//! multiplies by `1 + weight`; each sub-layer's output is normalised again before it
//! joins the residual stream; the feed-forward gate is GELU (tanh); queries and keys are
//! normalised per head (as Qwen3's) and scores divided by `√query_pre_attn_scalar`;
//! and most layers attend over a sliding window of recent positions, with a rotary base
//! of their own, between full-attention layers (`layer_types`). A sliding layer's cache
//! keeps only its window.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use ember_attention::{AttentionError, CacheMut, KvCache};

use super::config::{Gemma3Config, LayerType};
use crate::layers::{
    GateActivation, GroupedQueryAttention, GroupedQueryAttentionConfig, RmsNorm, RmsNormConfig,
    RopeTables, SwiGlu, SwiGluConfig,
};
use crate::model::{Architecture, trainable_last_blocks};

impl Gemma3Config {
    /// A model with undrawn (lazy) parameters, for loading.
    pub fn init(&self, device: &Device) -> Gemma3Model {
        let attention = |layer_type: LayerType| {
            GroupedQueryAttentionConfig::new(
                self.hidden_size,
                self.num_attention_heads,
                self.num_key_value_heads,
                self.head_dim,
            )
            .with_qk_norm_eps(Some(self.rms_norm_eps))
            .with_qk_norm_offset(1.0)
            .with_query_pre_attn_scalar(Some(self.query_pre_attn_scalar))
            .with_sliding_window((layer_type == LayerType::Sliding).then_some(self.sliding_window))
            .init(device)
        };
        let norm = || {
            RmsNormConfig::new(self.hidden_size)
                .with_epsilon(self.rms_norm_eps)
                .with_weight_offset(1.0)
                .init(device)
        };
        Gemma3Model {
            model: Gemma3Decoder {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
                layers: self
                    .layer_types
                    .iter()
                    .map(|&layer_type| Gemma3Block {
                        self_attn: attention(layer_type),
                        mlp: SwiGluConfig::new(self.hidden_size, self.intermediate_size)
                            .with_activation(GateActivation::GeluTanh)
                            .init(device),
                        input_layernorm: norm(),
                        post_attention_layernorm: norm(),
                        pre_feedforward_layernorm: norm(),
                        post_feedforward_layernorm: norm(),
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

/// One block: attention then feed-forward, each normalised before and after, each
/// around a residual.
#[derive(Module, Debug)]
pub struct Gemma3Block {
    /// Grouped-query attention, full or over a sliding window.
    pub self_attn: GroupedQueryAttention,
    /// The GELU-gated feed-forward network.
    pub mlp: SwiGlu,
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// RMSNorm of the attention's output.
    pub post_attention_layernorm: RmsNorm,
    /// RMSNorm before the feed-forward network.
    pub pre_feedforward_layernorm: RmsNorm,
    /// RMSNorm of the feed-forward network's output.
    pub post_feedforward_layernorm: RmsNorm,
}

impl Gemma3Block {
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
        let x = x + self.post_attention_layernorm.forward(attn);
        let mlp = self
            .mlp
            .forward(self.pre_feedforward_layernorm.forward(x.clone()));
        x + self.post_feedforward_layernorm.forward(mlp)
    }
}

/// The decoder: embeddings, blocks, final norm (the Hub's `model.` prefix).
#[derive(Module, Debug)]
pub struct Gemma3Decoder {
    /// Token embedding `[vocab, hidden]` (scaled by `√hidden` when looked up).
    pub embed_tokens: Embedding,
    /// The blocks.
    pub layers: Vec<Gemma3Block>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// A Gemma 3 causal language model (`Gemma3ForCausalLM`).
#[derive(Module, Debug)]
pub struct Gemma3Model {
    /// The decoder.
    pub model: Gemma3Decoder,
    /// Output head `[hidden, vocab]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// The configuration (not a parameter).
    #[module(skip)]
    pub config: Gemma3Config,
}

impl Architecture for Gemma3Model {
    type Config = Gemma3Config;

    fn config(&self) -> Gemma3Config {
        self.config.clone()
    }

    fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.decode(ids, None)
    }

    fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        cache: CacheMut<'_>,
    ) -> Result<Tensor<3>, AttentionError> {
        cache.check_room(ids.dims()[1])?;
        Ok(self.decode(ids, Some(cache)))
    }

    /// The logits are softcapped when the configuration says so.
    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let logits = match &self.lm_head {
            Some(head) => ember_kernels::linear(head, x),
            // Tied: the (unscaled) token embedding matrix, transposed, is the head.
            None => ember_kernels::unembed(&self.model.embed_tokens, x),
        };
        match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// The plain product only without soft-capping (Gemma 3's checkpoints have none).
    fn head_matrix(&self) -> Option<Tensor<2>> {
        match self.config.final_logit_softcapping {
            Some(_) => None,
            None => {
                crate::model::plain_head_matrix(self.lm_head.as_ref(), &self.model.embed_tokens)
            }
        }
    }

    /// Sliding layers keep only their window of it ([`KvCache::extend_window`]).
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
        crate::llama::projections(prefix, self.model.layers.len())
    }

    fn freeze_all_but_last_blocks(self, n: usize) -> Self {
        let mut gemma = self.no_grad();
        gemma.model.layers = trainable_last_blocks(gemma.model.layers, n);
        gemma.model.norm = gemma.model.norm.set_require_grad(true);
        gemma
    }
}

impl Gemma3Model {
    /// The blocks over `ids`, continuing `cache` when there is one.
    fn decode(&self, ids: Tensor<2, Int>, mut cache: Option<CacheMut<'_>>) -> Tensor<3> {
        let len = ids.dims()[1];
        let positions = match &cache {
            Some(cache) => cache.positions(len),
            None => (0..len).collect(),
        };
        let device = ids.device();
        let c = &self.config;
        let global = c.rope.tables_at(c.head_dim, &positions, &device);
        let local = c.rope_local.tables_at(c.head_dim, &positions, &device);
        // transformers multiplies by √hidden rounded to the weights' dtype (f32 here).
        let scale = (c.hidden_size as f64).sqrt() as f32;
        let mut x = ember_kernels::embedding(&self.model.embed_tokens, ids) * scale;
        for (layer, (block, kind)) in self.model.layers.iter().zip(&c.layer_types).enumerate() {
            let rope = match kind {
                LayerType::Full => &global,
                LayerType::Sliding => &local,
            };
            x = block.forward(x, rope, cache.as_mut().map(|c| (c.reborrow(), layer)));
        }
        self.model.norm.forward(x)
    }
}
