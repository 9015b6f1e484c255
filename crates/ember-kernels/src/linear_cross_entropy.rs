//! The output head and the cross-entropy in one: the loss of `hidden · weight` without
//! ever holding the whole logits.
//!
//! A language model's loss is the last product of its forward pass, `[rows, d] · [d,
//! vocab]`, followed by a softmax over the vocabulary. Computed apart, the logits
//! (`rows × 50,257` f32s: 103 MB at the book's batch of 512 positions, 1.6 GB at 8 × 1024)
//! are written by the product, read by the loss, kept until the backward pass, and met
//! there by their gradient, of the same size. Here the rows go through in blocks of at
//! most [`LOGITS_BLOCK_ELEMENTS`] logits: each block's product is taken, each row's
//! log-sum-exp and loss found, and, when gradients are wanted, the block is overwritten
//! by its gradient `(softmax − onehot) / counted` at once (the exponentials of the
//! log-sum-exp pass are kept, so each logit is exponentiated once rather than once each
//! way) and its share of both gradients taken by two more products: `dH = G · Wᵀ` for the
//! block's rows, `dW += Hᵀ · G` for the whole weight. The backward pass then only scales
//! the two gradients by the loss's own gradient.
//!
//! The cost against separate passes: the gradients are computed in the forward pass,
//! where an evaluation would not need them (an untracked call computes the loss alone),
//! and the weight's gradient, `d × vocab`, lives from the forward pass to the backward
//! one instead of the logits; with more than one block, the weight's gradient is read
//! and written once per block and the weight read again. Products take the precision of
//! the [`autocast`](crate::autocast()) scope, as [`crate::matmul`] and its backward do.

use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::IGNORE_INDEX;
use crate::autocast::current_precision;
use crate::cpu::{CpuBackend, MatrixView, with_cpu_backend};
use crate::cross_entropy::{LANES, host_targets, max_of, sum_exp};
use crate::dtype::Dtype;
use crate::exp::exp;
use crate::matmul::product_values;
use crate::simd::widest_fn;

/// The most logits a block holds: 32M f32s, 128 MiB (667 rows of GPT-2's vocabulary).
/// Fewer blocks mean fewer passes over the weight and its gradient; this many keeps the
/// logits of a long-context batch (1.6 GB at 8 × 1024 positions) out of memory while the
/// book's batches (512 and fewer positions) still take one block.
pub const LOGITS_BLOCK_ELEMENTS: usize = 1 << 25;

/// Mean cross-entropy of the logits `hidden · weight` against `targets`, over the targets
/// that are not [`IGNORE_INDEX`], as `cross_entropy(matmul(hidden, weight), targets)`
/// computes it, without holding the logits (on a CPU backend the kernels know; elsewhere
/// it is that composition).
///
/// # Shapes
/// - hidden: `[rows, d]`
/// - weight: `[d, vocab]` (a [`burn::nn::Linear`]'s weight, or a tied embedding's
///   `[vocab, d]` matrix transposed)
/// - targets: `[rows]`
/// - returns `[1]`
///
/// # Panics
/// If a target is neither [`IGNORE_INDEX`] nor a class in `0..vocab`, or the shapes
/// disagree.
pub fn linear_cross_entropy(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
) -> Tensor<1> {
    with_cpu_backend!(&hidden, B => fused_on::<B>(&hidden, &weight, &targets, LOGITS_BLOCK_ELEMENTS))
        .flatten()
        .unwrap_or_else(|| crate::cross_entropy(crate::matmul(hidden, weight), targets))
}

/// Both tensors on backend `B`: tracked (either may need a gradient) or both plain.
fn fused_on<B: CpuBackend>(
    hidden: &Tensor<2>,
    weight: &Tensor<2>,
    targets: &Tensor<1, Int>,
    block_elements: usize,
) -> Option<Tensor<1>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let precision = current_precision();
    let targets = host_targets(targets.clone());
    if let (Some(h), Some(w)) = (B::tracked(hidden), B::tracked(weight)) {
        let (h_tracked, w_tracked) = (h.is_tracked(), w.is_tracked());
        let prepared =
            Backward::<B, 2>::prepare::<NoCheckpointing>(HeadLossBackward, [h.node(), w.node()])
                .compute_bound()
                .stateful();
        let (h_values, w_values) = (h.primitive(), w.primitive());
        let head = |wanted: Wanted| {
            HeadLoss::compute(
                B::matrix(h_values),
                B::matrix(w_values),
                &targets,
                precision,
                wanted,
                block_elements,
            )
        };
        let out = match prepared {
            OpsKind::Tracked(prep) => {
                let head = head(Wanted {
                    hidden: h_tracked,
                    weight: w_tracked,
                });
                let [rows, d] = [h_values, w_values].map(|t| B::shape(t)[0]);
                let vocab = B::shape(w_values)[1];
                let state = (
                    head.hidden_grad.map(|g| B::new_tensor(&[rows, d], g)),
                    head.weight_grad.map(|g| B::new_tensor(&[d, vocab], g)),
                );
                prep.finish(state, B::new_tensor(&[1], vec![head.loss]))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::new_tensor(&[1], vec![head(Wanted::NONE).loss]))
            }
        };
        return Some(B::from_tracked(out));
    }
    let (h, w) = (B::plain(hidden)?, B::plain(weight)?);
    let head = HeadLoss::compute(
        B::matrix(&h),
        B::matrix(&w),
        &targets,
        precision,
        Wanted::NONE,
        block_elements,
    );
    Some(B::from_plain(B::new_tensor(&[1], vec![head.loss])))
}

