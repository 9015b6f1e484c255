//! The architectures Ember runs, registered in one place, and what every model offers.
//!
//! Each architecture is a folder ([`crate::gpt2`], [`crate::llama`] with Qwen3,
//! [`crate::gemma3`]) whose configuration implements [`ArchitectureConfig`] and whose
//! model implements [`Architecture`]. The `registry!` line in this file
//! turns them into [`ModelConfig`] and [`LanguageModel`], the architecture picked at run
//! time by `config.json`'s `model_type`, with every method dispatched by one macro
//! (`each_architecture!`); [`CausalLm`], what generation, evaluation and serving
//! need, follows from [`Architecture`] for every model and for [`LanguageModel`].
//!
//! Adding an architecture: its folder, and one line in `registry!`.

use burn::module::Module;
use burn::prelude::*;
use ember_attention::{AttentionError, CacheMut, KvCache, PackedCaches};
use ember_kernels::{RowLayout, with_row_layout};
use serde_json::Value;

use crate::gemma3::{Gemma3Config, Gemma3Model};
use crate::gpt2::{GptConfig, GptModel};
use crate::llama::{LlamaConfig, LlamaModel};
use crate::weights::{NameTable, TensorSource, WeightsError, collect_parameters};

/// What generation and evaluation need from a model.
pub trait CausalLm {
    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, vocab]`
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3>;

    /// Logits of the new positions `ids`, which continue the sequence in `cache`.
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, new, vocab]`
    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError>;

    /// Logits of the token after the new positions `ids` (which continue the sequence
    /// in `cache`): the output head on the last position only, all generation needs (a
    /// prompt of n tokens would otherwise cost n vocabulary-sized products).
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, vocab]`
    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError>;

    /// Logits of the token after each sequence of a packed batch: `ids` holds the new
    /// positions of every sequence side by side, each continuing its own cache in
    /// `caches` (a server's continuous batching; see [`ember_attention::packed`]). Each
    /// sequence gets what [`CausalLm::next_token_logits`] would give it alone.
    ///
    /// # Shapes
    /// - ids: `[1, total]` → `[sequences, vocab]`
    fn next_token_logits_packed(
        &self,
        ids: Tensor<2, Int>,
        caches: &mut PackedCaches,
    ) -> Result<Tensor<2>, AttentionError>;

    /// A cache for one sequence batch.
    fn new_cache(&self) -> KvCache;

    /// Numbers (f32) a cache holds per position of one sequence: keys and values of
    /// every layer (at most; a sliding-window layer stops growing at its window).
    fn cache_floats_per_position(&self) -> usize;

    /// The longest sequence the model attends over.
    fn context_length(&self) -> usize;

    /// Number of tokens in the vocabulary.
    fn vocab_size(&self) -> usize;
}

/// What one architecture's model implements.
pub trait Architecture: Module + Sized {
    /// Its configuration.
    type Config: ArchitectureConfig<Model = Self>;

    /// The configuration, read back from the model.
    fn config(&self) -> Self::Config;

    /// The final-norm output for every position (classification heads start here).
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, hidden]`
    fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3>;

    /// The final-norm output of the new positions `ids`, which continue the sequence
    /// in `cache`: one sequence batch's cache, or several sequences packed side by side
    /// in one row, each continuing its own.
    ///
    /// # Shapes
    /// - ids: `[batch, new]` → `[batch, new, hidden]`
    fn forward_cached_hidden(
        &self,
        ids: Tensor<2, Int>,
        cache: CacheMut<'_>,
    ) -> Result<Tensor<3>, AttentionError>;

    /// Output projection to vocabulary logits.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    fn head(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// The head as one `[hidden, vocab]` matrix, when it is no more than that product
    /// (no bias, no soft-capping, f32 weights rather than packed inference ones): the
    /// loss then takes it without computing the logits
    /// ([`ember_kernels::linear_cross_entropy`]).
    fn head_matrix(&self) -> Option<Tensor<2>> {
        None
    }

    /// Mean next-token cross-entropy of the logits of `ids` against `targets`, over the
    /// targets that are not [`ember_kernels::IGNORE_INDEX`] (the book's
    /// `calc_loss_batch`); the head and the loss in one where [`Architecture::head_matrix`]
    /// allows, so that the `[batch · seq, vocab]` logits are never held whole.
    ///
    /// # Shapes
    /// - ids, targets: `[batch, seq]` → `[1]`
    fn next_token_loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let hidden = self.forward_hidden(ids);
        let [batch, seq, width] = hidden.dims();
        let targets = targets.reshape([batch * seq]);
        match self.head_matrix() {
            Some(weight) => ember_kernels::linear_cross_entropy(
                hidden.reshape([batch * seq, width]),
                weight,
                targets,
            ),
            None => {
                let logits = self.head(hidden);
                let vocab = logits.dims()[2];
                ember_kernels::cross_entropy(logits.reshape([batch * seq, vocab]), targets)
            }
        }
    }

    /// A cache sized for this model.
    fn new_cache(&self) -> KvCache;

    /// Numbers a cache holds per position: keys and values of every layer.
    fn cache_floats_per_position(&self) -> usize;

    /// The longest sequence the model attends over.
    fn context_length(&self) -> usize;

    /// Number of tokens in the vocabulary.
    fn vocab_size(&self) -> usize;

    /// Number of transformer blocks.
    fn num_blocks(&self) -> usize;

    /// The parameter paths of the weight matrices LoRA adapts, under `prefix`: every
    /// projection of every block.
    fn lora_targets(&self, prefix: &str) -> Vec<String>;

    /// Freezes everything but the last `n` blocks and the final norm (the book's
    /// section 6.5).
    fn freeze_all_but_last_blocks(self, n: usize) -> Self;

    /// Sets every dropout probability (the architectures without dropout keep none).
    fn with_dropout(self, _p: f64) -> Self {
        self
    }

    /// Every tensor of the model under the Hub's names, in the Hub's layout, as a saved
    /// model holds them.
    fn hub_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        collect_parameters(self, &self.config().name_table(None))
    }
}

