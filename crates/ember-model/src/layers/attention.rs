//! Grouped-query attention (Ainslie et al. 2023) as Llama 3 and Qwen3 run it: separate
//! query, key, value and output projections (the Hub's `q_proj`, `k_proj`, `v_proj`,
//! `o_proj`), fewer key/value heads than query heads, rotary embeddings on queries and
//! keys, a head dimension of its own, and for Qwen3 an RMSNorm on each head's queries
//! and keys before the rotation.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use ember_attention::{KvCache, causal_attention};

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
        }
    }
}

impl GroupedQueryAttention {
    /// Attention over the positions given and, with a cache (and this layer's index
    /// in it), every position before them; `x`'s first position is `start` (the
    /// cache's length before this forward pass, which the caller takes once for every
    /// layer).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<(&mut KvCache, usize)>,
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
        let q = rope.apply(heads(&self.q_proj, self.heads, &self.q_norm));
        let k = rope.apply(heads(&self.k_proj, self.kv_heads, &self.k_norm));
        let v = heads(&self.v_proj, self.kv_heads, &None);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.extend(layer, k, v),
            None => (k, v),
        };
        let context = causal_attention(q, k, v, None).swap_dims(1, 2).reshape([
            batch,
            seq,
            self.heads * self.head_dim,
        ]);
        ember_kernels::linear(&self.o_proj, context)
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::layers::RopeConfig;
    use burn::tensor::{Distribution, Tolerance};

    /// Decoding one position at a time through the cache gives the full pass's
    /// outputs, rotations and shared heads included.
    #[test]
    fn cached_decoding_equals_the_full_pass() {
        let device = Device::ndarray();
        device.seed(9);
        let layer = GroupedQueryAttentionConfig::new(16, 4, 2, 8)
            .with_qk_norm_eps(Some(1e-6))
            .init(&device);
        let rope = RopeConfig {
            theta: 10_000.0,
            llama3: None,
        };
        let x = Tensor::<3>::random([1, 6, 16], Distribution::Normal(0.0, 1.0), &device);
        let tables = |start, len| rope.tables(8, start, len, &device);
        let full = layer.forward(x.clone(), &tables(0, 6), None);
        let mut cache = KvCache::new(1, 6);
        let mut parts = vec![layer.forward(
            x.clone().narrow(1, 0, 3),
            &tables(0, 3),
            Some((&mut cache, 0)),
        )];
        for t in 3..6 {
            parts.push(layer.forward(
                x.clone().narrow(1, t, 1),
                &tables(t, 1),
                Some((&mut cache, 0)),
            ));
        }
        Tensor::cat(parts, 1)
            .into_data()
            .assert_approx_eq::<f32>(&full.into_data(), Tolerance::absolute(1e-5));
    }
}
