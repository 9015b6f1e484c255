//! Mean cross-entropy with an ignore index, one pass each way.
//!
//! Over a 50,257-token vocabulary, the plain form is a log-softmax, a gather and their
//! backward passes over a `[rows, vocab]` tensor (100 MB at the book's batch). Here the
//! log-softmax is never materialised: the forward pass keeps each row's log-sum-exp and
//! the backward pass writes `softmax − onehot` directly.

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::IGNORE_INDEX;
use crate::cpu::{CpuBackend, with_cpu_backend};
use crate::exp::exp;
use crate::simd::widest_fn;

/// Mean cross-entropy of `logits` against `targets`, over the targets that are not
/// [`IGNORE_INDEX`], as `torch.nn.functional.cross_entropy` computes it; with no
/// counted target it is 0.
///
/// # Shapes
/// - logits: `[rows, classes]`
/// - targets: `[rows]`
/// - returns `[1]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    with_cpu_backend!(&logits, B => cross_entropy_on::<B>(&logits, host_targets(targets.clone())))
        .unwrap_or_else(|| cross_entropy_reference(logits, targets))
}

/// [`cross_entropy`] as plain tensor operations: log-softmax, gather, masked mean.
pub fn cross_entropy_reference(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let count = targets
        .clone()
        .not_equal_elem(IGNORE_INDEX)
        .float()
        .sum()
        .clamp_min(1.0);
    -crate::token_log_probs_reference(logits, targets).sum() / count
}

pub(crate) fn host_targets(targets: Tensor<1, Int>) -> Arc<[i64]> {
    let data = targets.into_data().convert::<i64>();
    data.try_into_vec::<i64>().expect("i64 targets").into()
}

fn cross_entropy_on<B: CpuBackend>(logits: &Tensor<2>, targets: Arc<[i64]>) -> Tensor<1> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    if let Some(tracked) = B::tracked(logits) {
        let prepared =
            Backward::<B, 1>::prepare::<NoCheckpointing>(CrossEntropyBackward, [tracked.node()])
                .compute_bound()
                .stateful();
        let classes = B::shape(tracked.primitive())[1];
        let rows = row_losses(&B::values(tracked.primitive()), classes, &targets);
        let loss = B::new_tensor(&[1], vec![rows.mean()]);
        let out = match prepared {
            OpsKind::Tracked(prep) => {
                let state = CrossEntropyState {
                    logits: tracked.primitive().clone(),
                    log_sum_exp: rows.log_sum_exp,
                    targets,
                    counted: rows.counted,
                };
                prep.finish(state, loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        return B::from_tracked(out);
    }
    let plain = B::plain(logits).expect("routed to this backend");
    let classes = B::shape(&plain)[1];
    let rows = row_losses(&B::values(&plain), classes, &targets);
    B::from_plain(B::new_tensor(&[1], vec![rows.mean()]))
}

/// Per-row log-sum-exp and the mean loss over the counted rows.
struct RowLosses {
    log_sum_exp: Arc<[f32]>,
    loss_sum: f64,
    counted: usize,
}

impl RowLosses {
    fn mean(&self) -> f32 {
        if self.counted == 0 {
            0.0
        } else {
            (self.loss_sum / self.counted as f64) as f32
        }
    }
}

/// One pass per row: its maximum, the sum of `exp(x − max)` (accumulated in f64), and
/// `log_sum_exp − x[target]` for counted rows.
fn row_losses(xs: &[f32], classes: usize, targets: &[i64]) -> RowLosses {
    assert_eq!(
        xs.len(),
        classes * targets.len(),
        "logits rows and targets differ in number"
    );
    let per_row: Vec<(f32, Option<f64>)> = xs
        .par_chunks(classes)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let log_sum_exp = log_sum_exp(row);
            let loss = (target != IGNORE_INDEX).then(|| {
                let target = usize::try_from(target)
                    .ok()
                    .filter(|&t| t < classes)
                    .unwrap_or_else(|| panic!("target {target} is not a class in 0..{classes}"));
                log_sum_exp as f64 - row[target] as f64
            });
            (log_sum_exp, loss)
        })
        .collect();
    RowLosses {
        log_sum_exp: per_row.iter().map(|&(lse, _)| lse).collect(),
        loss_sum: per_row.iter().filter_map(|&(_, loss)| loss).sum(),
        counted: per_row.iter().filter(|(_, loss)| loss.is_some()).count(),
    }
}

/// Lanes of the row reductions: running maxima and partial sums the compiler keeps in
/// vector registers (a sequential f32 reduction would not vectorise).
pub(crate) const LANES: usize = 16;

widest_fn! {
    /// `ln Σ exp(x)` over a row, shifted by its largest value.
    pub(crate) fn log_sum_exp(row: &[f32]) -> f32 {
        let max = max_of(row);
        max + sum_exp(row, max).ln() as f32
    }
}

/// The largest of `xs` (−∞ for none).
#[inline(always)]
pub(crate) fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in chunks.remainder().iter().chain(&lanes) {
        max = max.max(x);
    }
    max
}