/// A head's `[hidden, vocab]` matrix for [`Architecture::head_matrix`]: the linear
/// head's weight, or the tied embedding's matrix transposed; `None` for a head with a
/// bias or with packed (inference) weights.
pub(crate) fn plain_head_matrix(
    lm_head: Option<&burn::nn::Linear>,
    embedding: &burn::nn::Embedding,
) -> Option<Tensor<2>> {
    use ember_kernels::packed_weights::packed_matrix;
    match lm_head {
        Some(head) => (head.bias.is_none() && packed_matrix(&head.weight).is_none())
            .then(|| head.weight.val()),
        None => packed_matrix(&embedding.weight)
            .is_none()
            .then(|| embedding.weight.val().transpose()),
    }
}

/// What one architecture's configuration implements.
pub trait ArchitectureConfig: Clone {
    /// The model it describes.
    type Model: Architecture<Config = Self>;

    /// The `model_type`s of `config.json` this architecture reads.
    const MODEL_TYPES: &'static [&'static str];

    /// The parameter path of the token embedding (what a tied head is).
    const EMBEDDING: &'static str;

    /// Reads a Hub `config.json` whose `model_type` is one of [`Self::MODEL_TYPES`],
    /// validated.
    fn from_hub_json(json: &Value) -> Result<Self, String>;

    /// The `config.json` transformers reads.
    fn to_hub_json(&self) -> Value;

    /// The model's `model_type`.
    fn model_type(&self) -> &'static str;

    /// Number of parameters (a tied head counted once).
    fn num_params(&self) -> usize;

    /// Vocabulary size.
    fn vocab_size(&self) -> usize;

    /// Width of the embeddings.
    fn hidden_size(&self) -> usize;

    /// Whether the output head is the token embedding.
    fn tied(&self) -> bool;

    /// Checks the values that would otherwise fail deep inside a forward pass.
    fn validate(&self) -> Result<(), String>;

    /// A model with undrawn (lazy) parameters.
    fn init(&self, device: &Device) -> Self::Model;

    /// How parameters and the tensors of `source` correspond (Ember's saves and
    /// random models: `None`).
    fn name_table(&self, source: Option<&dyn TensorSource>) -> NameTable;

    /// Tensors of `source` that stand for parameters the model does not have (GPT-2's
    /// zero QKV biases); they must be zero, and are otherwise left out.
    fn stand_in_tensors(&self, _source: &dyn TensorSource) -> Vec<String> {
        Vec::new()
    }
}

