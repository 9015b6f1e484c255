//! The kernels on Burn's ndarray backend: one pass over the data each way, split over
//! the cores with rayon, and autodiff nodes whose backward passes are written out by hand.
//!
//! Each entry point takes the tensors back (`Err`) when they are not f32 tensors of the
//! ndarray backend, plain or with autodiff (without gradient checkpointing), so the
//! caller falls back to the plain tensor operations.
// The ndarray backend is deprecated in Burn 0.22 (removed in 0.23).
#![allow(deprecated)]
// `Err` hands the caller's own tensors back, as large as the `Ok` value; boxing them
// would add an allocation to every call.
#![allow(clippy::result_large_err)]

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ndarray::NdArrayTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use ndarray::{ArcArray, ArrayView2, ArrayViewD, CowArray, Ix2, IxDyn};
use rayon::prelude::*;

use crate::IGNORE_INDEX;
use crate::adamw::{AdamWHyper, state_of};
use burn::optim::AdamWState;

/// Autodiff over ndarray as the training device builds it (no gradient checkpointing).
type AutodiffCpu = Autodiff<NdArray>;

/// Elements per rayon task for the element-wise kernels: large enough that scheduling
/// is noise, small enough to share a 1.5M-element GELU input between the cores.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// √(2/π), the GELU approximation's scale.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic term's weight in the GELU approximation.
const CUBIC: f32 = 0.044_715;

// ---------------------------------------------------------------------------------------
// tanh-GELU

pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    if let Ok(x) = x.clone().try_into_primitive::<AutodiffCpu>() {
        return Ok(Tensor::from_primitive::<AutodiffCpu>(gelu_autodiff(x)));
    }
    if let Ok(x) = x.clone().try_into_primitive::<NdArray>() {
        return Ok(Tensor::from_primitive::<NdArray>(gelu_forward(&x)));
    }
    Err(x)
}

/// The backward node of [`gelu_autodiff`]; its state is the input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<NdArray, 1> for GeluBackward {
    type State = NdArrayTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let input = ops.state;
        unary::<NdArray, _>(ops.parents, ops.node, grads, |grad| {
            gelu_backward(&input, &grad)
        });
    }
}

fn gelu_autodiff(x: FloatTensor<AutodiffCpu>) -> FloatTensor<AutodiffCpu> {
    match GeluBackward
        .prepare::<NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let input = x.primitive().clone();
            let output = gelu_forward(&input);
            prep.finish(input, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(gelu_forward(x.primitive())),
    }
}

fn gelu_forward(x: &NdArrayTensor) -> NdArrayTensor {
    let x = contiguous(f32_view(x));
    let xs = x.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(xs.len());
    xs.par_iter()
        .with_min_len(ELEMENTS_PER_TASK)
        .map(|&x| x * Sigmoid::of_2u(x).s)
        .collect_into_vec(&mut out);
    tensor(x.shape(), out)
}

/// `σ(2u)` and `1 − σ(2u)` for GELU's `u = √(2/π)·(x + 0.044715·x³)`.
///
/// `½·x·(1 + tanh(u))` is exactly `x·σ(2u)`: one `expf` instead of glibc's `tanhf`
/// (which goes through `expm1f` and took three times as long here), and no
/// cancellation in `1 + tanh(u)` for large negative `x`.
struct Sigmoid {
    s: f32,
    one_minus_s: f32,
}

impl Sigmoid {
    #[inline]
    fn of_2u(x: f32) -> Self {
        let e = (-2.0 * SQRT_2_OVER_PI * (x + CUBIC * x * x * x)).exp();
        let s = 1.0 / (1.0 + e);
        // e·s keeps 1 − σ exact where σ is close to 1; e is infinite only where σ is 0.
        let one_minus_s = if e.is_finite() { e * s } else { 1.0 };
        Sigmoid { s, one_minus_s }
    }
}

