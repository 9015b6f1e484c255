//! The GPT model of chapter 4, the weights of chapter 5.5, the text generation of
//! chapters 4.7 and 5.3, and the architectures readers go on to: Llama 3, Qwen3 and
//! Gemma 3.
//!
//! ```
//! use ember_model::{GptConfig, ModelConfig};
//!
//! // GPT-2 small, the book's 124M model: 163M parameters with its own output head,
//! // 124M when the head is the token embedding.
//! let gpt2 = GptConfig::preset("gpt2-small")?;
//! assert_eq!(gpt2.clone().with_tied_embeddings(false).num_params(), 163_009_536);
//! assert_eq!(gpt2.with_tied_embeddings(true).num_params(), 124_412_160);
//! // Any architecture from its config.json, here Gemma 3 270M's.
//! let gemma = serde_json::json!({
//!     "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640,
//!     "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
//!     "num_key_value_heads": 1, "head_dim": 256, "sliding_window": 512,
//! });
//! let config = ModelConfig::from_json(&gemma, "config.json".as_ref())?;
//! assert_eq!(config.num_params(), 268_098_176);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! One folder per architecture, each its configuration (serde on the Hub's keys), its
//! model and its tensor names:
//! - [`gpt2`]: [`GptConfig`] with the GPT-2 presets (124M to 1558M), the book's
//!   training configuration and a tiny one for tests; [`GptModel`], one readable file in
//!   nanoGPT's layout and GPT-2's parameter names (`wte`, `wpe`, `h.N.ln_1`,
//!   `attn.c_attn`, `mlp.c_fc`, `ln_f`); the book's `.pth` state dicts.
//! - [`llama`]: [`LlamaModel`], the Llama 3 architecture; Qwen3 is the same model with
//!   per-head query/key norms ([`llama::qwen3`]).
//! - [`gemma3`]: [`Gemma3Model`], Gemma 3's text models (sliding-window layers, GELU
//!   gates, norms around each sub-layer).
//! - [`layers`]: what the modern architectures share (RMSNorm, rotary embeddings, gated
//!   feed-forward networks, grouped-query attention).
//! - [`model`]: the registry of architectures, [`LanguageModel`] / [`ModelConfig`] (the
//!   architecture picked from `config.json`'s `model_type`), the [`Architecture`] traits
//!   each implements, and [`CausalLm`], what generation and evaluation need of a model.
//! - [`weights`]: loading Hugging Face directories and saving models as Hugging Face
//!   directories, through each architecture's name table.
//! - [`mod@generate`]: greedy, temperature, top-k and top-p sampling, with or without the
//!   KV cache, streaming, for any [`CausalLm`].
//!
//! Features, both on by default: `chat-template` (a loaded model's tokenizer renders its
//! chat template, through minijinja) and `pth` (the book's PyTorch `.pth` state dicts);
//! without them, rendering a template or loading a `.pth` is a typed error naming the
//! feature. Hub safetensors and generation need neither.

#![warn(missing_docs)]

pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod layers;
pub mod llama;
pub mod model;
pub mod precision;
pub mod weights;

pub use ember_attention::{AttentionError, CacheMut, KvCache, PackedCaches};
pub use ember_kernels::Dtype;
pub use gemma3::{Gemma3Config, Gemma3Model};
pub use generate::{
    GenerateError, GenerationConfig, Sampler, check_prompt, generate, generate_until,
    sample_next_token,
};
pub use gpt2::{ConfigError, FeedForward, GptConfig, GptModel, TransformerBlock, WeightInit};
pub use llama::{Family, LlamaConfig, LlamaModel};
pub use model::{Architecture, ArchitectureConfig, CausalLm, LanguageModel, ModelConfig};
pub use precision::with_weight_dtype;
pub use weights::{
    LoadedModel, ModelSource, WeightsError, describe_model, load_model, load_model_as,
    model_tokenizer, read_model_config, resolve_model_path, save_model,
};
