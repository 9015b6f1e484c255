//! Attention, chapter 3 of *Build a Large Language Model (From Scratch)*.
//!
//! ```
//! # #![allow(deprecated)]
//! use burn::prelude::*;
//! use ember_attention::causal_attention;
//!
//! let device = Device::ndarray();
//! // The first position sees only itself, so its output is its own value.
//! let q = Tensor::<4>::ones([1, 1, 2, 2], &device);
//! let v = Tensor::<4>::from_floats([[[[0.5, -1.0], [2.0, 4.0]]]], &device);
//! let out = causal_attention(q.clone(), q, v, None);
//! let first: Vec<f32> = out.narrow(2, 0, 1).into_data().to_vec().unwrap();
//! assert_eq!(first, [0.5, -1.0]);
//! ```
//!
//! Two halves:
//! - [`book`]: the chapter's progression as real layers, each a step on the way to
//!   multi-head attention: [`simplified_self_attention`] (no trainable weights),
//!   [`SelfAttentionV1`] / [`SelfAttentionV2`], [`CausalAttention`],
//!   [`MultiHeadAttentionWrapper`] and [`MultiHeadAttention`].
//! - [`causal`]: [`CausalSelfAttention`], the layer the GPT model runs. It computes
//!   Q, K and V with one fused projection (GPT-2's `c_attn`), and extends a [`KvCache`]
//!   ([`kv_cache`]) during incremental decoding. Tests prove it equals
//!   [`MultiHeadAttention`].
//! - [`sdpa`]: [`causal_attention`], the attention itself, shared with the
//!   grouped-query attention of Llama and Qwen3 (Burn's fused kernel when no dropout is
//!   active, the explicit formulation otherwise).
//!
//! Tensors are Burn's backend-agnostic tensors: the caller's `Device` picks the
//! backend, this crate never does.

#![warn(missing_docs)]

pub mod book;
pub mod causal;
pub mod kv_cache;
pub mod packed;
pub mod sdpa;

pub use book::{
    CausalAttention, CausalAttentionConfig, MultiHeadAttention, MultiHeadAttentionConfig,
    MultiHeadAttentionWrapper, MultiHeadAttentionWrapperConfig, SelfAttentionV1,
    SelfAttentionV1Config, SelfAttentionV2, SelfAttentionV2Config, causal_mask,
    simplified_self_attention,
};
pub use causal::{CausalSelfAttention, CausalSelfAttentionConfig};
pub use kv_cache::{AttentionError, CachedKeys, KvCache};
pub use packed::{CacheMut, PackedCaches};
pub use sdpa::{causal_attention, explicit_attention, repeat_kv, sliding_window_attention};
