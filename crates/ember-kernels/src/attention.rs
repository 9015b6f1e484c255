//! Causal self-attention in one pass each way: `softmax(QKᵀ/√d + causal mask)`, dropout
//! on the weights, `· V`.
//!
//! The plain formulation (`ember_attention::explicit_attention`) is a dozen tensor
//! operations over `[batch, heads, seq, seq]`: a batched product that first copies its
//! transposed operand, the scaling, a mask expanded to every head, a softmax of several
//! passes, the dropout mask, another product, each with its own allocation, most on one
//! core, and as many again backward. Here each (batch, head) is one task on one core:
//! two products through `gemm` reading the heads through their strides, and the masked
//! softmax and the dropout in one pass over the head's `seq × seq` block while it is in
//! cache. The backward pass keeps the softmax weights of the forward one and draws the
//! dropout mask again: each element of it is a function of (seed, index), the same mask
//! [`dropout`](fn@crate::dropout) draws for the weights of the plain formulation, so both
//! formulations drop the same weights and a run keeps its losses.
//!
//! Under [`autocast`](crate::autocast) the four products of each pass take operands
//! rounded to the scope's precision with f32 sums, as every other product of a
//! mixed-precision step does (PyTorch's bf16 autocast computes
//! `scaled_dot_product_attention` on bf16 queries, keys and values, its softmax in f32
//! and the weights rounded to bf16 for their product with the values); the softmax, its
//! backward and the dropout stay f32. At the book's context of 256 the products (whole
//! `seq × seq` blocks, the masked half included) are about 4% of gpt2-small's FLOPs; at
//! GPT-2's 1024, 13%.

use std::borrow::Cow;
use std::sync::Arc;

use burn::backend::tensor::FloatTensor;
use burn::nn::Dropout;
use burn::prelude::*;
use rayon::prelude::*;

use crate::autocast::current_precision;
use crate::cpu::{CpuBackend, MatrixView, Strided, with_cpu_backend};
use crate::dropout::{MaskStream, RowMask, next_seed};
use crate::dtype::Dtype;
use crate::exp::exp;
use crate::matmul::product_values_on_this_thread;
use crate::simd::widest_fn;

/// Square causal attention (every query sees the keys up to its own position) with
/// `dropout` on the attention weights when it is active (training, on an autodiff
/// device, probability above 0: the rules of Burn's `Dropout`).
///
/// Returns `None` where the kernel does not run: tensors of another backend, tracked and
/// plain tensors mixed, or shapes that differ. The caller then computes the plain
/// formulation.
///
/// # Shapes
/// - q, k, v: `[batch, heads, seq, head_dim]` (keys and values already repeated for
///   grouped-query attention)
/// - returns `[batch, heads, seq, head_dim]`
pub fn causal_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    dropout: Option<&Dropout>,
) -> Option<Tensor<4>> {
    if q.dims() != k.dims() || q.dims() != v.dims() {
        return None;
    }
    let device = q.device();
    let dropout =
        dropout.filter(|d| d.prob > 0.0 && d.training.is_enabled() && device.is_autodiff());
    with_cpu_backend!(q, B => attention_on::<B>(q, k, v, dropout, &device)).flatten()
}

fn attention_on<B: CpuBackend>(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    dropout: Option<&Dropout>,
    device: &Device,
) -> Option<Tensor<4>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let shape = q.dims().to_vec();
    // Read on the calling thread: the heads' tasks run on rayon's.
    let precision = current_precision();
    if let (Some(q), Some(k), Some(v)) = (B::tracked(q), B::tracked(k), B::tracked(v)) {
        // Drawn where the plain formulation draws its dropout seed.
        let mask = dropout.map(|d| MaskStream::new(1.0 - d.prob, next_seed(device)));
        let (qp, kp, vp) = (q.primitive(), k.primitive(), v.primitive());
        let heads = [B::strided(qp), B::strided(kp), B::strided(vp)];
        let node = AttentionBackward { mask, precision };
        let out = match Backward::<B, 3>::prepare::<NoCheckpointing>(
            node,
            [q.node(), k.node(), v.node()],
        )
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, weights) = forward(&heads, mask, precision);
                let state = (qp.clone(), kp.clone(), vp.clone(), Arc::new(weights));
                prep.finish(state, B::new_tensor(&shape, out))
            }
            OpsKind::UnTracked(prep) => {
                let out = forward_only(&heads, mask, precision);
                prep.finish(B::new_tensor(&shape, out))
            }
        };
        return Some(B::from_tracked(out));
    }
    let (q, k, v) = (B::plain(q)?, B::plain(k)?, B::plain(v)?);
    let heads = [B::strided(&q), B::strided(&k), B::strided(&v)];
    let out = forward_only(&heads, None, precision);
    Some(B::from_plain(B::new_tensor(&shape, out)))
}

