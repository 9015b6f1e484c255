//! Matrix products and linear layers through the strided `gemm` crate.
//!
//! Burn's ndarray matmul reshapes each operand to 3-D first, and for a transposed one
//! (every weight in a backward pass) that reshape is a single-threaded strided copy: for
//! gpt2-small's output head, 38.6M elements a step. It also zero-fills an output that the
//! product then overwrites. `gemm` reads transposed operands through their strides.
//!
//! Under [`autocast`](crate::autocast)`(Dtype::Bf16)` the products (forward and
//! backward) take bf16-rounded operands instead (`bf16_gemm.rs`), under `Dtype::F16`
//! f16-rounded ones.

use burn::backend::tensor::FloatTensor;
use burn::nn::Linear;
use burn::prelude::*;

use rayon::prelude::*;

use crate::autocast::current_precision;
use crate::cpu::{CpuBackend, MatrixView, with_cpu_backend};
use crate::dtype::Dtype;

/// `a · b`, in the [precision](crate::autocast()) of the scope.
///
/// # Shapes
/// - a: `[m, k]`
/// - b: `[k, n]`
/// - returns `[m, n]`
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    match with_cpu_backend!(&a, B => matmul_on::<B>(&a, &b)).flatten() {
        Some(product) => product,
        None => backend_product(a, b, current_precision()),
    }
}

/// A product the CPU kernels do not take (another backend): the backend's own, in
/// `precision` by casting the operands to it and the result back to f32 (autocast as
/// PyTorch does it on CUDA; autodiff casts the gradients back the same way), where the
/// backend computes in that format; f32 otherwise.
fn backend_product(a: Tensor<2>, b: Tensor<2>, precision: Dtype) -> Tensor<2> {
    match precision.float_dtype() {
        Some(format) if precision != Dtype::F32 && a.device().supports_dtype(format) => a
            .cast(format)
            .matmul(b.cast(format))
            .cast(burn::tensor::FloatDType::F32),
        _ => a.matmul(b),
    }
}

/// `layer` applied to `x` (`x · W + b`), its leading dimensions folded into rows for one
/// [`matmul`]. The weight is read through `Param::val`, so LoRA adapters that Burn's
/// `apply_lora` put on it take part.
///
/// # Shapes
/// - x: `[..., d_input]`
/// - returns `[..., d_output]`
///
/// A layer with [half weights](crate::packed_weights) computes from them.
///
/// Within [`crate::with_row_layout`], rows that each stand alone are computed so that
/// their results do not depend on the other rows ([`crate::rows`]).
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if let Some(m) = crate::packed_weights::packed_matrix(&layer.weight) {
        let bias = layer.bias.as_ref().map(|b| b.val());
        return crate::packed_weights::linear_packed(x, &m, bias);
    }
    let [d_input, d_output] = layer.weight.dims();
    let mut dims = x.dims();
    assert_eq!(
        dims[D - 1],
        d_input,
        "linear layer of {d_input} inputs given {dims:?}"
    );
    let rows = dims[..D - 1].iter().product();
    let x = x.reshape([rows, d_input]);
    let y = match crate::rows::layout_for(rows) {
        Some(layout) => crate::rows::by_layout(
            x,
            &layout,
            |single| crate::rows::each_row(single, |row| linear_2d(layer, row)),
            |chunk| linear_2d(layer, chunk),
        ),
        None => linear_2d(layer, x),
    };
    dims[D - 1] = d_output;
    y.reshape(dims)
}

/// `x · W + b` (`[rows, in]` → `[rows, out]`).
fn linear_2d(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    let y = matmul(x, layer.weight.val());
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze::<2>(),
        None => y,
    }
}

/// Both operands on backend `B`: tracked (either may need a gradient) or both plain.
fn matmul_on<B: CpuBackend>(a: &Tensor<2>, b: &Tensor<2>) -> Option<Tensor<2>> {
    let precision = current_precision();
    if let (Some(a), Some(b)) = (B::tracked(a), B::tracked(b)) {
        return Some(B::from_tracked(matmul_autodiff::<B>(a, b, precision)));
    }
    let (a, b) = (B::plain(a)?, B::plain(b)?);
    Some(B::from_plain(product::<B>(
        B::matrix(&a),
        B::matrix(&b),
        precision,
    )))
}