/// Which gradients the forward pass computes.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    hidden: bool,
    weight: bool,
}

impl Wanted {
    const NONE: Self = Self {
        hidden: false,
        weight: false,
    };
}

/// The mean loss and, where wanted, its gradients with respect to the hidden states
/// (`[rows, d]`) and the weight (`[d, vocab]`), row-major.
struct HeadLoss {
    loss: f32,
    hidden_grad: Option<Vec<f32>>,
    weight_grad: Option<Vec<f32>>,
}

impl HeadLoss {
    fn compute(
        hidden: MatrixView<'_>,
        weight: MatrixView<'_>,
        targets: &[i64],
        precision: Dtype,
        wanted: Wanted,
        block_elements: usize,
    ) -> Self {
        let ((rows, d), (d_weight, vocab)) = (hidden.dims, weight.dims);
        assert_eq!(
            d, d_weight,
            "head of [{d_weight}, {vocab}] given hidden states [{rows}, {d}]"
        );
        assert_eq!(
            targets.len(),
            rows,
            "logits rows and targets differ in number"
        );
        for &target in targets {
            assert!(
                target == IGNORE_INDEX || (0..vocab as i64).contains(&target),
                "target {target} is not a class in 0..{vocab}"
            );
        }
        if vocab == 0 {
            // Every target is ignored (checked above): no loss, no gradient.
            return Self {
                loss: 0.0,
                hidden_grad: wanted.hidden.then(|| vec![0.0; rows * d]),
                weight_grad: wanted.weight.then(Vec::new),
            };
        }
        let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
        let scale = if counted == 0 {
            0.0
        } else {
            1.0 / counted as f32
        };
        let gradients = wanted.hidden || wanted.weight;
        let mut row_losses = Vec::with_capacity(rows);
        let mut hidden_grad = wanted.hidden.then(|| Vec::with_capacity(rows * d));
        let mut weight_grad: Option<Vec<f32>> = None;
        let block_rows = (block_elements / vocab).max(1);
        for start in (0..rows).step_by(block_rows) {
            let len = block_rows.min(rows - start);
            let block_hidden = hidden.rows(start, len);
            let mut logits = product_values(block_hidden, weight, precision);
            let block_targets = &targets[start..start + len];
            let mut block_losses = Vec::with_capacity(len);
            logits
                .par_chunks_mut(vocab)
                .zip(block_targets.par_iter())
                .map(|(row, &target)| row_loss(row, target, scale, gradients))
                .collect_into_vec(&mut block_losses);
            row_losses.extend(block_losses);
            if !gradients {
                continue;
            }
            let block_grad = MatrixView::new(logits.as_ptr(), (len, vocab), vocab as isize, 1);
            if let Some(hidden_grad) = &mut hidden_grad {
                hidden_grad.extend(product_values(block_grad, weight.t(), precision));
            }
            if wanted.weight {
                let product = product_values(block_hidden.t(), block_grad, precision);
                match &mut weight_grad {
                    None => weight_grad = Some(product),
                    Some(sum) => sum
                        .par_iter_mut()
                        .zip(product.par_iter())
                        .for_each(|(s, p)| *s += p),
                }
            }
        }
        // Summed in row order, in f64, as `cross_entropy` sums.
        let loss_sum: f64 = row_losses.iter().sum();
        Self {
            loss: if counted == 0 {
                0.0
            } else {
                (loss_sum / counted as f64) as f32
            },
            hidden_grad,
            weight_grad: weight_grad.or_else(|| wanted.weight.then(|| vec![0.0; d * vocab])),
        }
    }
}

