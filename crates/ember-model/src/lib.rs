//! The GPT model of chapter 4, the weights of chapter 5.5, the text generation of
//! chapters 4.7 and 5.3, and the architectures readers go on to: Llama 3 and Qwen3.
//!
//! - [`config`]: [`GptConfig`] with the GPT-2 presets (124M to 1558M), the book's
//!   training configuration and a tiny one for tests.
//! - [`gpt`]: [`GptModel`], one readable file in nanoGPT's layout and GPT-2's
//!   parameter names (`wte`, `wpe`, `h.N.ln_1`, `attn.c_attn`, `mlp.c_fc`, `ln_f`).
//! - [`weights`]: loading Hugging Face GPT-2 directories and the book's `.pth` state
//!   dicts, and saving models as Hugging Face directories, through one name table per
//!   architecture.
//! - [`llama`]: [`LlamaModel`], the Llama 3 architecture; [`qwen3`] is the same model
//!   with per-head query/key norms; [`layers`] holds what they share (RMSNorm, rotary
//!   embeddings, SwiGLU, grouped-query attention).
//! - [`model`]: [`LanguageModel`], the architecture picked from `config.json`'s
//!   `model_type`, and [`CausalLm`], what generation and evaluation need of a model.
//! - [`generate`]: greedy, temperature, top-k and top-p sampling, with or without the
//!   KV cache, streaming, for any [`CausalLm`].

pub mod config;
pub mod generate;
pub mod gpt;
pub mod layers;
pub mod llama;
pub mod model;
pub mod precision;
pub mod qwen3;
pub mod weights;

pub use config::{ConfigError, GptConfig, WeightInit};
pub use generate::{
    GenerateError, GenerationConfig, check_prompt, generate, generate_until, sample_next_token,
};
pub use gpt::{FeedForward, GptModel, TransformerBlock};
pub use llama::{Family, LlamaConfig, LlamaModel};
pub use model::{CausalLm, LanguageModel, ModelConfig};
pub use precision::{WeightDtype, with_weight_dtype};
pub use weights::{
    LoadedModel, ModelSource, WeightsError, describe_model, load_model, load_model_as,
    model_tokenizer, read_model_config, resolve_model_path, save_model,
};