/// `grad · d/dx gelu(x)`, with `d/dx x·σ(2u) = σ + x·σ·(1 − σ)·2·√(2/π)·(1 + 3·0.044715·x²)`.
fn gelu_backward(x: &NdArrayTensor, grad: &NdArrayTensor) -> NdArrayTensor {
    let x = contiguous(f32_view(x));
    let grad = contiguous(f32_view(grad));
    let xs = x.as_slice().expect("standard layout");
    let gs = grad.as_slice().expect("standard layout");
    assert_eq!(xs.len(), gs.len(), "GELU gradient and input differ in size");
    let mut out = Vec::with_capacity(xs.len());
    xs.par_iter()
        .zip(gs.par_iter())
        .with_min_len(ELEMENTS_PER_TASK)
        .map(|(&x, &g)| {
            let Sigmoid { s, one_minus_s } = Sigmoid::of_2u(x);
            let du = 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x);
            g * (s + x * s * one_minus_s * du)
        })
        .collect_into_vec(&mut out);
    tensor(x.shape(), out)
}

// ---------------------------------------------------------------------------------------
// Matrix product

/// `a · b` for 2-D f32 tensors of the ndarray backend through the `gemm` crate, which
/// reads transposed operands through their strides. Burn's ndarray matmul reshapes each
/// operand to 3-D first, and for a transposed one (every weight in a backward pass) that
/// reshape is a single-threaded strided copy: for gpt2-small's output head, 38.6M elements
/// a step. It also zero-fills an output that the product then overwrites.
pub(crate) fn matmul(a: Tensor<2>, b: Tensor<2>) -> Result<Tensor<2>, (Tensor<2>, Tensor<2>)> {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return Err((a, b));
    }
    if let (Ok(pa), Ok(pb)) = (
        a.clone().try_into_primitive::<AutodiffCpu>(),
        b.clone().try_into_primitive::<AutodiffCpu>(),
    ) {
        return Ok(Tensor::from_primitive::<AutodiffCpu>(matmul_autodiff(
            pa, pb,
        )));
    }
    if let (Ok(pa), Ok(pb)) = (
        a.clone().try_into_primitive::<NdArray>(),
        b.clone().try_into_primitive::<NdArray>(),
    ) {
        let out = gemm(view2(&pa), view2(&pb));
        return Ok(Tensor::from_primitive::<NdArray>(out));
    }
    Err((a, b))
}

/// The backward node of [`matmul_autodiff`]: the operands each gradient needs (`b` for
/// `a`'s, `a` for `b`'s), kept only when that gradient is wanted.
#[derive(Debug)]
struct MatmulBackward;

impl Backward<NdArray, 2> for MatmulBackward {
    type State = (Option<NdArrayTensor>, Option<NdArrayTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        burn::backend::autodiff::ops::binary::<NdArray, _, _>(
            ops.parents,
            ops.node,
            grads,
            // dA = G · Bᵀ
            |grad| {
                gemm(
                    view2(&grad),
                    view2(b.as_ref().expect("kept for a")).reversed_axes(),
                )
            },
            // dB = Aᵀ · G
            |grad| {
                gemm(
                    view2(a.as_ref().expect("kept for b")).reversed_axes(),
                    view2(&grad),
                )
            },
        );
    }
}

fn matmul_autodiff(
    a: FloatTensor<AutodiffCpu>,
    b: FloatTensor<AutodiffCpu>,
) -> FloatTensor<AutodiffCpu> {
    let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
    match MatmulBackward
        .prepare::<NoCheckpointing>([a.node(), b.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let output = gemm(view2(a.primitive()), view2(b.primitive()));
            let state = (
                b_tracked.then(|| a.primitive().clone()),
                a_tracked.then(|| b.primitive().clone()),
            );
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(gemm(view2(a.primitive()), view2(b.primitive()))),
    }
}

/// `a · b` into a new row-major array, on every core.
fn gemm(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> NdArrayTensor {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert_eq!(k, k2, "matrix product of [{m}, {k}] and [{k2}, {n}]");
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    // SAFETY: the operands are valid for their shapes and strides; with `read_dst` false
    // gemm only writes the m·n destination, which `out` has room for, and every element
    // of it is written before `set_len`.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            ::gemm::Parallelism::Rayon(0),
        );
        out.set_len(m * n);
    }
    tensor(&[m, n], out)
}

fn view2(t: &NdArrayTensor) -> ArrayView2<'_, f32> {
    f32_view(t)
        .into_dimensionality::<Ix2>()
        .expect("a 2-D tensor")
}

// ---------------------------------------------------------------------------------------
// Dropout

