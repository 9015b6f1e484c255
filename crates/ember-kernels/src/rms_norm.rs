//! RMSNorm (Llama, Qwen3), one pass each way.
//!
//! As tensor operations it is seven passes forward (square, mean, add, sqrt, reciprocal
//! and two products), each allocating; Llama and Qwen3 run it two to four times per
//! block, so in KV-cached decoding, where each call sees one row, the operations'
//! overhead rather than the arithmetic is what costs.

use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::cpu::{CpuBackend, with_cpu_backend};

/// Rows per rayon task: below this many elements a task is not worth its scheduling.
const ROWS_ELEMENTS_PER_TASK: usize = 1 << 14;

/// `x / √(mean(x²) + ε) · weight` over the last dimension.
///
/// # Shapes
/// - x: `[..., d]`
/// - weight: `[d]`
/// - returns the shape of `x`
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, epsilon: f64) -> Tensor<D> {
    let routed = with_cpu_backend!(&x, B => rms_norm_on::<B, D>(&x, &weight, epsilon as f32));
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

/// `1 / √(mean(row²) + ε)` of each row.
fn inverse_rms(x: &[f32], d: usize, epsilon: f32) -> Vec<f32> {
    x.par_chunks(d)
        .with_min_len((ROWS_ELEMENTS_PER_TASK / d.max(1)).max(1))
        .map(|row| {
            let sum: f32 = row.iter().map(|v| v * v).sum();
            1.0 / (sum / d as f32 + epsilon).sqrt()
        })
        .collect()
}

fn forward(x: &[f32], w: &[f32], r: &[f32]) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(r.par_iter())
        .with_min_len((ROWS_ELEMENTS_PER_TASK / d.max(1)).max(1))
        .for_each(|((o, row), &ri)| {
            for ((o, &v), &wi) in o.iter_mut().zip(row).zip(w) {
                *o = v * ri * wi;
            }
        });
    out
}

/// Both operands on backend `B`: tracked (a gradient may be wanted) or both plain.
fn rms_norm_on<B: CpuBackend, const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<1>,
    epsilon: f32,
) -> Option<Tensor<D>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    if let (Some(xt), Some(wt)) = (B::tracked(x), B::tracked(weight)) {
        let shape = B::shape(xt.primitive());
        let d = *shape.last()?;
        let (xs, ws) = (B::values(xt.primitive()), B::values(wt.primitive()));
        let r = inverse_rms(&xs, d, epsilon);
        let out = B::new_tensor(&shape, forward(&xs, &ws, &r));
        let out = match Backward::<B, 2>::prepare::<NoCheckpointing>(
            RmsNormBackward,
            [xt.node(), wt.node()],
        )
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((xt.primitive().clone(), wt.primitive().clone(), r), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return Some(B::from_tracked(out));
    }
    let (xp, wp) = (B::plain(x)?, B::plain(weight)?);
    let shape = B::shape(&xp);
    let d = *shape.last()?;
    let (xs, ws) = (B::values(&xp), B::values(&wp));
    let r = inverse_rms(&xs, d, epsilon);
    Some(B::from_plain(B::new_tensor(&shape, forward(&xs, &ws, &r))))
}

/// The backward node: with `g` the output gradient and `r` a row's inverse RMS,
/// `dx = r·g·w − x·r³·mean(g·w·x)` and `dw = Σ_rows g·x·r`.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: CpuBackend> burn::backend::autodiff::ops::Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, Vec<f32>);

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 2>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let (x, w, r) = ops.state;
        let shape = B::shape(&x);
        let (xs, ws) = (B::values(&x).into_owned(), B::values(&w).into_owned());
        let d = ws.len();
        burn::backend::autodiff::ops::binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                let g = B::values(&grad);
                let mut dx = vec![0.0f32; xs.len()];
                dx.par_chunks_mut(d)
                    .zip(xs.par_chunks(d).zip(g.par_chunks(d)))
                    .zip(r.par_iter())
                    .for_each(|((dx, (x, g)), &ri)| {
                        let dot: f32 = x.iter().zip(g).zip(&ws).map(|((x, g), w)| g * w * x).sum();
                        let coef = ri * ri * ri * dot / d as f32;
                        for (((o, &xv), &gv), &wv) in dx.iter_mut().zip(x).zip(g).zip(&ws) {
                            *o = ri * gv * wv - xv * coef;
                        }
                    });
                B::new_tensor(&shape, dx)
            },
            |grad| {
                let g = B::values(&grad);
                let mut dw = vec![0.0f32; d];
                for ((x, g), &ri) in xs.chunks(d).zip(g.chunks(d)).zip(&r) {
                    for ((o, &xv), &gv) in dw.iter_mut().zip(x).zip(g) {
                        *o += gv * xv * ri;
                    }
                }
                B::new_tensor(&[d], dw)
            },
        );
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
