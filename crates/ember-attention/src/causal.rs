//! The attention layer of the GPT model: fused QKV projection, fused attention kernel,
//! KV cache.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Errors of incremental decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionError {
    /// The cache holds `cached` positions, `new` more do not fit in `capacity`.
    ContextOverflow {
        /// Positions already in the cache.
        cached: usize,
        /// Positions that were to be appended.
        new: usize,
        /// The model's context length.
        capacity: usize,
    },
}

impl std::fmt::Display for AttentionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttentionError::ContextOverflow {
                cached,
                new,
                capacity,
            } => write!(
                f,
                "context overflow: {cached} cached + {new} new tokens exceed the context length {capacity}"
            ),
        }
    }
}

impl std::error::Error for AttentionError {}

/// Keys and values of every layer for the positions already processed, so that each
/// new token costs one row of attention instead of a whole forward pass.
///
/// The cache is an explicit object owned by the caller (as in candle-transformers):
/// create one per sequence batch, pass it to each forward call, [`KvCache::reset`] it
/// to start over.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers and at most `capacity` positions (the
    /// model's context length).
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            capacity,
        }
    }

    /// Number of positions cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|layer| layer.as_ref())
            .map_or(0, |(keys, _)| keys.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget every cached position.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|layer| *layer = None);
    }

    /// Fails when `new` more positions would not fit.
    pub fn check_room(&self, new: usize) -> Result<(), AttentionError> {
        let cached = self.len();
        if cached + new > self.capacity {
            return Err(AttentionError::ContextOverflow {
                cached,
                new,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Number of layers the cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends `keys`/`values` (`[batch, heads, new, head_dim]`) to layer `layer` and
    /// returns the whole cached sequence for it.
    fn extend(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let slot = &mut self.layers[layer];
        let (keys, values) = match slot.take() {
            Some((k, v)) => (
                Tensor::cat(vec![k, keys], 2),
                Tensor::cat(vec![v, values], 2),
            ),
            None => (keys, values),
        };
        *slot = Some((keys.clone(), values.clone()));
        (keys, values)
    }
}

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
    /// `layer`) and attends over everything cached. The caller checks room first
    /// ([`KvCache::check_room`]).
    ///
    /// # Shapes
    /// - x: `[batch, new_len, d_model]`
    /// - returns `[batch, new_len, d_model]`
    pub fn forward_cached(&self, x: Tensor<3>, cache: &mut KvCache, layer: usize) -> Tensor<3> {
        let (q, k, v) = self.project(x);
        let (k, v) = cache.extend(layer, k, v);
        self.attend(q, k, v)
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
        let dropout_active = self.attn_dropout.prob > 0.0
            && self.attn_dropout.training.is_enabled()
            && q.device().is_autodiff();
        let seq_k = k.dims()[2];
        let context = if dropout_active {
            // The fused kernel has no dropout; the book drops attention weights.
            explicit_attention(q, k, v, Some(&self.attn_dropout))
        } else if seq_len != seq_k {
            // Queries that continue a cached sequence. Backends disagree on where a
            // non-square causal mask sits (libtorch aligns it top-left), so: one new
            // query sees every key, several get the explicit bottom-right mask.
            if seq_len == 1 {
                attention(q, k, v, None, None, AttentionModuleOptions::default())
            } else {
                explicit_attention(q, k, v, None)
            }
        } else {
            attention(
                q,
                k,
                v,
                None,
                None,
                AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                },
            )
        };
        self.merge_heads(context, batch, seq_len)
    }

    fn merge_heads(&self, context: Tensor<4>, batch: usize, seq_len: usize) -> Tensor<3> {
        let d_model = self.c_proj.weight.dims()[0];
        let context = context.swap_dims(1, 2).reshape([batch, seq_len, d_model]);
        ember_kernels::linear(&self.c_proj, context)
    }
}

/// softmax(QKᵀ/√d + causal mask) · V, with optional dropout on the weights. The mask
/// is aligned at the bottom right so queries that continue a cached sequence see every
/// earlier key.
fn explicit_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    dropout: Option<&Dropout>,
) -> Tensor<4> {
    let [batch, heads, seq_q, head_dim] = q.dims();
    let seq_k = k.dims()[2];
    let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
    // `tril_mask` is `true` above the (shifted) diagonal: the positions to hide.
    let offset = seq_k as i64 - seq_q as i64;
    let mask = Tensor::<2, Bool>::tril_mask([seq_q, seq_k], offset, &scores.device())
        .reshape([1, 1, seq_q, seq_k])
        .expand([batch, heads, seq_q, seq_k]);
    let mut weights = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    if let Some(dropout) = dropout {
        weights = ember_kernels::dropout(dropout, weights);
    }
    weights.matmul(v)
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::MultiHeadAttentionConfig;
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