/// `x · mask`, the mask holding `1 / keep` with probability `keep` and 0 otherwise, when
/// `x` lives on the ndarray backend; `Err(x)` otherwise.
///
/// Burn draws a dropout mask one element at a time through a ChaCha generator and a
/// Bernoulli sampler (a tenth of a gpt2-small step). Here each element's bit comes from a
/// counter-based hash of (seed, index), so the mask is filled in parallel and the same
/// whatever the thread count; the seed itself is drawn from the device's generator, so
/// `seed` and resumed runs stay reproducible.
pub(crate) fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Result<Tensor<D>, Tensor<D>> {
    let device = x.device();
    if x.dtype() != DType::F32 || device.clone().inner() != Device::ndarray() {
        return Err(x);
    }
    let keep = 1.0 - prob;
    let seed_words =
        Tensor::<1, Int>::random([2], Distribution::Uniform(0.0, 4_294_967_295.0), &device)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("two seed words");
    let seed = ((seed_words[0] as u64) << 32) ^ seed_words[1] as u64;
    let shape = x.shape();
    let mask = dropout_mask(shape.num_elements(), keep, seed);
    let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &device);
    Ok(x * mask)
}

/// `len` values, each `1 / keep` with probability `keep`, else 0.
fn dropout_mask(len: usize, keep: f64, seed: u64) -> Vec<f32> {
    // An element is kept when its 32 random bits fall below keep · 2³².
    let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = (1.0 / keep) as f32;
    let mut mask = Vec::with_capacity(len);
    (0..len)
        .into_par_iter()
        .with_min_len(ELEMENTS_PER_TASK)
        .map(|i| {
            let bits =
                (split_mix64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32) as u32;
            if bits < threshold { scale } else { 0.0 }
        })
        .collect_into_vec(&mut mask);
    mask
}

/// SplitMix64's output function (Steele, Lea and Flood 2014): a bijective 64-bit mix
/// whose outputs for consecutive inputs pass BigCrush.
#[inline]
fn split_mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------
// Cross-entropy

type Inputs = (Tensor<2>, Tensor<1, Int>);

pub(crate) fn cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
) -> Result<Tensor<1>, Inputs> {
    if logits.dtype() != DType::F32 {
        return Err((logits, targets));
    }
    if let Ok(on_cpu) = logits.clone().try_into_primitive::<AutodiffCpu>() {
        let loss = cross_entropy_autodiff(on_cpu, host_targets(targets));
        return Ok(Tensor::from_primitive::<AutodiffCpu>(loss));
    }
    if let Ok(on_cpu) = logits.clone().try_into_primitive::<NdArray>() {
        let rows = row_losses(&on_cpu, &host_targets(targets));
        return Ok(Tensor::from_primitive::<NdArray>(tensor(
            &[1],
            vec![rows.mean()],
        )));
    }
    Err((logits, targets))
}

fn host_targets(targets: Tensor<1, Int>) -> Arc<[i64]> {
    let data = targets.into_data().convert::<i64>();
    data.to_vec::<i64>().expect("i64 targets").into()
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
fn row_losses(logits: &NdArrayTensor, targets: &[i64]) -> RowLosses {
    let logits = contiguous(f32_view(logits));
    let classes = *logits.shape().last().expect("2-D logits");
    let xs = logits.as_slice().expect("standard layout");
    assert_eq!(
        xs.len(),
        classes * targets.len(),
        "logits rows and targets differ in number"
    );
    let per_row: Vec<(f32, Option<f64>)> = xs
        .par_chunks(classes)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| (x - max).exp() as f64).sum();
            let log_sum_exp = max + sum.ln() as f32;
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

/// The backward node of [`cross_entropy_autodiff`]: the logits, each row's
/// log-sum-exp, the targets and the number of counted rows.
#[derive(Debug)]
struct CrossEntropyBackward;

#[derive(Debug, Clone)]
struct CrossEntropyState {
    logits: NdArrayTensor,
    log_sum_exp: Arc<[f32]>,
    targets: Arc<[i64]>,
    counted: usize,
}

impl Backward<NdArray, 1> for CrossEntropyBackward {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<NdArray, _>(ops.parents, ops.node, grads, |grad| {
            let grad = *f32_view(&grad)
                .iter()
                .next()
                .expect("a scalar loss gradient");
            cross_entropy_backward(&state, grad)
        });
    }
}

