//! The attention layers of chapter 3, written as the book builds them.
//!
//! Every layer here keeps the book's explicit formulation (scores, mask, softmax,
//! dropout, weighted sum) so that it can be read next to the listings. The model uses
//! the fused [`crate::CausalSelfAttention`] instead; tests show the two agree.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// Section 3.3.1: self-attention without trainable weights.
///
/// Attention scores are dot products between every pair of inputs, normalised with
/// softmax; each context vector is the weighted sum of all inputs.
///
/// # Shapes
/// - inputs: `[seq_len, d]`
/// - returns `(context [seq_len, d], attention weights [seq_len, seq_len])`
pub fn simplified_self_attention(inputs: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let scores = inputs.clone().matmul(inputs.clone().transpose());
    let weights = softmax(scores, 1);
    let context = weights.clone().matmul(inputs);
    (context, weights)
}

/// Boolean mask that is `true` above the diagonal: the future positions a token must
/// not attend to (section 3.5.1).
///
/// # Shapes
/// - returns `[seq_len, seq_len]`
pub fn causal_mask(seq_len: usize, device: &Device) -> Tensor<2, Bool> {
    // Burn's `tril_mask` is `true` outside the lower triangle: above the diagonal.
    Tensor::<2, Bool>::tril_mask([seq_len, seq_len], 0, device)
}

/// Scaled dot-product with an optional causal mask and dropout on the weights, shared
/// by the layers below so each states only how it projects its inputs.
///
/// # Shapes
/// - queries: `[..., seq_q, d_k]`, keys: `[..., seq_k, d_k]`, values: `[..., seq_k, d_v]`
/// - returns `(context [..., seq_q, d_v], weights [..., seq_q, seq_k])`
fn scaled_dot_product<const D: usize>(
    queries: Tensor<D>,
    keys: Tensor<D>,
    values: Tensor<D>,
    causal: bool,
    dropout: Option<&Dropout>,
) -> (Tensor<D>, Tensor<D>) {
    let d_k = keys.dims()[D - 1] as f64;
    let seq_q = queries.dims()[D - 2];
    let seq_k = keys.dims()[D - 2];
    let mut scores = queries.matmul(keys.swap_dims(D - 1, D - 2));
    if causal {
        // Aligned at the bottom right, so a query block that continues a longer key
        // sequence (KV cache) still sees every key before it.
        let offset = seq_k as i64 - seq_q as i64;
        let mask = Tensor::<2, Bool>::tril_mask([seq_q, seq_k], offset, &scores.device());
        let mut shape = [1usize; D];
        shape[D - 2] = seq_q;
        shape[D - 1] = seq_k;
        let mask = mask.reshape(shape).expand(scores.dims());
        scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    }
    let mut weights = softmax(scores / d_k.sqrt(), D - 1);
    if let Some(dropout) = dropout {
        weights = ember_kernels::dropout(dropout, weights);
    }
    let context = weights.clone().matmul(values);
    (context, weights)
}

/// Configuration of [`SelfAttentionV1`].
#[derive(Config, Debug)]
pub struct SelfAttentionV1Config {
    /// Size of each input vector.
    pub d_in: usize,
    /// Size of each query, key, value and context vector.
    pub d_out: usize,
}

/// Listing 3.1: self-attention with trainable weight matrices held as raw parameters.
#[derive(Module, Debug)]
pub struct SelfAttentionV1 {
    /// `[d_in, d_out]`
    pub w_query: Param<Tensor<2>>,
    /// `[d_in, d_out]`
    pub w_key: Param<Tensor<2>>,
    /// `[d_in, d_out]`
    pub w_value: Param<Tensor<2>>,
}

impl SelfAttentionV1Config {
    /// Weights uniform in [0, 1), like the book's `torch.rand`.
    pub fn init(&self, device: &Device) -> SelfAttentionV1 {
        let init = Initializer::Uniform { min: 0.0, max: 1.0 };
        let shape = [self.d_in, self.d_out];
        SelfAttentionV1 {
            w_query: init.init(shape, device),
            w_key: init.init(shape, device),
            w_value: init.init(shape, device),
        }
    }
}

