//! GPT-2's tanh-GELU (listing 4.3), one fused pass each way.
//!
//! Written as tensor operations it is eight element-wise passes forward and as many
//! backward, each reading and writing the whole tensor.

use crate::cpu::{UnaryKernel, unary, with_cpu_backend};
use crate::exp::exp;
use burn::prelude::*;
use burn::tensor::activation::gelu_approximate;

/// √(2/π), the GELU approximation's scale.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic term's weight in the GELU approximation.
const CUBIC: f32 = 0.044_715;

/// GPT-2's tanh approximation of GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// # Shapes
/// - x: any
/// - returns the shape of `x`
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    with_cpu_backend!(&x, B => unary::<B, _, D>(GeluTanh, &x))
        .unwrap_or_else(|| gelu_tanh_reference(x))
}

/// [`gelu_tanh`] as plain tensor operations (Burn's `gelu_approximate`).
pub fn gelu_tanh_reference<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    gelu_approximate(x)
}

/// The kernel: `x·σ(2u)` forward, its derivative backward.
#[derive(Debug, Clone, Copy)]
struct GeluTanh;

impl UnaryKernel for GeluTanh {
    #[inline]
    fn value(&self, x: f32) -> f32 {
        x * Sigmoid::of_2u(x).s
    }

    /// `d/dx x·σ(2u) = σ + x·σ·(1 − σ)·2·√(2/π)·(1 + 3·0.044715·x²)`.
    #[inline]
    fn derivative(&self, x: f32) -> f32 {
        let Sigmoid { s, one_minus_s } = Sigmoid::of_2u(x);
        let du = 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x);
        s + x * s * one_minus_s * du
    }
}

/// `σ(2u)` and `1 − σ(2u)` for GELU's `u = √(2/π)·(x + 0.044715·x³)`.
///
/// `½·x·(1 + tanh(u))` is exactly `x·σ(2u)`: one `exp` (the vectorised one of
/// `exp.rs`) instead of glibc's `tanhf` (which goes through `expm1f` and took three
/// times as long here), and no cancellation in `1 + tanh(u)` for large negative `x`.
struct Sigmoid {
    s: f32,
    one_minus_s: f32,
}

impl Sigmoid {
    #[inline]
    fn of_2u(x: f32) -> Self {
        let e = exp(-2.0 * SQRT_2_OVER_PI * (x + CUBIC * x * x * x));
        let s = 1.0 / (1.0 + e);
        // e·s keeps 1 − σ exact where σ is close to 1; e is infinite only where σ is 0.
        let one_minus_s = if e.is_finite() { e * s } else { 1.0 };
        Sigmoid { s, one_minus_s }
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;

    #[test]
    fn gelu_tanh_matches_the_formula() {
        let xs = [-9.0f32, -5.0, -3.0, -1.0, -0.1, 0.0, 0.5, 2.0, 12.0];
        for device in [Device::ndarray(), Device::ndarray().autodiff()] {
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

    #[test]
    fn gelu_and_its_gradient_match_the_reference() {
        // The reference loses about 1e-6 to the cancellation in 1 + tanh(u) near x = -5.
        crate::tests::assert_unary_matches(gelu_tanh, gelu_tanh_reference, 2.0, 5e-6);
    }

    #[test]
    fn other_dtypes_take_the_plain_operations() {
        let y = crate::tests::unary_of_f64(gelu_tanh);
        assert!((y[0] - 0.345_714).abs() < 1e-5, "{y:?}");
    }
}