fn cross_entropy_autodiff(
    logits: FloatTensor<AutodiffCpu>,
    targets: Arc<[i64]>,
) -> FloatTensor<AutodiffCpu> {
    let prepared = CrossEntropyBackward
        .prepare::<NoCheckpointing>([logits.node()])
        .compute_bound()
        .stateful();
    let rows = row_losses(logits.primitive(), &targets);
    let loss = tensor(&[1], vec![rows.mean()]);
    match prepared {
        OpsKind::Tracked(prep) => {
            let state = CrossEntropyState {
                logits: logits.primitive().clone(),
                log_sum_exp: rows.log_sum_exp,
                targets,
                counted: rows.counted,
            };
            prep.finish(state, loss)
        }
        OpsKind::UnTracked(prep) => prep.finish(loss),
    }
}

/// `grad · (softmax(x) − onehot(target)) / counted` for counted rows, zero for ignored
/// ones; one pass that writes every element once.
fn cross_entropy_backward(state: &CrossEntropyState, grad: f32) -> NdArrayTensor {
    let logits = contiguous(f32_view(&state.logits));
    let classes = *logits.shape().last().expect("2-D logits");
    let xs = logits.as_slice().expect("standard layout");
    let scale = if state.counted == 0 {
        0.0
    } else {
        grad / state.counted as f32
    };
    let mut out: Vec<f32> = Vec::with_capacity(xs.len());
    out.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(classes)
        .zip(xs.par_chunks(classes))
        .zip(state.targets.par_iter().zip(state.log_sum_exp.par_iter()))
        .for_each(|((out, row), (&target, &log_sum_exp))| {
            write_row_gradient(out, row, target, log_sum_exp, scale)
        });
    // SAFETY: every row of the first `xs.len()` elements was written above.
    unsafe { out.set_len(xs.len()) };
    tensor(logits.shape(), out)
}

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
        o.write((x - log_sum_exp).exp() * scale);
    }
    let target = target as usize; // checked in the forward pass
    let softmax = (row[target] - log_sum_exp).exp();
    out[target].write((softmax - 1.0) * scale);
}

// ---------------------------------------------------------------------------------------
// AdamW

/// A step's inputs, handed back when the kernel does not apply.
type AdamWInputs<const D: usize> = (Tensor<D>, Tensor<D>, Option<AdamWState<D>>);

