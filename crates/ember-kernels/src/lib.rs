//! Fused kernels for the hot spots of a GPT training step.
//!
//! ```
//! # #![allow(deprecated)]
//! use burn::prelude::*;
//!
//! let device = Device::ndarray();
//! // Equal logits over 4 tokens: the loss is ln 4; an ignored target does not count.
//! let logits = Tensor::<2>::zeros([2, 4], &device);
//! let targets = TensorData::new(vec![3i64, ember_kernels::IGNORE_INDEX], [2]);
//! let targets = Tensor::<1, Int>::from_data(targets, &device);
//! let loss: f32 = ember_kernels::cross_entropy(logits, targets).into_scalar();
//! assert!((loss - 4f32.ln()).abs() < 1e-6);
//! ```
//!
//! Each function here computes the same values as its plain tensor formulation, in one
//! pass forward and one backward:
//! - on tensors of a CPU backend the kernels know (Burn's ndarray backend with the
//!   `ndarray` feature, Burn's flex backend, ndarray's successor, with the `flex`
//!   feature), plain or under autodiff, through slice code with hand-written
//!   backward passes, reached through one adapter (`cpu.rs`'s `CpuBackend`);
//! - everywhere else (wgpu, libtorch, or without the features), through the plain
//!   tensor operations of [`gelu_tanh_reference`] and [`cross_entropy_reference`], which
//!   are also the definitions the kernels are tested against.
//!
//! One kernel per file: [`gelu_tanh`], [`matmul()`] (and [`linear`], in f32 or, under
//! [`autocast()`], with bf16 operands), [`causal_attention`] (with dropout), [`dropout`],
//! [`cross_entropy`] (and [`linear_cross_entropy`], the output head and the loss in one,
//! never holding the logits), [`token_log_probs`] (each row's, for DPO), [`rms_norm`],
//! [`layer_norm`], the optimizer [`FusedAdamW`], and for inference the
//! [`packed_weights`] (bf16/f16 weights computed with in f32) that
//! [`linear`], [`embedding`] and [`unembed`] use when a model has them.
//!
//! Library crates call these functions and never choose a backend; the `ember` binary
//! turns the `ndarray` (or `flex`) feature on together with that backend.

#![warn(missing_docs)]
// The ndarray backend is deprecated in Burn 0.22 (removed in 0.23); Ember pins 0.22.
#![allow(deprecated)]
// Without a CPU backend the adapter's kernel paths are never reached.
#![cfg_attr(not(any(feature = "ndarray", feature = "flex")), allow(unused))]

mod adamw;
mod amx;
mod attention;
pub mod autocast;
mod awake;
mod bf16_gemm;
mod cpu;
mod cross_entropy;
mod dropout;
pub mod dtype;
mod embedding;
mod exp;
mod gelu;
mod huge_pages;
mod layer_norm;
mod linear_cross_entropy;
mod matmul;
pub mod packed_weights;
mod panel_dot;
pub mod quant;
mod rms_norm;
mod row_norm;
pub mod rows;
mod sampling_weights;
mod silu;
mod simd;
mod tiled_attention;
mod token_log_probs;

pub use adamw::{AdamWHyper, FusedAdamW};
/// Targets with this value are left out of [`cross_entropy`] (PyTorch's default
/// `ignore_index`; `ember_data`'s collates write the same value for padding).
pub const IGNORE_INDEX: i64 = -100;

pub use attention::causal_attention;
pub use autocast::autocast;
pub use awake::with_workers_awake;
pub use cross_entropy::{cross_entropy, cross_entropy_reference};
pub use dropout::{dropout, with_dropout_keys};
pub use dtype::{Dtype, UnknownDtype};
pub use embedding::{embedding, unembed};
pub use gelu::{gelu_tanh, gelu_tanh_reference};
pub use layer_norm::{layer_norm, layer_norm_reference};
pub use linear_cross_entropy::{LOGITS_BLOCK_ELEMENTS, linear_cross_entropy};
pub use matmul::{linear, matmul};
pub use rms_norm::{rms_norm, rms_norm_reference};
pub use rows::{RowLayout, with_row_layout};
pub use sampling_weights::{WEIGHT_BLOCK, temperature_weights};
pub use silu::silu_fused;
pub use tiled_attention::{tiled_attention, tiled_attention_over};
pub use token_log_probs::{token_log_probs, token_log_probs_reference};

/// Elements per rayon task for the element-wise kernels: large enough that scheduling
/// is noise, small enough to share a 1.5M-element GELU input between the cores.
const ELEMENTS_PER_TASK: usize = 1 << 14;

#[cfg(test)]
pub(crate) mod tests {
    use burn::prelude::*;
    use burn::tensor::Tolerance;

    /// Held by every test that seeds or draws from the ndarray device's random
    /// generator, which is one for the whole process: a test that seeds it and expects
    /// the same draws twice (a dropout mask for the kernel and its reference) must not
    /// have another test draw in between.
    pub(crate) fn device_rng() -> std::sync::MutexGuard<'static, ()> {
        static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // A failed test poisons the lock; the generator itself is fine.
        RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fused element-wise kernel against its reference on random values in autodiff,
    /// the outputs and the input gradients within `absolute`.
    pub(crate) fn assert_unary_matches(
        fused: impl Fn(Tensor<3>) -> Tensor<3>,
        reference: impl Fn(Tensor<3>) -> Tensor<3>,
        std: f64,
        absolute: f32,
    ) {
        let _rng = device_rng();
        let device = Device::ndarray().autodiff();
        let x = Tensor::<3>::random(
            [3, 70, 200],
            burn::tensor::Distribution::Normal(0.0, std),
            &device,
        )
        .require_grad();
        let weights =
            Tensor::<3>::random([3, 70, 200], burn::tensor::Distribution::Default, &device);
        let (got, want) = (fused(x.clone()), reference(x.clone()));
        assert_close(got.clone(), want.clone(), absolute);
        let got_grad = x.grad(&(got * weights.clone()).sum().backward()).unwrap();
        let want_grad = x.grad(&(want * weights).sum().backward()).unwrap();
        assert_close(got_grad, want_grad, absolute);
    }

    /// `f` of f64 values (not a CPU kernel's dtype) through the plain operations: the
    /// values of `[0.5, -1.0]`.
    pub(crate) fn unary_of_f64(f: impl Fn(Tensor<1>) -> Tensor<1>) -> Vec<f32> {
        let x = Tensor::<1>::from_floats([0.5, -1.0], &Device::ndarray())
            .cast(burn::tensor::DType::F64);
        assert!(!crate::cpu::is_on_cpu_backend(&x));
        f(x).cast(burn::tensor::DType::F32)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    pub(crate) fn assert_close<const D: usize>(got: Tensor<D>, want: Tensor<D>, absolute: f32) {
        let (got, want) = (got.into_data(), want.into_data());
        let tolerance = Tolerance::<f32>::absolute(absolute).set_relative(1e-5);
        got.assert_approx_eq::<f32>(&want, tolerance);
    }
}