/// `blocks` frozen but the last `n`, which train (the book's section 6.5; the caller
/// has frozen the whole model first).
pub(crate) fn trainable_last_blocks<B: Module>(blocks: Vec<B>, n: usize) -> Vec<B> {
    let first = blocks.len().saturating_sub(n);
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            if i >= first {
                b.set_require_grad(true)
            } else {
                b
            }
        })
        .collect()
}

impl<M: Architecture> CausalLm for M {
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.forward_hidden(ids))
    }

    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        Ok(self.head(self.forward_cached_hidden(ids, cache.into())?))
    }

    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError> {
        ember_kernels::with_workers_awake(|| {
            let hidden = self.forward_cached_hidden(ids, cache.into())?;
            let [batch, seq, _] = hidden.dims();
            let logits = self.head(hidden.narrow(1, seq - 1, 1));
            let vocab = logits.dims()[2];
            Ok(logits.reshape([batch, vocab]))
        })
    }

    fn next_token_logits_packed(
        &self,
        ids: Tensor<2, Int>,
        caches: &mut PackedCaches,
    ) -> Result<Tensor<2>, AttentionError> {
        // Every product computes a decoding sequence's row as it would alone, and a
        // prompt chunk as a product of its own: what a sequence gets does not depend on
        // what else is in the batch.
        let device = ids.device();
        let layout = RowLayout {
            segments: caches.lens().to_vec(),
        };
        ember_kernels::with_workers_awake(|| {
            let hidden =
                with_row_layout(layout, || self.forward_cached_hidden(ids, caches.into()))?;
            let last: Vec<i64> = caches.last_positions().iter().map(|&i| i as i64).collect();
            let sequences = last.len();
            let last = Tensor::<1, Int>::from_data(TensorData::new(last, [sequences]), &device);
            // The head on each sequence's last position only.
            let one_each = RowLayout {
                segments: vec![1; sequences],
            };
            let logits = with_row_layout(one_each, || self.head(hidden.select(1, last)));
            let vocab = logits.dims()[2];
            Ok(logits.reshape([sequences, vocab]))
        })
    }

    fn new_cache(&self) -> KvCache {
        Architecture::new_cache(self)
    }

    fn cache_floats_per_position(&self) -> usize {
        Architecture::cache_floats_per_position(self)
    }

    fn context_length(&self) -> usize {
        Architecture::context_length(self)
    }

    fn vocab_size(&self) -> usize {
        Architecture::vocab_size(self)
    }
}

