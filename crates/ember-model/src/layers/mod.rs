//! The building blocks the Llama family (Llama 3.x, Qwen3) and Gemma 3 share, each one
//! readable layer with a test against its plain formula.

pub mod attention;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

pub use attention::{GroupedQueryAttention, GroupedQueryAttentionConfig};
pub use rms_norm::{RmsNorm, RmsNormConfig};
pub use rope::{Llama3Scaling, RopeConfig, RopeTables};
pub use swiglu::{GateActivation, SwiGlu, SwiGluConfig};
