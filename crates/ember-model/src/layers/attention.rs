//! Grouped-query attention (Ainslie et al. 2023) as Llama 3 and Qwen3 run it: separate
//! query, key, value and output projections (the Hub's `q_proj`, `k_proj`, `v_proj`,
//! `o_proj`), fewer key/value heads than query heads, rotary embeddings on queries and
//! keys, a head dimension of its own, and for Qwen3 and Gemma 3 an RMSNorm on each
//! head's queries and keys before the rotation. Gemma 3 also scales the scores by
//! `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2`, and its sliding-window
//! layers attend over the last `sliding_window` positions only.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use ember_attention::{CacheMut, causal_attention, sliding_window_attention};

use super::rms_norm::{RmsNorm, RmsNormConfig};
use super::rope::RopeTables;

/// Configuration of [`GroupedQueryAttention`].
#[derive(Config, Debug)]
pub struct GroupedQueryAttentionConfig {
    /// Model width.
    pub d_model: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// Width of one head (not necessarily `d_model / heads`).
    pub head_dim: usize,
    /// Biases on the query, key and value projections (Qwen2's; not Llama's or Qwen3's).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// RMSNorm on each head's queries and keys (Qwen3), with this ε.
    #[config(default = "None")]
    pub qk_norm_eps: Option<f64>,
    /// The query/key norms' offset of their scale (Gemma's `1 + weight`: 1).
    #[config(default = 0.0)]
    pub qk_norm_offset: f64,
    /// Scores are divided by the square root of this instead of `head_dim` (Gemma's
    /// `query_pre_attn_scalar`).
    #[config(default = "None")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Each query sees only this many positions, itself included (Gemma's sliding
    /// layers); `None` for ordinary causal attention.
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
}

/// Causal self-attention with grouped key/value heads and rotary embeddings.
#[derive(Module, Debug)]
pub struct GroupedQueryAttention {
    /// `[d_model, heads · head_dim]`
    pub q_proj: Linear,
    /// `[d_model, kv_heads · head_dim]`
    pub k_proj: Linear,
    /// `[d_model, kv_heads · head_dim]`
    pub v_proj: Linear,
    /// `[heads · head_dim, d_model]`
    pub o_proj: Linear,
    /// Qwen3's per-head norm of the queries, `[head_dim]`.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3's per-head norm of the keys, `[head_dim]`.
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Multiplies the queries so that the attention's `1/√head_dim` becomes the scale
    /// configured (1 without `query_pre_attn_scalar`).
    pub query_scale: f64,
    /// The window of a sliding-window layer.
    #[module(skip)]
    pub sliding_window: Option<usize>,
}

impl GroupedQueryAttentionConfig {
    /// The layer, drawn with Burn's defaults (loaded weights replace them).
    ///
    /// # Panics
    /// If `kv_heads` does not divide `heads` (configurations are validated first).
    pub fn init(&self, device: &Device) -> GroupedQueryAttention {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "{} query heads cannot share {} key/value heads",
            self.heads,
            self.kv_heads
        );
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let norm = |eps: f64| {
            RmsNormConfig::new(self.head_dim)
                .with_epsilon(eps)
                .with_weight_offset(self.qk_norm_offset)
                .init(device)
        };
        GroupedQueryAttention {
            q_proj: linear(self.d_model, q, self.qkv_bias),
            k_proj: linear(self.d_model, kv, self.qkv_bias),
            v_proj: linear(self.d_model, kv, self.qkv_bias),
            o_proj: linear(q, self.d_model, false),
            q_norm: self.qk_norm_eps.map(norm),
            k_norm: self.qk_norm_eps.map(norm),
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            query_scale: self
                .query_pre_attn_scalar
                .map_or(1.0, |scalar| (self.head_dim as f64 / scalar).sqrt()),
            sliding_window: self.sliding_window,
        }
    }
}

impl GroupedQueryAttention {
    /// Attention over the positions given and, with a cache (and this layer's index
    /// in it), every position before them: one sequence batch's [`KvCache`](ember_attention::KvCache), or
    /// several sequences packed into one row ([`ember_attention::PackedCaches`]).
    /// `rope` holds the rotations of `x`'s positions (the caller computes them once
    /// for every layer).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<(CacheMut<'_>, usize)>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let heads = |proj: &Linear, n: usize, norm: &Option<RmsNorm>| {
            let h = ember_kernels::linear(proj, x.clone()).reshape([batch, seq, n, self.head_dim]);
            let h = match norm {
                Some(norm) => norm.forward(h),
                None => h,
            };
            h.swap_dims(1, 2)
        };
        let mut q = rope.apply(heads(&self.q_proj, self.heads, &self.q_norm));
        if self.query_scale != 1.0 {
            q = q * self.query_scale;
        }
        let k = rope.apply(heads(&self.k_proj, self.kv_heads, &self.k_norm));
        let v = heads(&self.v_proj, self.kv_heads, &None);
        let attend = |q, k, v| match self.sliding_window {
            Some(window) => sliding_window_attention(q, k, v, window),
            None => causal_attention(q, k, v, None),
        };
        let context = match cache {
            Some((mut cache, layer)) => cache.attend(layer, q, k, v, self.sliding_window, attend),
            None => attend(q, k, v),
        };
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, seq, self.heads * self.head_dim]);
        ember_kernels::linear(&self.o_proj, context)
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::layers::RopeConfig;
    use burn::tensor::{Distribution, Tolerance};
    use ember_attention::KvCache;

    /// Decoding one position at a time through the cache gives the full pass's
    /// outputs, rotations and shared heads included; for Gemma's sliding-window layer
    /// too, whose cache keeps only the window.
    #[test]
    fn cached_decoding_equals_the_full_pass() {
        let device = Device::ndarray();
        device.seed(9);
        let plain = GroupedQueryAttentionConfig::new(16, 4, 2, 8).with_qk_norm_eps(Some(1e-6));
        let sliding = plain
            .clone()
            .with_qk_norm_offset(1.0)
            .with_query_pre_attn_scalar(Some(6.0))
            .with_sliding_window(Some(2));
        for config in [plain, sliding] {
            cached_decoding_equals_the_full_pass_for(config.init(&device), &device);
        }
    }

    fn cached_decoding_equals_the_full_pass_for(layer: GroupedQueryAttention, device: &Device) {
        let device = device.clone();
        let rope = RopeConfig {
            theta: 10_000.0,
            llama3: None,
            linear: None,
        };
        let x = Tensor::<3>::random([1, 6, 16], Distribution::Normal(0.0, 1.0), &device);
        let tables = |start, len| rope.tables(8, start, len, &device);
        let full = layer.forward(x.clone(), &tables(0, 6), None);
        let mut cache = KvCache::new(1, 6);
        let mut parts = vec![layer.forward(
            x.clone().narrow(1, 0, 3),
            &tables(0, 3),
            Some(((&mut cache).into(), 0)),
        )];
        for t in 3..6 {
            parts.push(layer.forward(
                x.clone().narrow(1, t, 1),
                &tables(t, 1),
                Some(((&mut cache).into(), 0)),
            ));
        }
        Tensor::cat(parts, 1)
            .into_data()
            .assert_approx_eq::<f32>(&full.into_data(), Tolerance::absolute(1e-5));
        let kept = layer.sliding_window.unwrap_or(6);
        assert_eq!((cache.len(), cache.kept(0)), (6, kept));
    }
}