/// One AdamW step on an f32 parameter of the ndarray backend, in place: the parameter
/// and both moments are updated in one parallel pass (Burn's arithmetic, operation for
/// operation, so results match its `AdamW`). `Err` hands back anything else, and states
/// with an AMSGrad maximum.
pub(crate) fn adamw_step<const D: usize>(
    hyper: &AdamWHyper,
    lr: f64,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamWState<D>>,
) -> Result<(Tensor<D>, AdamWState<D>), AdamWInputs<D>> {
    let on_cpu = |t: &Tensor<D>| {
        let device = t.device();
        t.dtype() == DType::F32 && !device.is_autodiff() && device == Device::ndarray()
    };
    let moments_on_cpu = state.as_ref().is_none_or(|s| {
        s.momentum.max_moment_2.is_none()
            && on_cpu(&s.momentum.moment_1)
            && on_cpu(&s.momentum.moment_2)
    });
    if !(on_cpu(&tensor) && on_cpu(&grad) && moments_on_cpu) {
        return Err((tensor, grad, state));
    }
    let shape = tensor.shape();
    let mut param = owned_f32(tensor);
    let grad = grad.try_into_primitive::<NdArray>().expect("checked above");
    let grad = contiguous(f32_view(&grad));
    let grad = grad.as_slice().expect("standard layout");
    let (time, mut moment_1, mut moment_2) = match state {
        Some(state) => {
            let momentum = state.momentum;
            (
                momentum.time + 1,
                owned_f32(momentum.moment_1),
                owned_f32(momentum.moment_2),
            )
        }
        None => {
            let zeros = || ArcArray::zeros(IxDyn(shape.as_slice()));
            (1, zeros(), zeros())
        }
    };
    // The same f32 values Burn's AdamW computes.
    let (beta1, beta2, eps) = (hyper.beta1, hyper.beta2, hyper.eps);
    let (factor1, factor2) = (1.0 - beta1, 1.0 - beta2);
    let correction1 = 1f32 - beta1.powi(time as i32);
    let correction2 = 1f32 - beta2.powi(time as i32);
    let decay = (1.0 - lr * hyper.weight_decay as f64) as f32;
    let lr = lr as f32;
    let slices = [&mut param, &mut moment_1, &mut moment_2]
        .map(|a| a.as_slice_mut().expect("standard layout"));
    let [param_s, m_s, v_s] = slices;
    assert_eq!(
        param_s.len(),
        grad.len(),
        "parameter and gradient differ in size"
    );
    param_s
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(m_s.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(v_s.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(grad.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(((p, m), v), g)| {
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                *m = *m * beta1 + g * factor1;
                *v = *v * beta2 + g * g * factor2;
                let delta = (*m / correction1) / ((*v / correction2).sqrt() + eps);
                *p = *p * decay - delta * lr;
            }
        });
    let wrap = |a: ArcArray<f32, IxDyn>| Tensor::<D>::from_primitive::<NdArray>(a.into());
    let state = state_of(time, wrap(moment_1), wrap(moment_2));
    Ok((wrap(param), state))
}

/// The tensor's f32 array in row-major order, owned (copied only when it is shared,
/// borrowed from a file, or strided).
fn owned_f32<const D: usize>(t: Tensor<D>) -> ArcArray<f32, IxDyn> {
    let array = match t
        .try_into_primitive::<NdArray>()
        .expect("an ndarray tensor")
    {
        NdArrayTensor::F32(storage) => storage.into_shared(),
        other => panic!("expected an f32 ndarray tensor, got {:?}", other.dtype()),
    };
    if array.is_standard_layout() {
        array
    } else {
        array.as_standard_layout().into_owned().into_shared()
    }
}

// ---------------------------------------------------------------------------------------
// ndarray plumbing

fn f32_view(t: &NdArrayTensor) -> ArrayViewD<'_, f32> {
    match t {
        NdArrayTensor::F32(storage) => storage.view(),
        other => panic!("expected an f32 ndarray tensor, got {:?}", other.dtype()),
    }
}