/// Declares the architectures: [`ModelConfig`] and [`LanguageModel`] with one variant
/// each, conversions into them, and [`each_architecture!`], which dispatches a value
/// of either enum to the same code for every variant. (`$d` is `$`, passed in so that
/// the macro written here can have metavariables of its own.)
macro_rules! registry {
    ($d:tt $($(#[$doc:meta])* $variant:ident($config:ty, $model:ty)),+ $(,)?) => {
        /// The architecture of a model.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ModelConfig {
            $($(#[$doc])* $variant($config)),+
        }

        /// A model of any architecture Ember runs.
        #[derive(Module, Debug)]
        pub enum LanguageModel {
            $($(#[$doc])* $variant($model)),+
        }

        $(
            impl From<$config> for ModelConfig {
                fn from(config: $config) -> Self {
                    Self::$variant(config)
                }
            }

            impl From<$model> for LanguageModel {
                fn from(model: $model) -> Self {
                    Self::$variant(model)
                }
            }
        )+

        /// `$body` with `$x` bound to the architecture-specific value inside
        /// `$value`, a `ModelConfig` or `LanguageModel` (`$kind`), for every variant.
        macro_rules! each_architecture {
            ($d value:expr, $d kind:ident, $d x:ident => $d body:expr) => {
                match $d value {
                    $($d kind::$variant($d x) => $d body),+
                }
            };
        }
        pub(crate) use each_architecture;

        /// Every `model_type` Ember runs.
        pub fn model_types() -> Vec<&'static str> {
            let mut types = Vec::new();
            $(types.extend_from_slice(<$config as ArchitectureConfig>::MODEL_TYPES);)+
            types
        }

        impl LanguageModel {
            /// The name of this model's variant, the first part of its parameter paths.
            fn variant_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant)),+
                }
            }
        }

        impl ModelConfig {
            /// The configuration of `model_type`, if an architecture reads it.
            fn of_model_type(model_type: &str, json: &Value) -> Option<Result<Self, String>> {
                $(
                    if <$config as ArchitectureConfig>::MODEL_TYPES.contains(&model_type) {
                        return Some(<$config>::from_hub_json(json).map(Self::$variant));
                    }
                )+
                None
            }
        }
    };
}

registry! { $
    /// GPT-2 (`model_type` `gpt2`, or Ember's own GPT configuration).
    Gpt2(GptConfig, GptModel),
    /// Llama 3.x or Qwen3 (`model_type` `llama`, `qwen3`).
    Llama(LlamaConfig, LlamaModel),
    /// Gemma 3 (`model_type` `gemma3_text`).
    Gemma3(Gemma3Config, Gemma3Model),
}

impl ModelConfig {
    /// The architecture a `config.json` describes, by its `model_type` (Ember's own GPT
    /// configurations carry an `"ember"` key; a GPT-2 file from before `model_type`
    /// existed is read as GPT-2).
    pub fn from_json(json: &Value, path: &std::path::Path) -> Result<Self, WeightsError> {
        let model_type = match json.get(crate::gpt2::EMBER_KEY) {
            Some(_) => "gpt2",
            None => json
                .get("model_type")
                .and_then(Value::as_str)
                .unwrap_or("gpt2"),
        };
        match Self::of_model_type(model_type, json) {
            Some(config) => config.map_err(|e| WeightsError::format(path, e)),
            None if model_type == "gemma3" => Err(WeightsError::format(
                path,
                "model_type \"gemma3\" is Gemma 3's image-and-text model; Ember runs the text models (gemma3_text: 270M, 1B)",
            )),
            None => Err(WeightsError::format(
                path,
                format!(
                    "model_type \"{model_type}\" is not supported (supported: {})",
                    model_types().join(", ")
                ),
            )),
        }
    }

    /// The `config.json` transformers reads.
    pub fn to_hub_json(&self) -> Value {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::to_hub_json(c))
    }

    /// Number of parameters (a tied head counted once).
    pub fn num_params(&self) -> usize {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::num_params(c))
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::vocab_size(c))
    }

    /// Width of the embeddings.
    pub fn hidden_size(&self) -> usize {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::hidden_size(c))
    }

    /// Whether the output head is the token embedding.
    pub fn tied(&self) -> bool {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::tied(c))
    }

    /// The model's `model_type`.
    pub fn model_type(&self) -> &'static str {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::model_type(c))
    }

    /// A model of this architecture with undrawn (lazy) parameters.
    pub fn init(&self, device: &Device) -> LanguageModel {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::init(c, device).into())
    }

    /// Checks the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), String> {
        each_architecture!(self, ModelConfig, c => ArchitectureConfig::validate(c))
    }

    /// The configuration as JSON, in Ember's names (`ember info --json`).
    pub fn to_json(&self) -> Value {
        each_architecture!(self, ModelConfig, c => serde_json::json!(c))
    }
}