/// The backward node of [`matmul_autodiff`]: the operands each gradient needs (`b` for
/// `a`'s, `a` for `b`'s), kept only when that gradient is wanted; the gradients'
/// products take the precision of the forward one.
#[derive(Debug)]
struct MatmulBackward {
    precision: Dtype,
}

impl<B: CpuBackend> burn::backend::autodiff::ops::Backward<B, 2> for MatmulBackward {
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 2>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let (a, b) = ops.state;
        let precision = self.precision;
        burn::backend::autodiff::ops::binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            // dA = G · Bᵀ
            |grad| {
                product::<B>(
                    B::matrix(&grad),
                    B::matrix(b.as_ref().expect("kept for a")).t(),
                    precision,
                )
            },
            // dB = Aᵀ · G
            |grad| {
                product::<B>(
                    B::matrix(a.as_ref().expect("kept for b")).t(),
                    B::matrix(&grad),
                    precision,
                )
            },
        );
    }
}

fn matmul_autodiff<B: CpuBackend>(
    a: FloatTensor<burn::backend::Autodiff<B>>,
    b: FloatTensor<burn::backend::Autodiff<B>>,
    precision: Dtype,
) -> FloatTensor<burn::backend::Autodiff<B>> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
    let output = product::<B>(
        B::matrix(a.primitive()),
        B::matrix(b.primitive()),
        precision,
    );
    let node = MatmulBackward { precision };
    match Backward::<B, 2>::prepare::<NoCheckpointing>(node, [a.node(), b.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (
                b_tracked.then(|| a.primitive().clone()),
                a_tracked.then(|| b.primitive().clone()),
            );
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// `a · b` in `precision` into a new row-major tensor of backend `B`.
fn product<B: CpuBackend>(
    a: MatrixView<'_>,
    b: MatrixView<'_>,
    precision: Dtype,
) -> FloatTensor<B> {
    let (m, n) = (a.dims.0, b.dims.1);
    B::new_tensor(&[m, n], product_values(a, b, precision))
}

/// `a · b` in `precision` (f32, or operands rounded to bf16 or f16 with f32 sums), row
/// major, on every core.
pub(crate) fn product_values(a: MatrixView<'_>, b: MatrixView<'_>, precision: Dtype) -> Vec<f32> {
    match precision {
        Dtype::F32 => gemm(a, b),
        Dtype::Bf16 => crate::bf16_gemm::product(a, b),
        Dtype::F16 => rounded_product(a, b, Dtype::F16),
        Dtype::Q8_0 | Dtype::Q4_0 | Dtype::Q4_K => {
            unreachable!("autocast takes float formats only")
        }
    }
}

/// `a · b` in `precision` as [`product_values`] computes it, on the calling thread
/// (inside a task that is already one of many: attention's heads). A bf16 product on
/// AVX512_BF16 is the only exception: its kernel splits into tasks of its own, which
/// rayon runs beside the caller's.
pub(crate) fn product_values_on_this_thread(
    a: MatrixView<'_>,
    b: MatrixView<'_>,
    precision: Dtype,
) -> Vec<f32> {
    match precision {
        Dtype::F32 => gemm_on_this_thread(a, b),
        Dtype::Bf16 if crate::bf16_gemm::has_bf16_instructions() => crate::bf16_gemm::product(a, b),
        Dtype::Bf16 | Dtype::F16 => rounded_product_with(a, b, precision, Threads::One),
        Dtype::Q8_0 | Dtype::Q4_0 | Dtype::Q4_K => {
            unreachable!("autocast takes float formats only")
        }
    }
}

/// Whether a product runs on every core or on the calling thread.
#[derive(Clone, Copy, PartialEq)]
enum Threads {
    All,
    One,
}

/// `a · b` of copies of the operands rounded to `dtype`, through the f32 [`gemm`]: the
/// result of `dtype` operands with f32 sums.
pub(crate) fn rounded_product(a: MatrixView<'_>, b: MatrixView<'_>, dtype: Dtype) -> Vec<f32> {
    rounded_product_with(a, b, dtype, Threads::All)
}

fn rounded_product_with(
    a: MatrixView<'_>,
    b: MatrixView<'_>,
    dtype: Dtype,
    threads: Threads,
) -> Vec<f32> {
    let rounded = |m: MatrixView<'_>| -> Vec<f32> {
        let (rows, cols) = m.dims;
        let mut out = vec![0.0f32; rows * cols];
        let round_row = |(r, row): (usize, &mut [f32])| {
            for (c, v) in row.iter_mut().enumerate() {
                *v = dtype.round(m.at(r, c));
            }
        };
        if cols > 0 {
            match threads {
                Threads::All => out.par_chunks_mut(cols).enumerate().for_each(round_row),
                Threads::One => out.chunks_mut(cols).enumerate().for_each(round_row),
            }
        }
        out
    };
    let (a_rounded, b_rounded) = (rounded(a), rounded(b));
    let ((m, k), (_, n)) = (a.dims, b.dims);
    let (a, b) = (
        MatrixView::new(a_rounded.as_ptr(), (m, k), k as isize, 1),
        MatrixView::new(b_rounded.as_ptr(), (k, n), n as isize, 1),
    );
    match threads {
        Threads::All => gemm(a, b),
        Threads::One => gemm_on_this_thread(a, b),
    }
}

/// `a · b` into a new row-major vector, on every core.
pub(crate) fn gemm(a: MatrixView<'_>, b: MatrixView<'_>) -> Vec<f32> {
    gemm_with(a, b, ::gemm::Parallelism::Rayon(0))
}

/// `a · b` into a new row-major vector, on the calling thread (inside a task that is
/// already one of many).
pub(crate) fn gemm_on_this_thread(a: MatrixView<'_>, b: MatrixView<'_>) -> Vec<f32> {
    gemm_with(a, b, ::gemm::Parallelism::None)
}

/// `out = a · b`, or `out += a · b` when `accumulate`, on the calling thread; `out` is
/// row-major `[a rows, b columns]`.
pub(crate) fn gemm_into_on_this_thread(
    a: MatrixView<'_>,
    b: MatrixView<'_>,
    out: &mut [f32],
    accumulate: bool,
) {
    let ((m, k), (k2, n)) = (a.dims, b.dims);
    assert_eq!(k, k2, "matrix product of [{m}, {k}] and [{k2}, {n}]");
    assert_eq!(out.len(), m * n, "a [{m}, {n}] product");
    // SAFETY: the operands are valid for their shapes and strides (MatrixView's
    // contract); the destination is the m·n elements of `out` (asserted).
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.col_stride,
            a.row_stride,
            b.ptr,
            b.col_stride,
            b.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        );
    }
}