/// The view itself when it is in row-major order, else a row-major copy.
fn contiguous(view: ArrayViewD<'_, f32>) -> CowArray<'_, f32, IxDyn> {
    if view.is_standard_layout() {
        CowArray::from(view)
    } else {
        CowArray::from(view.as_standard_layout().into_owned())
    }
}

fn tensor(shape: &[usize], data: Vec<f32>) -> NdArrayTensor {
    let array = ArcArray::from_shape_vec(IxDyn(shape), data).expect("data fills the shape");
    NdArrayTensor::from(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cross_entropy_reference, gelu_tanh_reference};
    use burn::tensor::{Distribution, Tolerance};

    fn assert_close<const D: usize>(got: Tensor<D>, want: Tensor<D>, absolute: f32) {
        let (got, want) = (got.into_data(), want.into_data());
        let tolerance = Tolerance::<f32>::absolute(absolute).set_relative(1e-5);
        got.assert_approx_eq::<f32>(&want, tolerance);
    }

    /// The loss and its gradient against the log-softmax + gather of the reference, with
    /// ignored rows, on a non-contiguous (transposed) input.
    #[test]
    fn cross_entropy_and_its_gradient_match_the_reference() {
        let device = Device::ndarray().autodiff();
        let logits = Tensor::<2>::random([300, 6], Distribution::Normal(0.0, 3.0), &device);
        let logits = logits.transpose().require_grad(); // [6, 300], column-major
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64, 299, IGNORE_INDEX, 17, 150, IGNORE_INDEX], [6]),
            &device,
        );
        let fused = crate::cross_entropy(logits.clone(), targets.clone());
        let reference = cross_entropy_reference(logits.clone(), targets);
        assert_close(fused.clone(), reference.clone(), 1e-6);
        let fused_grad = logits.grad(&(fused * 2.5).backward()).unwrap();
        let reference_grad = logits.grad(&(reference * 2.5).backward()).unwrap();
        assert_close(fused_grad, reference_grad, 1e-6);
    }

    #[test]
    fn gelu_and_its_gradient_match_the_reference() {
        let device = Device::ndarray().autodiff();
        let x = Tensor::<3>::random([3, 70, 200], Distribution::Normal(0.0, 2.0), &device)
            .require_grad();
        let weights = Tensor::<3>::random([3, 70, 200], Distribution::Default, &device);
        let fused = crate::gelu_tanh(x.clone());
        let reference = gelu_tanh_reference(x.clone());
        // The reference loses about 1e-6 to the cancellation in 1 + tanh(u) near x = -5.
        assert_close(fused.clone(), reference.clone(), 5e-6);
        let fused_grad = x.grad(&(fused * weights.clone()).sum().backward()).unwrap();
        let reference_grad = x.grad(&(reference * weights).sum().backward()).unwrap();
        assert_close(fused_grad, reference_grad, 5e-6);
    }

    #[test]
    fn dropout_keeps_the_expected_share_scaled_and_is_reproducible() {
        let mask = dropout_mask(1_000_000, 0.9, 42);
        let kept = mask.iter().filter(|&&m| m != 0.0).count();
        // 900,000 expected, standard deviation 300.
        assert!((kept as i64 - 900_000).abs() < 1_500, "{kept}");
        assert!(
            mask.iter()
                .all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6)
        );
        assert_eq!(mask, dropout_mask(1_000_000, 0.9, 42));
        assert_ne!(mask, dropout_mask(1_000_000, 0.9, 43));

        let device = Device::ndarray().autodiff();
        let x = Tensor::<2>::ones([64, 64], &device).require_grad();
        device.seed(7);
        let y = dropout(x.clone(), 0.25).unwrap();
        device.seed(7);
        let again = dropout(x.clone(), 0.25).unwrap();
        y.clone().into_data().assert_eq(&again.into_data(), true);
        // The gradient of sum(x · mask) is the mask itself.
        let grad = x.grad(&y.clone().sum().backward()).unwrap();
        grad.into_data().assert_eq(&y.inner().into_data(), true);
    }

    /// Products of plain and transposed operands, and both gradients, against Burn's
    /// matmul; an untracked operand gets no gradient.
    #[test]
    fn matmul_and_its_gradients_match_burns() {
        let device = Device::ndarray().autodiff();
        let a = Tensor::<2>::random([33, 70], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([50, 70], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([33, 50], Distribution::Default, &device);
        let (a, b) = (a.require_grad(), b.require_grad());
        let fused = crate::matmul(a.clone(), b.clone().transpose());
        let reference = a.clone().matmul(b.clone().transpose());
        assert_close(fused.clone(), reference.clone(), 1e-5);
        let fused_grads = (fused * weights.clone()).sum().backward();
        let reference_grads = (reference * weights.clone()).sum().backward();
        assert_close(
            a.grad(&fused_grads).unwrap(),
            a.grad(&reference_grads).unwrap(),
            1e-5,
        );
        assert_close(
            b.grad(&fused_grads).unwrap(),
            b.grad(&reference_grads).unwrap(),
            1e-5,
        );

        let frozen = b.clone().detach();
        let grads = (crate::matmul(a.clone().transpose(), weights) * 1.0)
            .sum()
            .backward();
        assert!(a.grad(&grads).is_some());
        let grads = crate::matmul(a.clone(), frozen.transpose())
            .sum()
            .backward();
        assert!(a.grad(&grads).is_some() && b.grad(&grads).is_none());

        let plain = Device::ndarray();
        let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &plain);
        let y = crate::matmul(x.clone(), x.clone().transpose());
        y.into_data()
            .assert_eq(&TensorData::from([[5.0f32, 11.0], [11.0, 25.0]]), true);
    }

    #[test]
    fn plain_ndarray_tensors_take_the_kernels_and_others_are_handed_back() {
        let device = Device::ndarray();
        let x = Tensor::<2>::from_floats([[0.5, -1.0], [2.0, 0.0]], &device);
        assert!(gelu_tanh(x.clone()).is_ok());
        let targets = Tensor::<1, Int>::from_ints([1, 0], &device);
        assert!(cross_entropy(x.clone(), targets.clone()).is_ok());
        let doubles = x.cast(DType::F64);
        assert!(gelu_tanh(doubles.clone()).is_err());
        assert!(cross_entropy(doubles, targets).is_err());
        let tracked = Tensor::<2>::from_floats([[0.5, -1.0]], &Device::ndarray().autodiff());
        assert!(gelu_tanh(tracked).is_ok());
    }
}
