//! The GPT-2 architecture (chapter 4), in nanoGPT's layout and GPT-2's names.
//!
//! ```text
//! ids ─ wte + wpe ─ dropout ─┬─ [ln_1 ─ attn ─ dropout] ─(+)─┬─ [ln_2 ─ mlp ─ dropout] ─(+)─ ... ─ ln_f ─ head ─ logits
//!                            └─────────────────────────────┘ └─────────────────────────────┘
//!                                        one TransformerBlock (pre-LayerNorm, residuals)
//! ```

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::prelude::*;
use ember_attention::{
    AttentionError, CacheMut, CausalSelfAttention, CausalSelfAttentionConfig, KvCache,
};

use super::config::{GptConfig, WeightInit};
use crate::model::{Architecture, trainable_last_blocks};
use crate::weights::collect_parameters;

/// The position-wise feed-forward network: expand ×4, tanh-GELU, project back.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `[d, 4d]`
    pub c_fc: Linear,
    /// `[4d, d]`
    pub c_proj: Linear,
}

impl FeedForward {
    /// A feed-forward network for width `d_model`, GPT-2's initialisation.
    pub fn new(d_model: usize, device: &Device) -> Self {
        Self::with_init(d_model, WeightInit::Gpt2, device)
    }

    fn with_init(d_model: usize, init: WeightInit, device: &Device) -> Self {
        Self {
            c_fc: linear(d_model, 4 * d_model, true, init, device),
            c_proj: linear(4 * d_model, d_model, true, init, device),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq_len, d_model]` → `[batch, seq_len, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // GPT-2 uses the tanh approximation of GELU (Burn's `gelu` is the exact erf one);
        // ember-kernels fuses it into one pass each way on the CPU.
        let hidden = ember_kernels::gelu_tanh(ember_kernels::linear(&self.c_fc, x));
        ember_kernels::linear(&self.c_proj, hidden)
    }
}

/// One pre-LayerNorm transformer block (listing 4.6).
#[derive(Module, Debug)]
pub struct TransformerBlock {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Causal multi-head self-attention.
    pub attn: CausalSelfAttention,
    /// LayerNorm before the feed-forward network.
    pub ln_2: LayerNorm,
    /// Feed-forward network.
    pub mlp: FeedForward,
    /// Dropout on both residual branches (the book's `drop_shortcut`).
    pub drop_shortcut: Dropout,
}

impl TransformerBlock {
    fn new(config: &GptConfig, device: &Device) -> Self {
        let d = config.emb_dim;
        let mut attn = CausalSelfAttentionConfig::new(d, config.n_heads)
            .with_dropout(config.drop_rate)
            .with_qkv_bias(config.qkv_bias)
            .init(device);
        // The attention layer draws PyTorch's defaults; GPT-2's scheme redraws them.
        if config.weight_init == WeightInit::Gpt2 {
            attn.c_attn = linear(d, 3 * d, config.qkv_bias, config.weight_init, device);
            attn.c_proj = linear(d, d, true, config.weight_init, device);
        }
        Self {
            ln_1: layer_norm(d, device),
            attn,
            ln_2: layer_norm(d, device),
            mlp: FeedForward::with_init(d, config.weight_init, device),
            drop_shortcut: DropoutConfig::new(config.drop_rate).init(),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq_len, d_model]` → `[batch, seq_len, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let attn = self.attn.forward(layer_norm_forward(&self.ln_1, x.clone()));
        let x = x + ember_kernels::dropout(&self.drop_shortcut, attn);
        let mlp = self.mlp.forward(layer_norm_forward(&self.ln_2, x.clone()));
        x + ember_kernels::dropout(&self.drop_shortcut, mlp)
    }

    fn forward_cached(&self, x: Tensor<3>, cache: CacheMut<'_>, layer: usize) -> Tensor<3> {
        let attn =
            self.attn
                .forward_cached(layer_norm_forward(&self.ln_1, x.clone()), cache, layer);
        let x = x + ember_kernels::dropout(&self.drop_shortcut, attn);
        let mlp = self.mlp.forward(layer_norm_forward(&self.ln_2, x.clone()));
        x + ember_kernels::dropout(&self.drop_shortcut, mlp)
    }
}

/// The GPT model (listing 4.7): embeddings, blocks, final norm, output head.
#[derive(Module, Debug)]
pub struct GptModel {
    /// Token embedding `[vocab, d]` (the book's `tok_emb`).
    pub wte: Embedding,
    /// Position embedding `[context, d]` (`pos_emb`).
    pub wpe: Embedding,
    /// Dropout on the summed embeddings.
    pub drop_emb: Dropout,
    /// The transformer blocks (`trf_blocks`).
    pub h: Vec<TransformerBlock>,
    /// Final LayerNorm (`final_norm`).
    pub ln_f: LayerNorm,
    /// Output head `[d, vocab]` (`out_head`); `None` when tied to `wte`.
    pub lm_head: Option<Linear>,
    /// Maximum sequence length.
    pub context_length: usize,
}

impl GptConfig {
    /// Build a randomly initialised model, drawn as `weight_init`
    /// says: GPT-2's scheme or PyTorch's defaults; LayerNorms start at one and zero.
    ///
    /// # Panics
    /// On an invalid config; call [`GptConfig::validate`] first where the config comes
    /// from a user.
    pub fn init(&self, device: &Device) -> GptModel {
        self.validate().expect("invalid GptConfig");
        let std = match self.weight_init {
            WeightInit::Gpt2 => 0.02,
            WeightInit::Torch => 1.0,
        };
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, self.emb_dim)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        GptModel {
            wte: embedding(self.vocab_size),
            wpe: embedding(self.context_length),
            drop_emb: DropoutConfig::new(self.drop_rate).init(),
            h: (0..self.n_layers)
                .map(|_| TransformerBlock::new(self, device))
                .collect(),
            ln_f: layer_norm(self.emb_dim, device),
            lm_head: (!self.tie_embeddings).then(|| {
                linear(
                    self.emb_dim,
                    self.vocab_size,
                    false,
                    self.weight_init,
                    device,
                )
            }),
            context_length: self.context_length,
        }
    }
}

impl GptModel {
    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq_len]` with `seq_len <= context_length`
    /// - returns `[batch, seq_len, vocab_size]`
    ///
    /// # Panics
    /// If `seq_len` exceeds the context length (see [`GptModel::try_forward`]).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.forward_hidden(ids))
    }

    /// [`GptModel::forward`] that reports a too-long input instead of panicking.
    pub fn try_forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>, AttentionError> {
        let new = ids.dims()[1];
        KvCache::new(0, self.context_length).check_room(new)?;
        Ok(self.forward(ids))
    }

    /// The final-LayerNorm output, before the head (classification heads start here).
    ///
    /// # Shapes
    /// - ids: `[batch, seq_len]` → `[batch, seq_len, d_model]`
    pub fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let seq_len = ids.dims()[1];
        assert!(
            seq_len <= self.context_length,
            "sequence of {seq_len} tokens exceeds the context length {}",
            self.context_length
        );
        let positions: Vec<usize> = (0..seq_len).collect();
        let mut x = self.embed(ids, &positions);
        for block in &self.h {
            x = block.forward(x);
        }
        layer_norm_forward(&self.ln_f, x)
    }

    /// Logits of the new positions `ids`, which continue the sequence held in `cache`.
    ///
    /// # Shapes
    /// - ids: `[batch, new_len]` → `[batch, new_len, vocab_size]`
    pub fn forward_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        Ok(self.head(self.forward_cached_hidden(ids, cache.into())?))
    }

    /// The final-norm output of the new positions `ids`, which continue the sequence
    /// held in `cache` (one sequence batch's, or several sequences packed into one row).
    ///
    /// # Shapes
    /// - ids: `[batch, new_len]` → `[batch, new_len, d_model]`
    pub fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        mut cache: CacheMut<'_>,
    ) -> Result<Tensor<3>, AttentionError> {
        let new = ids.dims()[1];
        cache.check_room(new)?;
        let mut x = self.embed(ids, &cache.positions(new));
        for (layer, block) in self.h.iter().enumerate() {
            x = block.forward_cached(x, cache.reborrow(), layer);
        }
        Ok(layer_norm_forward(&self.ln_f, x))
    }

    /// A cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.h.len(), self.context_length)
    }

    /// Token plus position embeddings: every row of `ids` at `positions` (one per
    /// column).
    fn embed(&self, ids: Tensor<2, Int>, positions: &[usize]) -> Tensor<3> {
        let [batch, seq_len] = ids.dims();
        let positions: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let positions =
            Tensor::<2, Int>::from_data(TensorData::new(positions, [1, seq_len]), &ids.device())
                .expand([batch, seq_len]);
        let x = ember_kernels::embedding(&self.wte, ids)
            + ember_kernels::embedding(&self.wpe, positions);
        ember_kernels::dropout(&self.drop_emb, x)
    }

    /// Output projection to vocabulary logits.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]` → `[batch, seq_len, vocab_size]`
    pub fn head(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => ember_kernels::linear(head, x),
            // Tied: the token embedding matrix, transposed, is the head.
            None => ember_kernels::unembed(&self.wte, x),
        }
    }

    /// Sets every dropout probability (embeddings, attention weights, residual
    /// branches) to `p`: the book fine-tunes loaded GPT-2 weights with dropout 0.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.drop_emb.prob = p;
        for block in &mut self.h {
            block.drop_shortcut.prob = p;
            block.attn.attn_dropout.prob = p;
        }
        self
    }

    /// The configuration this model was built with, read back from its shapes.
    pub fn config(&self) -> GptConfig {
        let [vocab_size, emb_dim] = self.wte.weight.dims();
        let first = self.h.first();
        GptConfig {
            vocab_size,
            context_length: self.context_length,
            emb_dim,
            n_heads: first.map_or(1, |b| b.attn.num_heads),
            n_layers: self.h.len(),
            drop_rate: self.drop_emb.prob,
            qkv_bias: first.is_some_and(|b| b.attn.c_attn.bias.is_some()),
            tie_embeddings: self.lm_head.is_none(),
            // Not recoverable from the weights; it only matters for new models.
            weight_init: WeightInit::default(),
        }
    }
}

