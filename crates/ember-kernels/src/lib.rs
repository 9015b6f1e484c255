//! Fused kernels for the element-wise hot spots of a GPT training step.
//!
//! Written as plain tensor operations, tanh-GELU is eight element-wise passes forward
//! and as many backward, and the cross-entropy over a 50,257-token vocabulary is a
//! log-softmax, a gather and their backward passes over a `[rows, vocab]` tensor (100 MB
//! at the book's batch). Each pass reads and writes the whole tensor and allocates its
//! output; on the CPU that costs more than the arithmetic.
//!
//! Dropout draws its mask from Burn's generator one element at a time, a tenth of a
//! gpt2-small step on the CPU; here the mask comes from a counter-based hash.
//!
//! Each function here computes the same values in one pass forward and one backward:
//! - with the `ndarray` feature, on tensors of Burn's ndarray backend (with or without
//!   autodiff), through CPU kernels with hand-written backward passes;
//! - everywhere else (wgpu, libtorch, flex, or without the feature), through the plain
//!   tensor operations of [`gelu_tanh_reference`] and [`cross_entropy_reference`], which
//!   are also the definitions the kernels are tested against.
//!
//! Library crates call these functions and never choose a backend; the `ember` binary
//! turns the `ndarray` feature on together with the ndarray backend.

use burn::nn::{Dropout, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu_approximate, log_softmax};

mod adamw;
#[cfg(feature = "ndarray")]
mod cpu;

pub use adamw::{AdamWHyper, FusedAdamW};

/// Targets equal to this are left out of the loss (PyTorch's default `ignore_index`,
/// which the book's chapter 7 collate uses for padding).
pub const IGNORE_INDEX: i64 = -100;

/// GPT-2's tanh approximation of GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// # Shapes
/// - x: any
/// - returns the shape of `x`
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "ndarray")]
    let x = match cpu::gelu_tanh(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    gelu_tanh_reference(x)
}

/// [`gelu_tanh`] as plain tensor operations (Burn's `gelu_approximate`).
pub fn gelu_tanh_reference<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    gelu_approximate(x)
}

/// `layer`'s dropout applied to `x`: identity unless the layer is training, `x` is on an
/// autodiff device and the probability is above 0 (the rules of Burn's `Dropout`).
///
/// # Shapes
/// - x: any
/// - returns the shape of `x`
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    #[cfg(feature = "ndarray")]
    let x = match cpu::dropout(x, layer.prob) {
        Ok(y) => return y,
        Err(x) => x,
    };
    layer.forward(x)
}

/// `a · b`.
///
/// # Shapes
/// - a: `[m, k]`
/// - b: `[k, n]`
/// - returns `[m, n]`
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "ndarray")]
    let (a, b) = match cpu::matmul(a, b) {
        Ok(product) => return product,
        Err(operands) => operands,
    };
    a.matmul(b)
}

/// `layer` applied to `x` (`x · W + b`), its leading dimensions folded into rows for one
/// [`matmul`]. The weight is read through `Param::val`, so LoRA adapters that Burn's
/// `apply_lora` put on it take part.
///
/// # Shapes
/// - x: `[..., d_input]`
/// - returns `[..., d_output]`
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = layer.weight.val();
    let [d_input, d_output] = weight.dims();
    let mut dims = x.dims();
    assert_eq!(
        dims[D - 1],
        d_input,
        "linear layer of {d_input} inputs given {dims:?}"
    );
    let rows = dims[..D - 1].iter().product();
    let mut y = matmul(x.reshape([rows, d_input]), weight);
    if let Some(bias) = &layer.bias {
        y = y + bias.val().unsqueeze::<2>();
    }
    dims[D - 1] = d_output;
    y.reshape(dims)
}

/// Mean cross-entropy of `logits` against `targets`, over the targets that are not
/// [`IGNORE_INDEX`], as `torch.nn.functional.cross_entropy` computes it; with no
/// counted target it is 0.
///
/// # Shapes
/// - logits: `[rows, classes]`
/// - targets: `[rows]`
/// - returns `[1]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    #[cfg(feature = "ndarray")]
    let (logits, targets) = match cpu::cross_entropy(logits, targets) {
        Ok(loss) => return loss,
        Err(inputs) => inputs,
    };
    cross_entropy_reference(logits, targets)
}

/// [`cross_entropy`] as plain tensor operations: log-softmax, gather, masked mean.
pub fn cross_entropy_reference(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [rows, _] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    // Ignored positions gather index 0 and are then zeroed by the mask.
    let safe = targets.mask_fill(counted.clone().bool_not(), 0);
    let picked = log_probs.gather(1, safe.reshape([rows, 1])).reshape([rows]);
    let mask = counted.float();
    let count = mask.clone().sum().clamp_min(1.0);
    -(picked * mask).sum() / count
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;

    #[test]
    fn cross_entropy_matches_a_hand_computed_value_and_ignores_masked_targets() {
        let device = Device::ndarray();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5], [2, 3]),
            &device,
        );
        let l0 = -(3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        let l1 = 3f64.ln();
        for loss_fn in [cross_entropy, cross_entropy_reference] {
            let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &device);
            let loss: f32 = loss_fn(logits.clone(), targets).into_scalar();
            assert!((loss as f64 - (l0 + l1) / 2.0).abs() < 1e-6, "{loss}");
            let masked = Tensor::<1, Int>::from_data(
                TensorData::new(vec![2i64, IGNORE_INDEX], [2]),
                &device,
            );
            let loss: f32 = loss_fn(logits.clone(), masked).into_scalar();
            assert!((loss as f64 - l0).abs() < 1e-6, "{loss}");
            let none = Tensor::<1, Int>::from_data(
                TensorData::new(vec![IGNORE_INDEX, IGNORE_INDEX], [2]),
                &device,
            );
            let loss: f32 = loss_fn(logits.clone(), none).into_scalar();
            assert_eq!(loss, 0.0);
        }
    }

    #[test]
    fn gelu_tanh_matches_the_formula() {
        let device = Device::ndarray();
        let xs = [-9.0f32, -5.0, -3.0, -1.0, -0.1, 0.0, 0.5, 2.0, 12.0];
        let x = Tensor::<1>::from_floats(xs, &device);
        for gelu in [gelu_tanh, gelu_tanh_reference] {
            let y = gelu(x.clone()).into_data().to_vec::<f32>().unwrap();
            for (&x, y) in xs.iter().zip(y) {
                let x = x as f64;
                let want = 0.5
                    * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3)))
                            .tanh());
                assert!(
                    (y as f64 - want).abs() < 1e-6,
                    "gelu({x}) = {y}, want {want}"
                );
            }
        }
    }
}