widest_fn! {
    /// The loss of one row of logits (0 for an ignored target) as `cross_entropy` computes
    /// it; when `gradient`, the row is overwritten by its gradient `scale · (softmax −
    /// onehot)` (zeros for an ignored target).
    fn row_loss(row: &mut [f32], target: i64, scale: f32, gradient: bool) -> f64 {
        if target == IGNORE_INDEX {
            if gradient {
                row.fill(0.0);
            }
            return 0.0;
        }
        let target = target as usize; // checked before any row
        let picked = row[target];
        let max = max_of(row);
        let sum = if gradient {
            exp_in_place(row, max)
        } else {
            sum_exp(row, max)
        };
        let log_sum_exp = max + sum.ln() as f32;
        if gradient {
            let factor = (f64::from(scale) / sum) as f32;
            for x in row.iter_mut() {
                *x *= factor;
            }
            row[target] -= scale;
        }
        f64::from(log_sum_exp) - f64::from(picked)
    }
}

/// `xs[i] = exp(xs[i] − shift)`, returning their sum, added in the order of
/// [`sum_exp`] (so that the loss is the one `cross_entropy` computes).
#[inline(always)]
fn exp_in_place(xs: &mut [f32], shift: f32) -> f64 {
    let mut total = 0.0f64;
    for block in xs.chunks_mut(1024) {
        let mut lanes = [0.0f32; LANES];
        let mut chunks = block.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (lane, x) in lanes.iter_mut().zip(chunk) {
                *x = exp(*x - shift);
                *lane += *x;
            }
        }
        for x in chunks.into_remainder() {
            *x = exp(*x - shift);
            total += f64::from(*x);
        }
        for lane in lanes {
            total += f64::from(lane);
        }
    }
    total
}

/// The backward node: the gradients of the loss computed in the forward pass, which the
/// loss's own gradient scales.
#[derive(Debug)]
struct HeadLossBackward;

impl<B: CpuBackend> burn::backend::autodiff::ops::Backward<B, 2> for HeadLossBackward {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 2>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let (hidden_grad, weight_grad) = ops.state;
        burn::backend::autodiff::ops::binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| scaled::<B>(hidden_grad.expect("computed for hidden"), &grad),
            |grad| scaled::<B>(weight_grad.expect("computed for weight"), &grad),
        );
    }
}