impl Architecture for GptModel {
    type Config = GptConfig;

    fn config(&self) -> GptConfig {
        GptModel::config(self)
    }

    fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        GptModel::forward_hidden(self, ids)
    }

    fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        cache: CacheMut<'_>,
    ) -> Result<Tensor<3>, AttentionError> {
        GptModel::forward_cached_hidden(self, ids, cache)
    }

    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        GptModel::head(self, hidden)
    }

    fn head_matrix(&self) -> Option<Tensor<2>> {
        crate::model::plain_head_matrix(self.lm_head.as_ref(), &self.wte)
    }

    fn new_cache(&self) -> KvCache {
        GptModel::new_cache(self)
    }

    fn cache_floats_per_position(&self) -> usize {
        self.h.len() * 2 * self.wte.weight.dims()[1]
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }

    fn num_blocks(&self) -> usize {
        self.h.len()
    }

    /// The book's appendix E adapts GPT-2's attention and feed-forward layers.
    fn lora_targets(&self, prefix: &str) -> Vec<String> {
        (0..self.h.len())
            .flat_map(|i| {
                ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
                    .map(|layer| format!("{prefix}h.{i}.{layer}.weight"))
            })
            .collect()
    }

    fn freeze_all_but_last_blocks(self, n: usize) -> Self {
        let mut gpt = self.no_grad();
        gpt.h = trainable_last_blocks(gpt.h, n);
        gpt.ln_f = gpt.ln_f.set_require_grad(true);
        gpt
    }

    fn with_dropout(self, p: f64) -> Self {
        GptModel::with_dropout(self, p)
    }

    /// transformers' GPT-2 always has a QKV bias: a model without one is written with
    /// the zeros it stands for.
    fn hub_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut tensors = collect_parameters(self, &super::hub::table(true));
        tensors.extend(super::hub::zero_qkv_biases(&GptModel::config(self)));
        tensors
    }
}

