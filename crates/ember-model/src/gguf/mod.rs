//! GGUF, llama.cpp's model file: Ember writes its models as GGUF files that llama.cpp,
//! Ollama and LM Studio run ([`export_gguf`]), for GPT-2, Llama 3 and Qwen3, in f32,
//! f16, bf16, Q8_0, Q4_0 or Q4_K; and runs such files, its own and llama.cpp's
//! ([`GgufModel`], what `--model FILE.gguf` loads).
//!
//! A GGUF file holds the weights under llama.cpp's own tensor names
//! (`blk.0.attn_q.weight`), rows innermost, some rearranged (GPT-2's `Conv1D` weights
//! transposed, Llama's query and key rows interleaved for llama.cpp's rotary
//! embedding: [`names`]); the hyperparameters as `<arch>.*` metadata; the tokenizer as
//! `tokenizer.ggml.*` ([`vocab`]); the chat template as `tokenizer.chat_template`.

pub mod export;
pub mod file;
pub mod import;
pub mod names;
pub mod vocab;

pub use export::{ExportSummary, export_gguf};
pub use file::{GgmlType, GgufFile, TensorInfo, Value};
pub use import::GgufModel;