/// `[batch, heads, seq, head_dim]` → (heads, seq, head_dim).
fn sizes(q: &Strided<'_>) -> (usize, usize, usize) {
    let [batch, heads, seq, head_dim] = q.dims[..] else {
        panic!(
            "attention takes [batch, heads, seq, head_dim], got {:?}",
            q.dims
        )
    };
    (batch * heads, seq, head_dim)
}

/// The output (`[.., seq, head_dim]` per head) and the softmax weights (`[.., seq, seq]`
/// per head, before dropout), which the backward pass needs.
fn forward(
    heads: &[Strided<'_>; 3],
    mask: Option<MaskStream>,
    precision: Dtype,
) -> (Vec<f32>, Vec<f32>) {
    let (count, seq, head_dim) = sizes(&heads[0]);
    let mut out = vec![0.0f32; count * seq * head_dim];
    let mut weights = vec![0.0f32; count * seq * seq];
    out.par_chunks_mut((seq * head_dim).max(1))
        .zip(weights.par_chunks_mut((seq * seq).max(1)))
        .enumerate()
        .for_each(|(head, (out, weights))| attend(heads, head, mask, precision, weights, out));
    (out, weights)
}

/// The output alone, with one `seq × seq` block per thread rather than one per head
/// (inference: nothing is kept for a backward pass).
fn forward_only(heads: &[Strided<'_>; 3], mask: Option<MaskStream>, precision: Dtype) -> Vec<f32> {
    let (count, seq, head_dim) = sizes(&heads[0]);
    let mut out = vec![0.0f32; count * seq * head_dim];
    out.par_chunks_mut((seq * head_dim).max(1))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; seq * seq],
            |weights, (head, out)| attend(heads, head, mask, precision, weights, out),
        );
    out
}