impl SelfAttentionV1 {
    /// # Shapes
    /// - inputs: `[seq_len, d_in]`
    /// - returns `[seq_len, d_out]`
    pub fn forward(&self, inputs: Tensor<2>) -> Tensor<2> {
        let queries = inputs.clone().matmul(self.w_query.val());
        let keys = inputs.clone().matmul(self.w_key.val());
        let values = inputs.matmul(self.w_value.val());
        scaled_dot_product(queries, keys, values, false, None).0
    }
}

/// Configuration of [`SelfAttentionV2`].
#[derive(Config, Debug)]
pub struct SelfAttentionV2Config {
    /// Size of each input vector.
    pub d_in: usize,
    /// Size of each query, key, value and context vector.
    pub d_out: usize,
    /// Whether the query, key and value projections have a bias.
    #[config(default = false)]
    pub qkv_bias: bool,
}

/// Listing 3.2: the same computation with `Linear` layers (better initialisation).
#[derive(Module, Debug)]
pub struct SelfAttentionV2 {
    /// Query projection.
    pub w_query: Linear,
    /// Key projection.
    pub w_key: Linear,
    /// Value projection.
    pub w_value: Linear,
}

impl SelfAttentionV2Config {
    /// Create the layer.
    pub fn init(&self, device: &Device) -> SelfAttentionV2 {
        let linear = LinearConfig::new(self.d_in, self.d_out).with_bias(self.qkv_bias);
        SelfAttentionV2 {
            w_query: linear.init(device),
            w_key: linear.init(device),
            w_value: linear.init(device),
        }
    }
}

impl SelfAttentionV2 {
    /// # Shapes
    /// - inputs: `[seq_len, d_in]`
    /// - returns `[seq_len, d_out]`
    pub fn forward(&self, inputs: Tensor<2>) -> Tensor<2> {
        self.attention_weights_and_context(inputs).0
    }

    /// The context vectors and the attention weights (each row sums to one).
    pub fn attention_weights_and_context(&self, inputs: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let queries = self.w_query.forward(inputs.clone());
        let keys = self.w_key.forward(inputs.clone());
        let values = self.w_value.forward(inputs);
        scaled_dot_product(queries, keys, values, false, None)
    }
}

/// Configuration of [`CausalAttention`].
#[derive(Config, Debug)]
pub struct CausalAttentionConfig {
    /// Size of each input vector.
    pub d_in: usize,
    /// Size of each context vector.
    pub d_out: usize,
    /// Dropout probability applied to the attention weights.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether the query, key and value projections have a bias.
    #[config(default = false)]
    pub qkv_bias: bool,
}

/// Listing 3.3: batched self-attention with a causal mask and dropout.
#[derive(Module, Debug)]
pub struct CausalAttention {
    /// Query projection.
    pub w_query: Linear,
    /// Key projection.
    pub w_key: Linear,
    /// Value projection.
    pub w_value: Linear,
    /// Dropout on the attention weights.
    pub dropout: Dropout,
}

