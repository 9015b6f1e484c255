//! Attention, chapter 3 of *Build a Large Language Model (From Scratch)*.
//!
//! Two halves:
//! - [`book`]: the chapter's progression as real layers, each a step on the way to
//!   multi-head attention: [`simplified_self_attention`] (no trainable weights),
//!   [`SelfAttentionV1`] / [`SelfAttentionV2`], [`CausalAttention`],
//!   [`MultiHeadAttentionWrapper`] and [`MultiHeadAttention`].
//! - [`causal`]: [`CausalSelfAttention`], the layer the GPT model runs. It computes
//!   Q, K and V with one fused projection (GPT-2's `c_attn`), uses Burn's fused
//!   attention kernel when no attention dropout is active, and extends a [`KvCache`]
//!   during incremental decoding. Tests prove it equals [`MultiHeadAttention`].
//!
//! Tensors are Burn's backend-agnostic tensors: the caller's `Device` picks the
//! backend, this crate never does.

pub mod book;
pub mod causal;

pub use book::{
    CausalAttention, CausalAttentionConfig, MultiHeadAttention, MultiHeadAttentionConfig,
    MultiHeadAttentionWrapper, MultiHeadAttentionWrapperConfig, SelfAttentionV1,
    SelfAttentionV1Config, SelfAttentionV2, SelfAttentionV2Config, causal_mask,
    simplified_self_attention,
};
pub use causal::{AttentionError, CausalSelfAttention, CausalSelfAttentionConfig, KvCache};