/// Head `head`: its softmax weights into `weights` (`seq × seq`), its output into `out`;
/// the products in `precision`.
fn attend(
    [q, k, v]: &[Strided<'_>; 3],
    head: usize,
    mask: Option<MaskStream>,
    precision: Dtype,
    weights: &mut [f32],
    out: &mut [f32],
) {
    let (_, seq, head_dim) = sizes(q);
    if seq == 0 {
        return;
    }
    let product =
        |a: MatrixView<'_>, b: MatrixView<'_>| product_values_on_this_thread(a, b, precision);
    let scores = product(q.matrix_at(head), k.matrix_at(head).t());
    causal_softmax(&scores, weights, seq, (head_dim as f32).sqrt());
    let dropped = dropped(weights, head_mask(q, mask, head), seq);
    let context = product(square(&dropped, seq), v.matrix_at(head));
    out.copy_from_slice(&context);
}

widest_fn! {
    /// Row `i` of `weights`: the softmax of `scores[i, ..=i] / scale`, zero past `i`
    /// (the causal mask: exp(-inf)).
    fn causal_softmax(scores: &[f32], weights: &mut [f32], seq: usize, scale: f32) {
        for (i, (row, w)) in scores
            .chunks_exact(seq)
            .zip(weights.chunks_exact_mut(seq))
            .enumerate()
        {
            let (visible, hidden) = w.split_at_mut(i + 1);
            let mut max = f32::NEG_INFINITY;
            for (w, &s) in visible.iter_mut().zip(row) {
                *w = s / scale;
                max = max.max(*w);
            }
            for w in visible.iter_mut() {
                *w = exp(*w - max);
            }
            let sum: f32 = visible.iter().sum();
            for w in visible.iter_mut() {
                *w /= sum;
            }
            hidden.fill(0.0);
        }
    }
}

/// The dropout mask of one head's `seq × seq` weights: keyed by the head's batch row,
/// then by (head in the row, query, key), so that it depends neither on the sequence
/// length (padding) nor on the batch's other rows (see `dropout::with_first_row`).
#[derive(Clone, Copy)]
struct HeadMask {
    row: RowMask,
    head: u64,
}

impl HeadMask {
    #[inline]
    fn factor(&self, query: usize, key: usize) -> f32 {
        self.row
            .factor(self.head << 42 | (query as u64) << 21 | key as u64)
    }
}

/// Head `head`'s mask (of the `batch × heads` heads of `q`).
fn head_mask(q: &Strided<'_>, mask: Option<MaskStream>, head: usize) -> Option<HeadMask> {
    let heads = q.dims[1].max(1);
    mask.map(|mask| HeadMask {
        row: mask.row(head / heads),
        head: (head % heads) as u64,
    })
}

/// A head's weights after dropout (the weights themselves without it).
fn dropped(weights: &[f32], mask: Option<HeadMask>, seq: usize) -> Cow<'_, [f32]> {
    match mask {
        Some(mask) => {
            let mut dropped = vec![0.0f32; weights.len()];
            for (i, (out, row)) in dropped
                .chunks_exact_mut(seq)
                .zip(weights.chunks_exact(seq))
                .enumerate()
            {
                // Past the diagonal the weights are 0: nothing to drop.
                for (j, (out, &w)) in out.iter_mut().zip(row).take(i + 1).enumerate() {
                    *out = w * mask.factor(i, j);
                }
            }
            Cow::Owned(dropped)
        }
        None => Cow::Borrowed(weights),
    }
}

/// A row-major `seq × seq` block as a matrix.
fn square(values: &[f32], seq: usize) -> MatrixView<'_> {
    debug_assert_eq!(values.len(), seq * seq);
    MatrixView::new(values.as_ptr(), (seq, seq), seq as isize, 1)
}

/// The backward node of [`causal_attention`]: the three inputs, the softmax weights,
/// the dropout mask's stream and the precision of the forward pass's products.
#[derive(Debug)]
struct AttentionBackward {
    mask: Option<MaskStream>,
    precision: Dtype,
}

impl<B: CpuBackend> burn::backend::autodiff::ops::Backward<B, 3> for AttentionBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        Arc<Vec<f32>>,
    );

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 3>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, weights) = ops.state;
        let heads = [B::strided(&q), B::strided(&k), B::strided(&v)];
        let shape = B::shape(&q);
        let gradients = backward(
            &heads,
            &B::strided(&grad),
            &weights,
            self.mask,
            self.precision,
        );
        for (parent, values) in ops.parents.into_iter().zip(gradients) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, B::new_tensor(&shape, values));
            }
        }
    }
}