impl CausalAttentionConfig {
    /// Create the layer.
    pub fn init(&self, device: &Device) -> CausalAttention {
        let linear = LinearConfig::new(self.d_in, self.d_out).with_bias(self.qkv_bias);
        CausalAttention {
            w_query: linear.init(device),
            w_key: linear.init(device),
            w_value: linear.init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl CausalAttention {
    /// # Shapes
    /// - inputs: `[batch, seq_len, d_in]`
    /// - returns `[batch, seq_len, d_out]`
    pub fn forward(&self, inputs: Tensor<3>) -> Tensor<3> {
        let queries = self.w_query.forward(inputs.clone());
        let keys = self.w_key.forward(inputs.clone());
        let values = self.w_value.forward(inputs);
        scaled_dot_product(queries, keys, values, true, Some(&self.dropout)).0
    }
}

/// Configuration of [`MultiHeadAttentionWrapper`].
#[derive(Config, Debug)]
pub struct MultiHeadAttentionWrapperConfig {
    /// Size of each input vector.
    pub d_in: usize,
    /// Size of each head's context vector (the output has `num_heads * d_out`).
    pub d_out: usize,
    /// Number of independent causal attention heads.
    pub num_heads: usize,
    /// Dropout probability applied to the attention weights.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether the projections have a bias.
    #[config(default = false)]
    pub qkv_bias: bool,
}

/// Listing 3.4: several [`CausalAttention`] heads run one after another, outputs
/// concatenated.
#[derive(Module, Debug)]
pub struct MultiHeadAttentionWrapper {
    /// The heads.
    pub heads: Vec<CausalAttention>,
}

impl MultiHeadAttentionWrapperConfig {
    /// Create the layer.
    pub fn init(&self, device: &Device) -> MultiHeadAttentionWrapper {
        let head = CausalAttentionConfig::new(self.d_in, self.d_out)
            .with_dropout(self.dropout)
            .with_qkv_bias(self.qkv_bias);
        MultiHeadAttentionWrapper {
            heads: (0..self.num_heads).map(|_| head.init(device)).collect(),
        }
    }
}

impl MultiHeadAttentionWrapper {
    /// # Shapes
    /// - inputs: `[batch, seq_len, d_in]`
    /// - returns `[batch, seq_len, num_heads * d_out]`
    pub fn forward(&self, inputs: Tensor<3>) -> Tensor<3> {
        let outputs = self
            .heads
            .iter()
            .map(|head| head.forward(inputs.clone()))
            .collect();
        Tensor::cat(outputs, 2)
    }
}

/// Configuration of [`MultiHeadAttention`].
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Size of each input vector.
    pub d_in: usize,
    /// Size of the output; split evenly across the heads.
    pub d_out: usize,
    /// Number of heads; must divide `d_out`.
    pub num_heads: usize,
    /// Dropout probability applied to the attention weights.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether the query, key and value projections have a bias.
    #[config(default = false)]
    pub qkv_bias: bool,
}

/// Listing 3.5: multi-head attention with weight splits: one projection each for Q, K
/// and V, reshaped into heads, then an output projection.
#[derive(Module, Debug)]
pub struct MultiHeadAttention {
    /// Query projection `[d_in, d_out]`.
    pub w_query: Linear,
    /// Key projection `[d_in, d_out]`.
    pub w_key: Linear,
    /// Value projection `[d_in, d_out]`.
    pub w_value: Linear,
    /// Combines the heads' outputs `[d_out, d_out]`.
    pub out_proj: Linear,
    /// Dropout on the attention weights.
    pub dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

impl MultiHeadAttentionConfig {
    /// Create the layer.
    ///
    /// # Panics
    /// If `num_heads` does not divide `d_out` (a programming error in the config).
    pub fn init(&self, device: &Device) -> MultiHeadAttention {
        assert!(
            self.num_heads > 0 && self.d_out.is_multiple_of(self.num_heads),
            "d_out ({}) must be divisible by num_heads ({})",
            self.d_out,
            self.num_heads
        );
        let linear = LinearConfig::new(self.d_in, self.d_out).with_bias(self.qkv_bias);
        MultiHeadAttention {
            w_query: linear.init(device),
            w_key: linear.init(device),
            w_value: linear.init(device),
            out_proj: LinearConfig::new(self.d_out, self.d_out).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            num_heads: self.num_heads,
        }
    }
}

impl MultiHeadAttention {
    /// # Shapes
    /// - inputs: `[batch, seq_len, d_in]`
    /// - returns `[batch, seq_len, d_out]`
    pub fn forward(&self, inputs: Tensor<3>) -> Tensor<3> {
        let [batch, seq_len, _] = inputs.dims();
        let d_out = self.out_proj.weight.dims()[0];
        let head_dim = d_out / self.num_heads;
        let split = |x: Tensor<3>| {
            x.reshape([batch, seq_len, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let queries = split(self.w_query.forward(inputs.clone()));
        let keys = split(self.w_key.forward(inputs.clone()));
        let values = split(self.w_value.forward(inputs));
        let (context, _) = scaled_dot_product(queries, keys, values, true, Some(&self.dropout));
        let context = context.swap_dims(1, 2).reshape([batch, seq_len, d_out]);
        self.out_proj.forward(context)
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    fn device() -> Device {
        Device::ndarray()
    }

    /// The six "Your journey starts with one step" embeddings of section 3.3.
    fn journey(device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(
                vec![
                    0.43f32, 0.15, 0.89, 0.55, 0.87, 0.66, 0.57, 0.85, 0.64, 0.22, 0.58, 0.33,
                    0.77, 0.25, 0.10, 0.05, 0.80, 0.55,
                ],
                [6, 3],
            ),
            device,
        )
    }

    #[test]
    fn simplified_attention_matches_the_book() {
        let device = device();
        let (context, weights) = simplified_self_attention(journey(&device));
        // Book, section 3.3.2: the attention weights for "journey" (row 1) and all
        // context vectors.
        weights
            .clone()
            .slice(s![1..2, ..])
            .into_data()
            .assert_approx_eq::<f32>(
                &TensorData::new(
                    vec![0.1385f32, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581],
                    [1, 6],
                ),
                Tolerance::absolute(1e-4),
            );
        context.into_data().assert_approx_eq::<f32>(
            &TensorData::new(
                vec![
                    0.4421f32, 0.5931, 0.5790, 0.4419, 0.6515, 0.5683, 0.4431, 0.6496, 0.5671,
                    0.4304, 0.6298, 0.5510, 0.4671, 0.5910, 0.5266, 0.4177, 0.6503, 0.5645,
                ],
                [6, 3],
            ),
            Tolerance::absolute(1e-4),
        );
        let row_sums: Vec<f32> = weights.sum_dim(1).into_data().try_into_vec().unwrap();
        for s in row_sums {
            assert!((s - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn self_attention_v1_and_v2_agree_on_shared_weights() {
        let device = device();
        let v2 = SelfAttentionV2Config::new(3, 2).init(&device);
        let v1 = SelfAttentionV1 {
            w_query: Param::from_tensor(v2.w_query.weight.val()),
            w_key: Param::from_tensor(v2.w_key.weight.val()),
            w_value: Param::from_tensor(v2.w_value.weight.val()),
        };
        let x = journey(&device);
        v1.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&v2.forward(x).into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn causal_attention_ignores_the_future() {
        let device = device();
        let layer = CausalAttentionConfig::new(3, 2).init(&device);
        let x = journey(&device).unsqueeze_dim::<3>(0);
        let full = layer.forward(x.clone());
        // Changing the last token must not change any earlier output.
        let changed = x.clone().slice_assign(
            s![.., 5..6, ..],
            Tensor::from_data(TensorData::new(vec![9.0f32, -9.0, 3.0], [1, 1, 3]), &device),
        );
        let out = layer.forward(changed);
        full.slice(s![.., 0..5, ..])
            .into_data()
            .assert_approx_eq::<f32>(
                &out.slice(s![.., 0..5, ..]).into_data(),
                Tolerance::absolute(1e-6),
            );
        // The first token attends only to itself: its context is its own value vector.
        let first_value = layer.w_value.forward(x.slice(s![.., 0..1, ..]));
        layer
            .forward(journey(&device).unsqueeze_dim::<3>(0))
            .slice(s![.., 0..1, ..])
            .into_data()
            .assert_approx_eq::<f32>(&first_value.into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn causal_mask_is_upper_triangular() {
        let mask: Vec<bool> = causal_mask(3, &device())
            .into_data()
            .try_into_vec()
            .unwrap();
        assert_eq!(
            mask,
            vec![false, true, true, false, false, true, false, false, false]
        );
    }

    /// The wrapper's heads and the weight-split layer are the same function when the
    /// split layer's projections are the heads' projections side by side and the
    /// output projection is the identity.
    #[test]
    fn wrapper_equals_multi_head_attention_with_concatenated_weights() {
        let device = device();
        let (d_in, head_dim, heads) = (3, 2, 2);
        let wrapper = MultiHeadAttentionWrapperConfig::new(d_in, head_dim, heads).init(&device);
        let mut mha = MultiHeadAttentionConfig::new(d_in, head_dim * heads, heads).init(&device);
        let cat = |f: fn(&CausalAttention) -> &Linear| {
            Param::from_tensor(Tensor::cat(
                wrapper.heads.iter().map(|h| f(h).weight.val()).collect(),
                1,
            ))
        };
        mha.w_query.weight = cat(|h| &h.w_query);
        mha.w_key.weight = cat(|h| &h.w_key);
        mha.w_value.weight = cat(|h| &h.w_value);
        mha.out_proj.weight = Param::from_tensor(Tensor::eye(head_dim * heads, &device));
        mha.out_proj.bias = Some(Param::from_tensor(Tensor::zeros(
            [head_dim * heads],
            &device,
        )));
        let x = Tensor::<3>::random([2, 5, d_in], Distribution::Normal(0.0, 1.0), &device);
        wrapper
            .forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&mha.forward(x).into_data(), Tolerance::absolute(1e-5));
    }
}