fn gemm_with(a: MatrixView<'_>, b: MatrixView<'_>, parallelism: ::gemm::Parallelism) -> Vec<f32> {
    let ((m, k), (k2, n)) = (a.dims, b.dims);
    assert_eq!(k, k2, "matrix product of [{m}, {k}] and [{k2}, {n}]");
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the operands are valid for their shapes and strides (MatrixView's
    // contract); with `read_dst` false gemm only writes the m·n destination, which `out`
    // has room for, and every element of it is written before `set_len`.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.ptr,
            a.col_stride,
            a.row_stride,
            b.ptr,
            b.col_stride,
            b.row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    /// Products of plain and transposed operands, and both gradients, against Burn's
    /// matmul; an untracked operand gets no gradient.
    #[test]
    fn matmul_and_its_gradients_match_burns() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let a = Tensor::<2>::random([33, 70], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([50, 70], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([33, 50], Distribution::Default, &device);
        let (a, b) = (a.require_grad(), b.require_grad());
        let fused = matmul(a.clone(), b.clone().transpose());
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
        let grads = matmul(a.clone().transpose(), weights).sum().backward();
        assert!(a.grad(&grads).is_some());
        let grads = matmul(a.clone(), frozen.transpose()).sum().backward();
        assert!(a.grad(&grads).is_some() && b.grad(&grads).is_none());

        let plain = Device::ndarray();
        let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &plain);
        assert!(crate::cpu::is_on_cpu_backend(&x));
        let y = matmul(x.clone(), x.clone().transpose());
        y.into_data()
            .assert_eq(&TensorData::from([[5.0f32, 11.0], [11.0, 25.0]]), true);
    }

    /// `t` with every value rounded to bf16.
    fn rounded(t: Tensor<2>) -> Tensor<2> {
        let device = t.device();
        let dims = t.dims();
        let values: Vec<f32> = t
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| f32::from_bits(u32::from(crate::bf16_gemm::to_bf16_bits(v)) << 16))
            .collect();
        Tensor::from_data(TensorData::new(values, dims), &device)
    }

    /// Under bf16 autocast the product and both gradients are those of bf16-rounded
    /// operands (the upstream gradient rounded too), summed in f32; the backward pass
    /// keeps the forward's precision after the scope has ended.
    #[test]
    fn bf16_products_and_gradients_take_rounded_operands() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let a = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([45, 300], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([37, 45], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (a.require_grad(), b.require_grad());
        let fused = {
            let _bf16 = crate::autocast(Dtype::Bf16);
            matmul(a.clone(), b.clone().transpose())
        };
        let (ra, rb, rw) = (
            rounded(a.clone().detach()),
            rounded(b.clone().detach()),
            rounded(weights.clone()),
        );
        assert_close(
            fused.clone(),
            ra.clone().matmul(rb.clone().transpose()),
            1e-4,
        );
        let grads = (fused * weights).sum().backward();
        assert_close(a.grad(&grads).unwrap(), rw.clone().matmul(rb), 1e-4);
        assert_close(b.grad(&grads).unwrap(), rw.transpose().matmul(ra), 1e-4);

        // Rounding is what happened: the f32 product differs by more than the tolerance.
        let plain = matmul(a.clone().detach(), b.clone().detach().transpose());
        let bf16 = {
            let _bf16 = crate::autocast(Dtype::Bf16);
            matmul(a.detach(), b.detach().transpose())
        };
        let gap: f32 = (plain - bf16).abs().max().into_scalar();
        assert!(gap > 1e-2, "bf16 and f32 products differ by {gap}");
    }

    /// Outside the CPU kernels (a GPU backend), a bf16 product is the backend's own on
    /// bf16 operands, its result and both gradients cast back to f32: checked on flex's
    /// bf16 tensors against the f32 product of rounded operands (the result itself is
    /// rounded to bf16, hence the relative tolerance of a few bf16 steps).
    #[cfg(feature = "flex")]
    #[test]
    fn backend_products_cast_to_bf16_and_back() {
        let _rng = crate::tests::device_rng();
        let device = Device::flex().autodiff();
        assert!(device.supports_dtype(burn::tensor::FloatDType::BF16));
        let a = Tensor::<2>::random([13, 200], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([200, 17], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<2>::random([13, 17], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (a.require_grad(), b.require_grad());
        let product = super::backend_product(a.clone(), b.clone(), Dtype::Bf16);
        assert_eq!(product.dtype(), burn::tensor::DType::F32);
        let near = |got: Tensor<2>, want: Tensor<2>| {
            let tolerance = burn::tensor::Tolerance::<f32>::relative(2e-2).set_absolute(5e-2);
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), tolerance);
        };
        let (ra, rb, rw) = (
            rounded(a.clone().detach()),
            rounded(b.clone().detach()),
            rounded(weights.clone()),
        );
        near(product.clone(), ra.clone().matmul(rb.clone()));
        let grads = (product.clone() * weights).sum().backward();
        let (ga, gb) = (a.grad(&grads).unwrap(), b.grad(&grads).unwrap());
        assert_eq!(ga.dtype(), burn::tensor::DType::F32);
        near(ga, rw.clone().matmul(rb.transpose()));
        near(gb, ra.transpose().matmul(rw));
        // The f32 product differs: bf16 is what was computed.
        let plain = a.detach().matmul(b.detach());
        let gap: f32 = (plain - product.detach()).abs().max().into_scalar();
        assert!(gap > 1e-2, "bf16 and f32 products differ by {gap}");
    }

    /// Under f16 autocast the product is that of f16-rounded operands summed in f32.
    #[test]
    fn f16_products_take_f16_rounded_operands() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        let a = Tensor::<2>::random([9, 70], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([70, 11], Distribution::Normal(0.0, 1.0), &device);
        let round = |t: Tensor<2>| {
            let dims = t.dims();
            let values: Vec<f32> = t.into_data().to_vec::<f32>().unwrap();
            let values: Vec<f32> = values.into_iter().map(|v| Dtype::F16.round(v)).collect();
            Tensor::<2>::from_data(TensorData::new(values, dims), &device)
        };
        let f16 = {
            let _f16 = crate::autocast(Dtype::F16);
            matmul(a.clone(), b.clone())
        };
        assert_close(f16.clone(), round(a.clone()).matmul(round(b.clone())), 1e-5);
        let gap: f32 = (f16 - matmul(a, b)).abs().max().into_scalar();
        assert!(gap > 1e-4, "f16 and f32 products differ by {gap}");
    }
}
