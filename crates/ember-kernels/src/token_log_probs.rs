//! The log-probability of each row's target, one pass each way: what DPO sums over a
//! response's tokens.
//!
//! The plain form, `log_softmax(logits).gather(target)`, writes the whole `[rows, vocab]`
//! log-softmax in several passes (the maximum, the shifted exponentials, their sum, the
//! subtraction), gathers one value per row, and its backward pass goes through the
//! gather and the log-softmax again: over a 50,257-token vocabulary most of a DPO step
//! on a small model. Here the forward pass keeps each row's log-sum-exp and the
//! backward pass writes `grad · (onehot − softmax)` directly, as
//! [`cross_entropy`](crate::cross_entropy) does for the mean loss.

use std::sync::Arc;

use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rayon::prelude::*;

use crate::IGNORE_INDEX;
use crate::cpu::{CpuBackend, with_cpu_backend};
use crate::cross_entropy::{host_targets, log_sum_exp, row_gradients};

/// `log_softmax(logits)[r, targets[r]]` for each row, 0 where the target is
/// [`IGNORE_INDEX`].
///
/// # Panics
/// If a target is neither [`IGNORE_INDEX`] nor a class of `logits`.
///
/// # Shapes
/// - logits: `[rows, classes]`
/// - targets: `[rows]`
/// - returns `[rows]`
pub fn token_log_probs(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    with_cpu_backend!(&logits, B => log_probs_on::<B>(&logits, host_targets(targets.clone())))
        .unwrap_or_else(|| token_log_probs_reference(logits, targets))
}

/// [`token_log_probs`] as plain tensor operations: log-softmax, gather, mask.
pub fn token_log_probs_reference(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [rows, _] = logits.dims();
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    // Ignored rows gather class 0 and are then zeroed by the mask.
    let safe = targets.mask_fill(counted.clone().bool_not(), 0);
    let picked = log_softmax(logits, 1)
        .gather(1, safe.reshape([rows, 1]))
        .reshape([rows]);
    picked * counted.float()
}

fn log_probs_on<B: CpuBackend>(logits: &Tensor<2>, targets: Arc<[i64]>) -> Tensor<1> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let rows = targets.len();
    if let Some(tracked) = B::tracked(logits) {
        let prepared =
            Backward::<B, 1>::prepare::<NoCheckpointing>(TokenLogProbsBackward, [tracked.node()])
                .compute_bound()
                .stateful();
        let classes = B::shape(tracked.primitive())[1];
        let (values, log_sum_exp) = log_probs(&B::values(tracked.primitive()), classes, &targets);
        let out = B::new_tensor(&[rows], values);
        let out = match prepared {
            OpsKind::Tracked(prep) => {
                let state = TokenLogProbsState {
                    logits: tracked.primitive().clone(),
                    log_sum_exp,
                    targets,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return B::from_tracked(out);
    }
    let plain = B::plain(logits).expect("routed to this backend");
    let classes = B::shape(&plain)[1];
    let (values, _) = log_probs(&B::values(&plain), classes, &targets);
    B::from_plain(B::new_tensor(&[rows], values))
}

/// Each row's target log-probability (0 where ignored) and its log-sum-exp.
fn log_probs(xs: &[f32], classes: usize, targets: &[i64]) -> (Vec<f32>, Arc<[f32]>) {
    assert!(
        classes > 0 || targets.is_empty(),
        "logits without classes have no log-probabilities"
    );
    assert_eq!(
        xs.len(),
        classes * targets.len(),
        "logits rows and targets differ in number"
    );
    let per_row: Vec<(f32, f32)> = xs
        .par_chunks(classes.max(1))
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let log_sum_exp = log_sum_exp(row);
            if target == IGNORE_INDEX {
                return (0.0, log_sum_exp);
            }
            let target = usize::try_from(target)
                .ok()
                .filter(|&t| t < classes)
                .unwrap_or_else(|| panic!("target {target} is not a class in 0..{classes}"));
            (row[target] - log_sum_exp, log_sum_exp)
        })
        .collect();
    let (values, log_sum_exp): (Vec<f32>, Vec<f32>) = per_row.into_iter().unzip();
    (values, log_sum_exp.into())
}

/// The backward node of [`token_log_probs`]: the logits, each row's log-sum-exp and the
/// targets.
#[derive(Debug)]
struct TokenLogProbsBackward;

#[derive(Debug, Clone)]
struct TokenLogProbsState<T> {
    logits: T,
    log_sum_exp: Arc<[f32]>,
    targets: Arc<[i64]>,
}

impl<B: CpuBackend> burn::backend::autodiff::ops::Backward<B, 1> for TokenLogProbsBackward {
    type State = TokenLogProbsState<FloatTensor<B>>;

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 1>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let state = ops.state;
        burn::backend::autodiff::ops::unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let grad = B::values(&grad);
            let shape = B::shape(&state.logits);
            // d log p(target) / dx = onehot − softmax: the cross-entropy's gradient,
            // negated.
            let values = row_gradients(
                &B::values(&state.logits),
                shape[1],
                &state.targets,
                &state.log_sum_exp,
                |row| -grad[row],
            );
            B::new_tensor(&shape, values)
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    #[test]
    fn matches_hand_computed_values_and_zeroes_ignored_rows() {
        for device in [Device::ndarray(), Device::ndarray().autodiff()] {
            let logits = Tensor::<2>::from_data(
                TensorData::new(
                    vec![1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5, 0.0, 4.0, -1.0],
                    [3, 3],
                ),
                &device,
            );
            let targets = Tensor::<1, Int>::from_data(
                TensorData::new(vec![2i64, 0, IGNORE_INDEX], [3]),
                &device,
            );
            let first = (3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
            let want = [first, -(3f64.ln()), 0.0];
            for log_probs in [token_log_probs, token_log_probs_reference] {
                let got = log_probs(logits.clone(), targets.clone()).into_data();
                for (got, want) in got.iter::<f32>().zip(want) {
                    assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
                }
            }
        }
    }

    /// Values and the gradient of a weighted sum of them (each row its own upstream
    /// gradient) against the log-softmax + gather of the reference, with ignored rows,
    /// on a non-contiguous (transposed) input.
    #[test]
    fn values_and_gradient_match_the_reference() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let logits = Tensor::<2>::random([300, 6], Distribution::Normal(0.0, 3.0), &device);
        let logits = logits.transpose().require_grad(); // [6, 300], column-major
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64, 299, IGNORE_INDEX, 17, 150, IGNORE_INDEX], [6]),
            &device,
        );
        let upstream = Tensor::<1>::from_data(
            TensorData::new(vec![1.5f32, -2.0, 3.0, 0.25, 1.0, -1.0], [6]),
            &device,
        );
        let fused = token_log_probs(logits.clone(), targets.clone());
        let reference = token_log_probs_reference(logits.clone(), targets);
        assert_close(fused.clone(), reference.clone(), 1e-6);
        let weighted = |x: Tensor<1>| (x * upstream.clone()).sum().backward();
        let fused_grad = logits.grad(&weighted(fused)).unwrap();
        let reference_grad = logits.grad(&weighted(reference)).unwrap();
        assert_close(fused_grad, reference_grad, 1e-6);
    }
}