/// `gradient · upstream`, the loss's gradient being the scalar `upstream` (1 for a
/// plain `loss.backward()`, when nothing is computed).
fn scaled<B: CpuBackend>(gradient: FloatTensor<B>, upstream: &FloatTensor<B>) -> FloatTensor<B> {
    let factor = *B::values(upstream).first().expect("a scalar loss gradient");
    if factor == 1.0 {
        return gradient;
    }
    let shape = B::shape(&gradient);
    let mut values = B::into_values(gradient);
    values.par_iter_mut().for_each(|v| *v *= factor);
    B::new_tensor(&shape, values)
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    fn targets(values: &[i64], device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    /// Equal losses, and equal gradients of each of `inputs`.
    fn assert_same_loss_and_gradients(got: Tensor<1>, want: Tensor<1>, inputs: [&Tensor<2>; 2]) {
        assert_close(got.clone(), want.clone(), 1e-6);
        let (got, want) = (got.backward(), want.backward());
        for input in inputs {
            assert_close(input.grad(&got).unwrap(), input.grad(&want).unwrap(), 1e-6);
        }
    }

    /// The fused loss through `fused_on` with blocks of `block_rows` rows.
    fn fused(
        hidden: Tensor<2>,
        weight: Tensor<2>,
        targets: Tensor<1, Int>,
        block_rows: usize,
    ) -> Tensor<1> {
        let vocab = weight.dims()[1];
        with_cpu_backend!(&hidden, B => fused_on::<B>(&hidden, &weight, &targets, block_rows * vocab))
            .flatten()
            .expect("a CPU backend")
    }

    /// Loss and both gradients against the product followed by the cross-entropy, with
    /// ignored rows, in one block and in blocks that do not divide the rows, for a
    /// weight stored `[d, vocab]` and one read through a transpose (a tied head), and
    /// for a loss scaled before `backward` (gradient accumulation).
    #[test]
    fn loss_and_gradients_match_the_product_then_the_loss() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let hidden = Tensor::<2>::random([13, 24], Distribution::Normal(0.0, 1.0), &device);
        let head = Tensor::<2>::random([24, 300], Distribution::Normal(0.0, 0.3), &device);
        let tied = Tensor::<2>::random([300, 24], Distribution::Normal(0.0, 0.3), &device);
        let labels = [
            0,
            299,
            IGNORE_INDEX,
            17,
            150,
            IGNORE_INDEX,
            3,
            3,
            298,
            1,
            0,
            42,
            7,
        ];
        for weight in [head, tied.transpose()] {
            for block_rows in [13, 5, 1] {
                let (h, w) = (hidden.clone().require_grad(), weight.clone().require_grad());
                let got = fused(h.clone(), w.clone(), targets(&labels, &device), block_rows);
                let want = crate::cross_entropy_reference(
                    h.clone().matmul(w.clone()),
                    targets(&labels, &device),
                );
                assert_same_loss_and_gradients(got * 0.25, want * 0.25, [&h, &w]);
            }
        }
    }

    /// The loss equals `cross_entropy` of the product to the last bit (same logits, same
    /// sums), tracked or not; only the tracked operand gets a gradient; no counted
    /// target gives 0 and zero gradients.
    #[test]
    fn loss_is_cross_entropys_and_untracked_operands_get_no_gradient() {
        let _rng = crate::tests::device_rng();
        for device in [Device::ndarray(), Device::ndarray().autodiff()] {
            let hidden = Tensor::<2>::random([6, 8], Distribution::Normal(0.0, 1.0), &device);
            let weight = Tensor::<2>::random([8, 40], Distribution::Normal(0.0, 1.0), &device);
            let labels = targets(&[1, 39, IGNORE_INDEX, 0, 5, 5], &device);
            let fused: f32 =
                linear_cross_entropy(hidden.clone(), weight.clone(), labels.clone()).into_scalar();
            let separate: f32 =
                crate::cross_entropy(crate::matmul(hidden.clone(), weight.clone()), labels)
                    .into_scalar();
            assert_eq!(fused, separate);
        }
        let device = Device::ndarray().autodiff();
        let hidden = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<2>::random([8, 40], Distribution::Normal(0.0, 1.0), &device);
        let w = weight.require_grad();
        let loss = linear_cross_entropy(hidden.clone(), w.clone(), targets(&[1, 2, 3, 4], &device));
        let grads = loss.backward();
        assert!(hidden.grad(&grads).is_none());
        let want = crate::cross_entropy_reference(
            hidden.clone().matmul(w.clone()),
            targets(&[1, 2, 3, 4], &device),
        )
        .backward();
        assert_close(w.grad(&grads).unwrap(), w.grad(&want).unwrap(), 1e-6);
        let (h, w) = (hidden.require_grad(), w);
        let none = targets(&[IGNORE_INDEX; 4], &device);
        let loss = linear_cross_entropy(h.clone(), w.clone(), none);
        assert_eq!(loss.clone().into_scalar::<f32>(), 0.0);
        let grads = loss.backward();
        let zeros = |t: Tensor<2>| t.abs().max().into_scalar::<f32>();
        assert_eq!(zeros(h.grad(&grads).unwrap()), 0.0);
        assert_eq!(zeros(w.grad(&grads).unwrap()), 0.0);
    }

    /// Under bf16 autocast the three products take bf16-rounded operands, as the
    /// separate product and its backward do.
    #[test]
    fn bf16_products_match_the_separate_bf16_product() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let hidden = Tensor::<2>::random([9, 32], Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<2>::random([32, 200], Distribution::Normal(0.0, 0.3), &device);
        let labels = [4, 199, 0, IGNORE_INDEX, 100, 7, 7, 8, 9];
        {
            let _bf16 = crate::autocast(Dtype::Bf16);
            let (h, w) = (hidden.clone().require_grad(), weight.clone().require_grad());
            let got = fused(h.clone(), w.clone(), targets(&labels, &device), 4);
            let want = crate::cross_entropy(
                crate::matmul(h.clone(), w.clone()),
                targets(&labels, &device),
            );
            assert_same_loss_and_gradients(got, want, [&h, &w]);
            // And not the f32 product's: bf16 rounding moves the loss.
            let f32_loss: f32 = crate::cross_entropy_reference(
                hidden.clone().matmul(weight.clone()),
                targets(&labels, &device),
            )
            .into_scalar();
            assert_ne!(
                fused(hidden.clone(), weight.clone(), targets(&labels, &device), 4)
                    .into_scalar::<f32>(),
                f32_loss
            );
        }
    }

    #[test]
    #[should_panic(expected = "target 40 is not a class in 0..40")]
    fn a_target_outside_the_vocabulary_is_refused() {
        let device = Device::ndarray();
        let hidden = Tensor::<2>::zeros([2, 8], &device);
        let weight = Tensor::<2>::zeros([8, 40], &device);
        linear_cross_entropy(hidden, weight, targets(&[1, 40], &device));
    }
}