/// `Σ exp(x − shift)`: f32 partial sums within blocks of 1,024 elements, f64 across
/// them, so that 50,257 terms keep f32's precision.
#[inline(always)]
pub(crate) fn sum_exp(xs: &[f32], shift: f32) -> f64 {
    // Plain loops: iterator adaptors with closures would be compiled apart from the
    // vectorised copy of the caller (`widest_fn!`).
    let mut total = 0.0f64;
    for block in xs.chunks(1024) {
        let mut lanes = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += exp(x - shift);
            }
        }
        for &x in chunks.remainder() {
            total += f64::from(exp(x - shift));
        }
        for lane in lanes {
            total += f64::from(lane);
        }
    }
    total
}

/// The backward node of the cross-entropy: the logits, each row's log-sum-exp, the
/// targets and the number of counted rows.
#[derive(Debug)]
struct CrossEntropyBackward;

#[derive(Debug, Clone)]
struct CrossEntropyState<T> {
    logits: T,
    log_sum_exp: Arc<[f32]>,
    targets: Arc<[i64]>,
    counted: usize,
}

impl<B: CpuBackend> burn::backend::autodiff::ops::Backward<B, 1> for CrossEntropyBackward {
    type State = CrossEntropyState<FloatTensor<B>>;

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 1>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let state = ops.state;
        burn::backend::autodiff::ops::unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let grad = *B::values(&grad).first().expect("a scalar loss gradient");
            let shape = B::shape(&state.logits);
            let values = gradient(
                &B::values(&state.logits),
                shape[1],
                &state.targets,
                &state.log_sum_exp,
                grad,
                state.counted,
            );
            B::new_tensor(&shape, values)
        });
    }
}

/// `grad · (softmax(x) − onehot(target)) / counted` for counted rows, zero for ignored
/// ones; one pass that writes every element once.
fn gradient(
    xs: &[f32],
    classes: usize,
    targets: &[i64],
    log_sum_exp: &[f32],
    grad: f32,
    counted: usize,
) -> Vec<f32> {
    let scale = if counted == 0 {
        0.0
    } else {
        grad / counted as f32
    };
    row_gradients(xs, classes, targets, log_sum_exp, |_| scale)
}

/// `scale(row) · (softmax(x) − onehot(target))` for each counted row, zero for ignored
/// ones; one pass that writes every element once.
pub(crate) fn row_gradients(
    xs: &[f32],
    classes: usize,
    targets: &[i64],
    log_sum_exp: &[f32],
    scale: impl Fn(usize) -> f32 + Sync,
) -> Vec<f32> {
    // Every row must be written before `set_len` below: the zips stop at the shortest.
    assert_eq!(xs.len(), classes * targets.len(), "logits rows and targets");
    assert_eq!(targets.len(), log_sum_exp.len(), "targets and log-sum-exps");
    if xs.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<f32> = Vec::with_capacity(xs.len());
    out.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(classes)
        .zip(xs.par_chunks(classes))
        .zip(targets.par_iter().zip(log_sum_exp.par_iter()))
        .enumerate()
        .for_each(|(r, ((out, row), (&target, &log_sum_exp)))| {
            write_row_gradient(out, row, target, log_sum_exp, scale(r))
        });
    // SAFETY: every row of the first `xs.len()` elements was written above.
    unsafe { out.set_len(xs.len()) };
    out
}

widest_fn! {
    fn write_row_gradient(
        out: &mut [MaybeUninit<f32>],
        row: &[f32],
        target: i64,
        log_sum_exp: f32,
        scale: f32,
    ) {
        if target == IGNORE_INDEX {
            out.iter_mut().for_each(|o| {
                o.write(0.0);
            });
            return;
        }
        for (o, &x) in out.iter_mut().zip(row) {
            o.write(exp(x - log_sum_exp) * scale);
        }
        let target = target as usize; // checked in the forward pass
        let softmax = exp(row[target] - log_sum_exp);
        out[target].write((softmax - 1.0) * scale);
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    #[test]
    fn matches_a_hand_computed_value_and_ignores_masked_targets() {
        for device in [Device::ndarray(), Device::ndarray().autodiff()] {
            let logits = Tensor::<2>::from_data(
                TensorData::new(vec![1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5], [2, 3]),
                &device,
            );
            let l0 = -(3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
            let l1 = 3f64.ln();
            for loss_fn in [cross_entropy, cross_entropy_reference] {
                let targets =
                    Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &device);
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
    }

    /// The loss and its gradient against the log-softmax + gather of the reference, with
    /// ignored rows, on a non-contiguous (transposed) input.
    #[test]
    fn loss_and_gradient_match_the_reference() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let logits = Tensor::<2>::random([300, 6], Distribution::Normal(0.0, 3.0), &device);
        let logits = logits.transpose().require_grad(); // [6, 300], column-major
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64, 299, IGNORE_INDEX, 17, 150, IGNORE_INDEX], [6]),
            &device,
        );
        let fused = cross_entropy(logits.clone(), targets.clone());
        let reference = cross_entropy_reference(logits.clone(), targets);
        assert_close(fused.clone(), reference.clone(), 1e-6);
        let fused_grad = logits.grad(&(fused * 2.5).backward()).unwrap();
        let reference_grad = logits.grad(&(reference * 2.5).backward()).unwrap();
        assert_close(fused_grad, reference_grad, 1e-6);
    }
}