/// `ln` applied to `x` through ember-kernels' fused LayerNorm (one pass each way on
/// the CPU backend, the plain operations elsewhere); the module keeps the parameters.
fn layer_norm_forward<const D: usize>(ln: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    ember_kernels::layer_norm(
        x,
        ln.gamma.val(),
        ln.beta.as_ref().map(|beta| beta.val()),
        LAYER_NORM_EPSILON,
    )
}

/// GPT-2's LayerNorm epsilon.
const LAYER_NORM_EPSILON: f64 = 1e-5;

fn layer_norm(d_model: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d_model)
        .with_epsilon(LAYER_NORM_EPSILON)
        .init(device)
}

fn linear(d_in: usize, d_out: usize, bias: bool, init: WeightInit, device: &Device) -> Linear {
    if init == WeightInit::Torch {
        // Burn's default is PyTorch's: uniform(±1/√fan_in) for weight and bias.
        return LinearConfig::new(d_in, d_out).with_bias(bias).init(device);
    }
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device);
    if let Some(bias) = layer.bias.as_mut() {
        *bias = Initializer::Zeros.init([d_out], device);
    }
    layer
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;

    #[test]
    fn built_model_has_the_computed_parameter_count() {
        let device = Device::ndarray();
        for tied in [false, true] {
            let config = GptConfig::tiny().with_tied_embeddings(tied);
            let model = config.init(&device);
            assert_eq!(model.num_params(), config.num_params());
            assert_eq!(model.config(), config);
        }
    }

    #[test]
    fn too_long_input_is_an_error() {
        let device = Device::ndarray();
        let config = GptConfig {
            context_length: 4,
            vocab_size: 16,
            emb_dim: 8,
            n_heads: 2,
            n_layers: 1,
            ..GptConfig::tiny()
        };
        let model = config.init(&device);
        let ids = Tensor::<2, Int>::zeros([1, 5], &device);
        let err = model.try_forward(ids).unwrap_err().to_string();
        assert!(err.contains("exceed the context length 4"), "{err}");
    }
}