impl LanguageModel {
    /// The final-norm output for every position (classification heads start here).
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, hidden]`
    pub fn forward_hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        each_architecture!(self, LanguageModel, m => Architecture::forward_hidden(m, ids))
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, vocab]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.logits(ids)
    }

    /// Mean next-token cross-entropy ([`Architecture::next_token_loss`]).
    ///
    /// # Shapes
    /// - ids, targets: `[batch, seq]` → `[1]`
    pub fn next_token_loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        each_architecture!(self, LanguageModel, m => Architecture::next_token_loss(m, ids, targets))
    }

    /// The configuration, read back from the model.
    pub fn config(&self) -> ModelConfig {
        each_architecture!(self, LanguageModel, m => Architecture::config(m).into())
    }

    /// Sets every dropout probability (GPT-2's; the Llama family and Gemma 3 have
    /// none).
    pub fn with_dropout(self, p: f64) -> Self {
        each_architecture!(self, LanguageModel, m => Architecture::with_dropout(m, p).into())
    }

    /// Number of transformer blocks.
    pub fn num_blocks(&self) -> usize {
        each_architecture!(self, LanguageModel, m => Architecture::num_blocks(m))
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.config().hidden_size()
    }

    /// The parameter paths of the weight matrices LoRA adapts, under `prefix`: every
    /// projection of every block (the book's appendix E adapts GPT-2's attention and
    /// feed-forward layers; for the others, the q/k/v/o and gate/up/down projections).
    /// Paths run through this enum's variant, as Burn names enum modules
    /// (`Llama.model.layers.0.self_attn.q_proj.weight`).
    pub fn lora_targets(&self, prefix: &str) -> Vec<String> {
        let variant = format!("{prefix}{}.", self.variant_name());
        each_architecture!(self, LanguageModel, m => Architecture::lora_targets(m, &variant))
    }

    /// Freezes everything but the last `n` blocks and the final norm (the book's
    /// section 6.5).
    pub fn freeze_all_but_last_blocks(self, n: usize) -> Self {
        each_architecture!(self, LanguageModel, m => Architecture::freeze_all_but_last_blocks(m, n).into())
    }
}

impl CausalLm for LanguageModel {
    fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        each_architecture!(self, LanguageModel, m => CausalLm::logits(m, ids))
    }

    fn logits_cached(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, AttentionError> {
        each_architecture!(self, LanguageModel, m => CausalLm::logits_cached(m, ids, cache))
    }

    fn next_token_logits(
        &self,
        ids: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, AttentionError> {
        each_architecture!(self, LanguageModel, m => CausalLm::next_token_logits(m, ids, cache))
    }

    fn next_token_logits_packed(
        &self,
        ids: Tensor<2, Int>,
        caches: &mut PackedCaches,
    ) -> Result<Tensor<2>, AttentionError> {
        each_architecture!(self, LanguageModel, m => CausalLm::next_token_logits_packed(m, ids, caches))
    }

    fn new_cache(&self) -> KvCache {
        each_architecture!(self, LanguageModel, m => CausalLm::new_cache(m))
    }

    fn cache_floats_per_position(&self) -> usize {
        each_architecture!(self, LanguageModel, m => CausalLm::cache_floats_per_position(m))
    }

    fn context_length(&self) -> usize {
        each_architecture!(self, LanguageModel, m => CausalLm::context_length(m))
    }

    fn vocab_size(&self) -> usize {
        each_architecture!(self, LanguageModel, m => CausalLm::vocab_size(m))
    }
}
