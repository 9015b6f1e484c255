//! The attention layer of the GPT model: fused QKV projection, fused attention kernel,
//! KV cache.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::packed::CacheMut;
use crate::sdpa::{causal_attention, explicit_attention};

/// Configuration of [`CausalSelfAttention`].
#[derive(Config, Debug)]
pub struct CausalSelfAttentionConfig {
    /// Model width (`emb_dim`); also the width of Q, K and V.
    pub d_model: usize,
    /// Number of heads; must divide `d_model`.
    pub num_heads: usize,
    /// Dropout probability on the attention weights (training only).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether the QKV projection has a bias (GPT-2: yes; the book's training: no).
    #[config(default = false)]
    pub qkv_bias: bool,
}

/// Multi-head causal self-attention as GPT-2 lays it out (parameter names `c_attn`,
/// `c_proj`).
///
/// `c_attn` is `[d_model, 3 * d_model]` holding `[Q | K | V]` along its output axis:
/// one matrix product instead of three. It is the same function as
/// [`crate::MultiHeadAttention`] with the three weights side by side.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// Fused query/key/value projection.
    pub c_attn: Linear,
    /// Output projection.
    pub c_proj: Linear,
    /// Dropout on the attention weights.
    pub attn_dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

impl CausalSelfAttentionConfig {
    /// Create the layer.
    ///
    /// # Panics
    /// If `num_heads` does not divide `d_model` (configs are validated before this).
    pub fn init(&self, device: &Device) -> CausalSelfAttention {
        assert!(
            self.num_heads > 0 && self.d_model.is_multiple_of(self.num_heads),
            "d_model ({}) must be divisible by num_heads ({})",
            self.d_model,
            self.num_heads
        );
        CausalSelfAttention {
            c_attn: LinearConfig::new(self.d_model, 3 * self.d_model)
                .with_bias(self.qkv_bias)
                .init(device),
            c_proj: LinearConfig::new(self.d_model, self.d_model).init(device),
            attn_dropout: DropoutConfig::new(self.dropout).init(),
            num_heads: self.num_heads,
        }
    }
}

impl CausalSelfAttention {
    /// Full-sequence forward pass (training, evaluation, prefill without a cache).
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - returns `[batch, seq_len, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = self.project(x);
        self.attend(q, k, v)
    }

    /// Forward pass that appends this call's keys and values to `cache` (layer
    /// `layer`) and attends over everything cached: one [`KvCache`](crate::KvCache), or several
    /// sequences packed into one row ([`crate::PackedCaches`]). The caller checks room
    /// first ([`CacheMut::check_room`]).
    ///
    /// # Shapes
    /// - x: `[batch, new_len, d_model]`
    /// - returns `[batch, new_len, d_model]`
    pub fn forward_cached<'a>(
        &self,
        x: Tensor<3>,
        cache: impl Into<CacheMut<'a>>,
        layer: usize,
    ) -> Tensor<3> {
        let (q, k, v) = self.project(x);
        let [batch, _, seq_len, _] = q.dims();
        let context = cache.into().attend(layer, q, k, v, None, |q, k, v| {
            causal_attention(q, k, v, Some(&self.attn_dropout))
        });
        self.merge_heads(context, batch, seq_len)
    }

    /// The explicit formulation (scores, mask, softmax, weighted sum) without dropout,
    /// kept to prove the fused kernel right.
    pub fn forward_explicit(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = self.project(x);
        let [batch, _, seq_len, _] = q.dims();
        let context = explicit_attention(q, k, v, None);
        self.merge_heads(context, batch, seq_len)
    }

    /// `[batch, seq, d]` → three `[batch, heads, seq, head_dim]`.
    fn project(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, seq_len, _] = x.dims();
        let d_model = self.c_proj.weight.dims()[0];
        let head_dim = d_model / self.num_heads;
        let qkv = ember_kernels::linear(&self.c_attn, x);
        let split = |start: usize| {
            qkv.clone()
                .narrow(2, start, d_model)
                .reshape([batch, seq_len, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        (split(0), split(d_model), split(2 * d_model))
    }

    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
        let [batch, _, seq_len, _] = q.dims();
        let context = causal_attention(q, k, v, Some(&self.attn_dropout));
        self.merge_heads(context, batch, seq_len)
    }

    fn merge_heads(&self, context: Tensor<4>, batch: usize, seq_len: usize) -> Tensor<3> {
        let d_model = self.c_proj.weight.dims()[0];
        let context = context.swap_dims(1, 2).reshape([batch, seq_len, d_model]);
        ember_kernels::linear(&self.c_proj, context)
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::{AttentionError, KvCache, MultiHeadAttentionConfig};
    use burn::module::Param;
    use burn::tensor::{Distribution, Tolerance};

    fn setup() -> (Device, CausalSelfAttention, Tensor<3>) {
        let device = Device::ndarray();
        device.seed(7);
        let layer = CausalSelfAttentionConfig::new(16, 4)
            .with_qkv_bias(true)
            .init(&device);
        let x = Tensor::<3>::random([2, 9, 16], Distribution::Normal(0.0, 1.0), &device);
        (device, layer, x)
    }

    #[test]
    fn fused_kernel_equals_explicit_attention() {
        let (_, layer, x) = setup();
        layer
            .forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &layer.forward_explicit(x).into_data(),
                Tolerance::absolute(1e-5),
            );
    }

    #[test]
    fn fused_qkv_equals_the_books_multi_head_attention() {
        let (device, layer, x) = setup();
        let mut mha = MultiHeadAttentionConfig::new(16, 16, 4)
            .with_qkv_bias(true)
            .init(&device);
        let w = layer.c_attn.weight.val();
        let b = layer.c_attn.bias.as_ref().unwrap().val();
        for (i, proj) in [&mut mha.w_query, &mut mha.w_key, &mut mha.w_value]
            .into_iter()
            .enumerate()
        {
            proj.weight = Param::from_tensor(w.clone().narrow(1, 16 * i, 16));
            proj.bias = Some(Param::from_tensor(b.clone().narrow(0, 16 * i, 16)));
        }
        mha.out_proj = layer.c_proj.clone();
        layer
            .forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&mha.forward(x).into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn cached_decoding_equals_full_forward_at_every_position() {
        let (_, layer, x) = setup();
        let full = layer.forward(x.clone());
        let mut cache = KvCache::new(1, 9);
        // Prefill four positions, then one at a time to the end of the context.
        let mut outputs = vec![layer.forward_cached(x.clone().narrow(1, 0, 4), &mut cache, 0)];
        for t in 4..9 {
            cache.check_room(1).unwrap();
            outputs.push(layer.forward_cached(x.clone().narrow(1, t, 1), &mut cache, 0));
        }
        assert_eq!(cache.len(), 9);
        Tensor::cat(outputs, 1)
            .into_data()
            .assert_approx_eq::<f32>(&full.into_data(), Tolerance::absolute(1e-5));
        assert_eq!(
            cache.check_room(1),
            Err(AttentionError::ContextOverflow {
                cached: 9,
                new: 1,
                capacity: 9
            })
        );
        cache.reset();
        assert!(cache.is_empty());
    }
}