/// The gradients of q, k and v from the output's gradient `grad`.
///
/// With `Pd = dropout(P)`: `dV = Pdᵀ·dO`, `dPd = dO·Vᵀ`, `dP = dPd ⊙ mask`,
/// `dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d`, `dQ = dS·K`, `dK = dSᵀ·Q`; the four products
/// in `precision`.
fn backward(
    heads: &[Strided<'_>; 3],
    grad: &Strided<'_>,
    weights: &[f32],
    mask: Option<MaskStream>,
    precision: Dtype,
) -> [Vec<f32>; 3] {
    let [q, k, v] = heads;
    let (count, seq, head_dim) = sizes(q);
    let per_head = (seq * head_dim).max(1);
    let mut gradients = [(); 3].map(|_| vec![0.0f32; count * seq * head_dim]);
    let [dq, dk, dv] = &mut gradients;
    let scale = (head_dim as f32).sqrt();
    let product =
        |a: MatrixView<'_>, b: MatrixView<'_>| product_values_on_this_thread(a, b, precision);
    dq.par_chunks_mut(per_head)
        .zip(dk.par_chunks_mut(per_head))
        .zip(dv.par_chunks_mut(per_head))
        .enumerate()
        .for_each(|(head, ((dq, dk), dv))| {
            if seq == 0 {
                return;
            }
            let p = &weights[head * seq * seq..(head + 1) * seq * seq];
            let mask = head_mask(q, mask, head);
            let g = grad.matrix_at(head);
            dv.copy_from_slice(&product(square(&dropped(p, mask, seq), seq).t(), g));
            let mut ds = product(g, v.matrix_at(head).t());
            for (i, (ds, p)) in ds
                .chunks_exact_mut(seq)
                .zip(p.chunks_exact(seq))
                .enumerate()
            {
                if let Some(mask) = mask {
                    for (j, d) in ds[..=i].iter_mut().enumerate() {
                        *d *= mask.factor(i, j);
                    }
                }
                let (visible, hidden) = ds.split_at_mut(i + 1);
                let dot: f32 = visible.iter().zip(p).map(|(d, p)| d * p).sum();
                for (d, &p) in visible.iter_mut().zip(p) {
                    *d = p * (*d - dot) / scale;
                }
                hidden.fill(0.0);
            }
            dq.copy_from_slice(&product(square(&ds, seq), k.matrix_at(head)));
            dk.copy_from_slice(&product(square(&ds, seq).t(), q.matrix_at(head)));
        });
    gradients
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use burn::nn::DropoutConfig;
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    use super::*;
    use crate::tests::assert_close;

    /// The plain formulation (`ember_attention::explicit_attention`'s operations).
    fn plain(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, dropout: Option<&Dropout>) -> Tensor<4> {
        let [batch, heads, seq, head_dim] = q.dims();
        let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        let mask = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &scores.device())
            .reshape([1, 1, seq, seq])
            .expand([batch, heads, seq, seq]);
        let mut weights = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        if let Some(dropout) = dropout {
            weights = crate::dropout(dropout, weights);
        }
        weights.matmul(v)
    }

    /// Values and the gradients of q, k and v against the plain formulation, with and
    /// without dropout (the same seed draws the same mask), for heads read through the
    /// strides of a fused projection (`[batch, seq, heads, head_dim]` swapped).
    #[test]
    fn matches_the_plain_formulation_with_and_without_dropout() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let (batch, heads, seq, head_dim) = (2, 3, 17, 8);
        let projected = |seed| {
            device.seed(seed);
            Tensor::<4>::random(
                [batch, seq, heads, head_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad()
        };
        let (q, k, v) = (projected(1), projected(2), projected(3));
        let upstream = Tensor::<4>::random(
            [batch, heads, seq, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let heads_of = |x: &Tensor<4>| x.clone().swap_dims(1, 2);
        for prob in [0.0, 0.3] {
            let layer = DropoutConfig::new(prob).init();
            device.seed(9);
            let fused = causal_attention(&heads_of(&q), &heads_of(&k), &heads_of(&v), Some(&layer))
                .expect("the kernel runs on ndarray");
            device.seed(9);
            let reference = plain(heads_of(&q), heads_of(&k), heads_of(&v), Some(&layer));
            assert_close(fused.clone(), reference.clone(), 1e-5);
            let gf = (fused * upstream.clone()).sum().backward();
            let gr = (reference * upstream.clone()).sum().backward();
            for x in [&q, &k, &v] {
                assert_close(x.grad(&gf).unwrap(), x.grad(&gr).unwrap(), 1e-5);
            }
        }

        // Plain tensors (inference): no dropout, the same values.
        let (q, k, v) = (q.inner(), k.inner(), v.inner());
        let layer = DropoutConfig::new(0.3).init();
        let fused =
            causal_attention(&heads_of(&q), &heads_of(&k), &heads_of(&v), Some(&layer)).unwrap();
        assert_close(
            fused,
            plain(heads_of(&q), heads_of(&k), heads_of(&v), None),
            1e-5,
        );
        // Shapes the kernel does not take are left to the caller.
        let shorter = heads_of(&k).narrow(2, 0, seq - 1);
        assert!(causal_attention(&heads_of(&q), &shorter, &shorter, None).is_none());
    }

    /// `x` with every value rounded to bf16.
    fn bf16(x: Tensor<4>) -> Tensor<4> {
        let data = x.to_data();
        let values: Vec<f32> = data.iter::<f32>().map(|v| Dtype::Bf16.round(v)).collect();
        Tensor::from_data(TensorData::new(values, data.shape().clone()), &x.device())
    }

    /// Under bf16 autocast the four products of each pass take bf16-rounded operands
    /// with f32 sums: forward and gradients against those products written out with
    /// rounded operands (the softmax and its backward in f32), and away from the f32
    /// kernel's by more than the sums' order could explain.
    #[test]
    fn products_take_bf16_operands_under_bf16_autocast() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let (batch, heads, seq, head_dim) = (2, 2, 13, 8);
        let random = |seed| {
            device.seed(seed);
            Tensor::<4>::random(
                [batch, heads, seq, head_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        };
        let (q, k, v) = (
            random(1).require_grad(),
            random(2).require_grad(),
            random(3).require_grad(),
        );
        let upstream = random(4);
        let run = |precision| {
            let out = {
                let _scope = crate::autocast(precision);
                causal_attention(&q, &k, &v, None).expect("the kernel runs on ndarray")
            };
            // Outside the scope: the backward pass keeps the forward pass's precision.
            let grads = (out.clone() * upstream.clone()).sum().backward();
            let [dq, dk, dv] = [&q, &k, &v].map(|x| x.grad(&grads).unwrap());
            (out.inner(), dq, dk, dv)
        };
        let (out, dq, dk, dv) = run(Dtype::Bf16);
        let (out32, dq32, dk32, dv32) = run(Dtype::F32);

        // The same arithmetic written out on plain tensors.
        let (q, k, v, g) = (q.inner(), k.inner(), v.inner(), upstream.inner());
        let scale = (head_dim as f64).sqrt();
        let mask = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &q.device())
            .reshape([1, 1, seq, seq])
            .expand([batch, heads, seq, seq]);
        let scores = bf16(q.clone()).matmul(bf16(k.clone()).swap_dims(2, 3)) / scale;
        let p = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        let want_out = bf16(p.clone()).matmul(bf16(v.clone()));
        let want_dv = bf16(p.clone()).swap_dims(2, 3).matmul(bf16(g.clone()));
        let dp = bf16(g).matmul(bf16(v).swap_dims(2, 3));
        let dot = (p.clone() * dp.clone()).sum_dim(3);
        let ds = p * (dp - dot) / scale;
        let want_dq = bf16(ds.clone()).matmul(bf16(k));
        let want_dk = bf16(ds).swap_dims(2, 3).matmul(bf16(q));
        // The kernel's softmax weights and `dS` may differ from these by an ulp of f32
        // (another exp, another order of sums), which now and then lands on the other
        // side of a bf16 rounding: a few elements may be off by one bf16 ulp of a term,
        // the rest agree to f32's precision. The f32 kernel is off everywhere.
        let gaps = |a: Tensor<4>, b: Tensor<4>| -> (f32, f32) {
            let gap = (a - b).abs();
            (gap.clone().mean().into_scalar(), gap.max().into_scalar())
        };
        for (got, want, full) in [
            (out, want_out, out32),
            (dq, want_dq, dq32),
            (dk, want_dk, dk32),
            (dv, want_dv, dv32),
        ] {
            let (mean, max) = gaps(got.clone(), want);
            assert!(
                mean < 2e-5 && max < 2e-3,
                "from the rounded products: {mean}, {max}"
            );
            let (mean_f32, max_f32) = gaps(got, full);
            assert!(
                mean_f32 > 10.0 * mean && (1e-3..5e-2).contains(&max_f32),
                "from the f32 kernel: {mean_f32}, {max_f32}"
            );
        }
    }
}
