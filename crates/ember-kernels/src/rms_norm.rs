//! RMSNorm (Llama, Qwen3), one pass each way.
//!
//! As tensor operations it is seven passes forward (square, mean, add, sqrt, reciprocal
//! and two products), each allocating; Llama and Qwen3 run it two to four times per
//! block, so in KV-cached decoding, where each call sees one row, the operations'
//! overhead rather than the arithmetic is what costs.

use burn::prelude::*;
use rayon::prelude::*;

use crate::cpu::with_cpu_backend;
use crate::row_norm::{RowNormKernel, row_norm, rows_per_task};

/// `x / √(mean(x²) + ε) · weight` over the last dimension.
///
/// # Shapes
/// - x: `[..., d]`
/// - weight: `[d]`
/// - returns the shape of `x`
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, epsilon: f64) -> Tensor<D> {
    let kernel = RmsNorm {
        epsilon: epsilon as f32,
    };
    let routed = with_cpu_backend!(&x, B => row_norm::<B, _, D>(kernel, &x, &weight));
    match routed.flatten() {
        Some(y) => y,
        None => rms_norm_reference(x, weight, epsilon),
    }
}

/// [`rms_norm`] as plain tensor operations.
pub fn rms_norm_reference<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    let mean_square = x.clone().square().mean_dim(D - 1);
    let inverse_rms = (mean_square + epsilon).sqrt().recip();
    x * inverse_rms * weight.unsqueeze::<D>()
}

/// The arithmetic: a row's statistic is its inverse RMS `r = 1 / √(mean(x²) + ε)`; with
/// `g` the output gradient, `dx = r·g·w − x·r³·mean(g·w·x)` and `dw = Σ_rows g·x·r`.
#[derive(Debug, Clone)]
struct RmsNorm {
    epsilon: f32,
}

impl RowNormKernel for RmsNorm {
    type Stat = f32;

    fn stats(&self, x: &[f32], d: usize) -> Vec<f32> {
        x.par_chunks(d)
            .with_min_len(rows_per_task(d))
            .map(|row| {
                let sum: f32 = row.iter().map(|v| v * v).sum();
                1.0 / (sum / d as f32 + self.epsilon).sqrt()
            })
            .collect()
    }

    fn forward(&self, x: &[f32], w: &[f32], r: &[f32]) -> Vec<f32> {
        let d = w.len();
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .zip(r.par_iter())
            .with_min_len(rows_per_task(d))
            .for_each(|((o, row), &ri)| {
                for ((o, &v), &wi) in o.iter_mut().zip(row).zip(w) {
                    *o = v * ri * wi;
                }
            });
        out
    }

    fn input_grad(&self, xs: &[f32], ws: &[f32], r: &[f32], g: &[f32]) -> Vec<f32> {
        let d = ws.len();
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(d)
            .zip(xs.par_chunks(d).zip(g.par_chunks(d)))
            .zip(r.par_iter())
            .for_each(|((dx, (x, g)), &ri)| {
                let dot: f32 = x.iter().zip(g).zip(ws).map(|((x, g), w)| g * w * x).sum();
                let coef = ri * ri * ri * dot / d as f32;
                for (((o, &xv), &gv), &wv) in dx.iter_mut().zip(x).zip(g).zip(ws) {
                    *o = ri * gv * wv - xv * coef;
                }
            });
        dx
    }

    fn weight_grad(&self, xs: &[f32], d: usize, r: &[f32], g: &[f32]) -> Vec<f32> {
        let mut dw = vec![0.0f32; d];
        for ((x, g), &ri) in xs.chunks(d).zip(g.chunks(d)).zip(r) {
            for ((o, &xv), &gv) in dw.iter_mut().zip(x).zip(g) {
                *o += gv * xv * ri;
            }
        }
        dw
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    /// Forward and both gradients against the plain operations, on rows of odd width.
    #[test]
    fn matches_the_plain_operations_and_their_gradients() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let x =
            Tensor::<3>::random([2, 5, 37], Distribution::Normal(0.0, 2.0), &device).require_grad();
        let w = Tensor::<1>::random([37], Distribution::Normal(1.0, 0.3), &device).require_grad();
        let weights = Tensor::<3>::random([2, 5, 37], Distribution::Default, &device);
        let fused = rms_norm(x.clone(), w.clone(), 1e-6);
        let reference = rms_norm_reference(x.clone(), w.clone(), 1e-6);
        assert_close(fused.clone(), reference.clone(), 1e-5);
        let fused_grads = (fused * weights.clone()).sum().backward();
        let reference_grads = (reference * weights).sum().backward();
        assert_close(
            x.grad(&fused_grads).unwrap(),
            x.grad(&reference_grads).unwrap(),
            1e-5,
        );
        assert_close(
            w.grad(&fused_grads).unwrap(),
            w.grad(&reference_grads).unwrap(),
            1e-5,
        );
        // Plain tensors, and the values of the formula.
        let plain = Device::ndarray();
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 3.0], [0.0, 0.5, -0.25]], &plain);
        let w = Tensor::<1>::from_floats([1.0, 2.0, 0.5], &plain);
        let rms = [
            (14.0f32 / 3.0 + 1e-5).sqrt(),
            (0.3125f32 / 3.0 + 1e-5).sqrt(),
        ];
        let want = TensorData::from([
            [1.0 / rms[0], -4.0 / rms[0], 1.5 / rms[0]],
            [0.0, 1.0 / rms[1], -0.125 / rms[1]],
        ]);
        rms_norm(x, w, 1e-5)
            .into_data()
            .assert_approx_eq::<f32>(&want, burn::tensor::Tolerance::absolute(1e-6));
    }
}
