//! What the normalisation kernels share: a normalisation over the last dimension,
//! scaled by a weight vector, with per-row statistics kept from the forward pass for
//! the backward one. A [`RowNormKernel`] says the arithmetic; [`row_norm`] runs it on
//! plain or tracked tensors and registers its backward node.

use burn::backend::tensor::FloatTensor;
use burn::prelude::*;

use crate::cpu::CpuBackend;

/// Rows per rayon task: below this many elements a task is not worth its scheduling.
pub(crate) const ROWS_ELEMENTS_PER_TASK: usize = 1 << 14;

/// The smallest number of rows of width `d` worth a rayon task.
pub(crate) fn rows_per_task(d: usize) -> usize {
    (ROWS_ELEMENTS_PER_TASK / d.max(1)).max(1)
}

/// The arithmetic of one row-wise normalisation.
pub(crate) trait RowNormKernel: Send + Sync + std::fmt::Debug + Clone + 'static {
    /// What the forward pass keeps of each row for the backward pass.
    type Stat: Copy + Send + Sync + std::fmt::Debug + 'static;

    /// The statistics of each row of width `d`.
    fn stats(&self, x: &[f32], d: usize) -> Vec<Self::Stat>;

    /// The normalised rows times `weight`.
    fn forward(&self, x: &[f32], weight: &[f32], stats: &[Self::Stat]) -> Vec<f32>;

    /// The input's gradient from the output's, `grad`.
    fn input_grad(&self, x: &[f32], weight: &[f32], stats: &[Self::Stat], grad: &[f32])
    -> Vec<f32>;

    /// The weight's gradient from the output's, `grad` (summed over rows).
    fn weight_grad(&self, x: &[f32], d: usize, stats: &[Self::Stat], grad: &[f32]) -> Vec<f32>;
}

/// `kernel` applied to `x` and `weight` on backend `B`: both tracked (a gradient may be
/// wanted) or both plain; `None` when they are neither.
pub(crate) fn row_norm<B: CpuBackend, K: RowNormKernel, const D: usize>(
    kernel: K,
    x: &Tensor<D>,
    weight: &Tensor<1>,
) -> Option<Tensor<D>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    if let (Some(xt), Some(wt)) = (B::tracked(x), B::tracked(weight)) {
        let shape = B::shape(xt.primitive());
        let d = *shape.last()?;
        let (xs, ws) = (B::values(xt.primitive()), B::values(wt.primitive()));
        let stats = kernel.stats(&xs, d);
        let out = B::new_tensor(&shape, kernel.forward(&xs, &ws, &stats));
        let node = RowNormNode { kernel };
        let out = match Backward::<B, 2>::prepare::<NoCheckpointing>(node, [xt.node(), wt.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((xt.primitive().clone(), wt.primitive().clone(), stats), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return Some(B::from_tracked(out));
    }
    let (xp, wp) = (B::plain(x)?, B::plain(weight)?);
    let shape = B::shape(&xp);
    let d = *shape.last()?;
    let (xs, ws) = (B::values(&xp), B::values(&wp));
    let stats = kernel.stats(&xs, d);
    Some(B::from_plain(B::new_tensor(
        &shape,
        kernel.forward(&xs, &ws, &stats),
    )))
}

/// The backward node of [`row_norm`]; its state is the input, the weight and the rows'
/// statistics.
#[derive(Debug)]
struct RowNormNode<K> {
    kernel: K,
}

impl<B: CpuBackend, K: RowNormKernel> burn::backend::autodiff::ops::Backward<B, 2>
    for RowNormNode<K>
{
    type State = (FloatTensor<B>, FloatTensor<B>, Vec<K::Stat>);

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 2>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let (x, weight, stats) = ops.state;
        let shape = B::shape(&x);
        let (xs, ws) = (B::values(&x).into_owned(), B::values(&weight).into_owned());
        let d = ws.len();
        let kernel = &self.kernel;
        burn::backend::autodiff::ops::binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                B::new_tensor(
                    &shape,
                    kernel.input_grad(&xs, &ws, &stats, &B::values(&grad)),
                )
            },
            |grad| B::new_tensor(&[d], kernel.weight_grad(&xs, d, &stats, &B::values(&grad))),
        );
    }
}
