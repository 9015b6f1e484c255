//! LayerNorm (GPT-2), one pass each way.
//!
//! As tensor operations it is about nine passes forward (mean, subtraction, square,
//! mean, addition, square root, division and the affine map), each allocating, and
//! more backward; GPT-2 runs it twice per block and once at the end.

use burn::prelude::*;
use rayon::prelude::*;

use crate::cpu::with_cpu_backend;
use crate::row_norm::{RowNormKernel, row_norm, rows_per_task};

/// `(x − mean(x)) / √(var(x) + ε) · gamma + beta` over the last dimension, with the
/// biased variance (PyTorch's and Burn's `LayerNorm`).
///
/// # Shapes
/// - x: `[..., d]`
/// - gamma, beta: `[d]`
/// - returns the shape of `x`
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    let kernel = LayerNorm {
        epsilon: epsilon as f32,
    };
    // The kernel scales by gamma; the bias is added as a tensor operation.
    let routed = with_cpu_backend!(&x, B => row_norm::<B, _, D>(kernel, &x, &gamma));
    let scaled = match routed.flatten() {
        Some(y) => y,
        None => return layer_norm_reference(x, gamma, beta, epsilon),
    };
    match beta {
        Some(beta) => scaled + beta.unsqueeze::<D>(),
        None => scaled,
    }
}

/// [`layer_norm`] as plain tensor operations.
pub fn layer_norm_reference<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let normalized = (x - mean) / (var + epsilon).sqrt();
    let scaled = normalized * gamma.unsqueeze::<D>();
    match beta {
        Some(beta) => scaled + beta.unsqueeze::<D>(),
        None => scaled,
    }
}

/// The arithmetic: a row's statistics are its mean and `r = 1 / √(var + ε)`; with `g`
/// the output gradient, `x̂ = (x − mean)·r` and `h = g·gamma`,
/// `dx = r·(h − mean(h) − x̂·mean(h·x̂))` and `dgamma = Σ_rows g·x̂`.
#[derive(Debug, Clone)]
struct LayerNorm {
    epsilon: f32,
}

impl RowNormKernel for LayerNorm {
    type Stat = (f32, f32);

    fn stats(&self, x: &[f32], d: usize) -> Vec<(f32, f32)> {
        x.par_chunks(d)
            .with_min_len(rows_per_task(d))
            .map(|row| {
                let mean = row.iter().sum::<f32>() / d as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                (mean, 1.0 / (var + self.epsilon).sqrt())
            })
            .collect()
    }

    fn forward(&self, x: &[f32], gamma: &[f32], stats: &[(f32, f32)]) -> Vec<f32> {
        let d = gamma.len();
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .zip(stats.par_iter())
            .with_min_len(rows_per_task(d))
            .for_each(|((o, row), &(mean, r))| {
                for ((o, &v), &g) in o.iter_mut().zip(row).zip(gamma) {
                    *o = (v - mean) * r * g;
                }
            });
        out
    }

    fn input_grad(&self, xs: &[f32], gs: &[f32], stats: &[(f32, f32)], g: &[f32]) -> Vec<f32> {
        let d = gs.len();
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(d)
            .zip(xs.par_chunks(d).zip(g.par_chunks(d)))
            .zip(stats.par_iter())
            .with_min_len(rows_per_task(d))
            .for_each(|((dx, (x, g)), &(mean, r))| {
                let (mut sum_h, mut sum_hx) = (0.0f32, 0.0f32);
                for ((&xv, &gv), &gm) in x.iter().zip(g).zip(gs) {
                    let h = gv * gm;
                    sum_h += h;
                    sum_hx += h * (xv - mean) * r;
                }
                let (mean_h, mean_hx) = (sum_h / d as f32, sum_hx / d as f32);
                for (((o, &xv), &gv), &gm) in dx.iter_mut().zip(x).zip(g).zip(gs) {
                    let xhat = (xv - mean) * r;
                    *o = r * (gv * gm - mean_h - xhat * mean_hx);
                }
            });
        dx
    }

    fn weight_grad(&self, xs: &[f32], d: usize, stats: &[(f32, f32)], g: &[f32]) -> Vec<f32> {
        let mut dgamma = vec![0.0f32; d];
        for ((x, g), &(mean, r)) in xs.chunks(d).zip(g.chunks(d)).zip(stats) {
            for ((o, &xv), &gv) in dgamma.iter_mut().zip(x).zip(g) {
                *o += gv * (xv - mean) * r;
            }
        }
        dgamma
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    /// Forward and the three gradients against the plain operations, on rows of odd
    /// width and away from zero mean.
    #[test]
    fn matches_the_plain_operations_and_their_gradients() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let x =
            Tensor::<3>::random([2, 5, 37], Distribution::Normal(0.7, 2.0), &device).require_grad();
        let gamma =
            Tensor::<1>::random([37], Distribution::Normal(1.0, 0.3), &device).require_grad();
        let beta =
            Tensor::<1>::random([37], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let weights = Tensor::<3>::random([2, 5, 37], Distribution::Default, &device);
        let fused = layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5);
        let reference = layer_norm_reference(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5);
        assert_close(fused.clone(), reference.clone(), 1e-5);
        let fused_grads = (fused * weights.clone()).sum().backward();
        let reference_grads = (reference * weights).sum().backward();
        assert_close(
            x.grad(&fused_grads).unwrap(),
            x.grad(&reference_grads).unwrap(),
            1e-5,
        );
        for (p, name) in [(&gamma, "gamma"), (&beta, "beta")] {
            assert_close(
                p.grad(&fused_grads).expect(name),
                p.grad(&reference_grads).expect(name),
                1e-5,
            );
        }
        // Plain tensors, and the values of the formula: [1, 2, 3] has mean 2 and
        // variance 2/3.
        let plain = Device::ndarray();
        let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &plain);
        let gamma = Tensor::<1>::from_floats([1.0, 2.0, 0.5], &plain);
        let beta = Tensor::<1>::from_floats([0.0, 1.0, -1.0], &plain);
        let s = 1.0 / (2.0f32 / 3.0 + 1e-5).sqrt();
        let want = TensorData::from([[-s, 1.0, 0.5 * s - 1.0]]);
        layer_norm(x, gamma, Some(beta), 1e-5)
            .into_data()
            .assert_approx_eq::<f32>(&want, burn::tensor::Tolerance::absolute(1e-6));
    }
}
