//! Products whose output rows do not depend on how many rows there are: what makes a
//! server's batches invariant (a sequence gets the same bits alone or batched).
//!
//! A matrix product library picks its method by shape: `gemm` takes a matrix-vector
//! path for one row and blocks the inner dimension differently for a few rows than for
//! many, so row 0 of a 9-row product is not, in general, the bits of the same row
//! multiplied alone. Within [`with_row_layout`], [`crate::linear`] and
//! [`crate::unembed`] split their rows as the layout says: a segment of one row (a
//! decoding sequence's token) is computed by a kernel that accumulates every output in
//! one fixed order whatever the other rows are, all such rows of a run of segments in one
//! pass over the weights; a longer segment (a prompt chunk) is a product of its own, as
//! it would be alone.

use std::cell::RefCell;

use burn::nn::Linear;
use burn::prelude::*;
use rayon::prelude::*;

use crate::cpu::{CpuBackend, MatrixView, with_cpu_backend};
use crate::simd::widest_fn;

/// The rows of the products in a [`with_row_layout`] scope: consecutive segments, each
/// the new positions of one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLayout {
    /// Rows per segment, in order.
    pub segments: Vec<usize>,
}

impl RowLayout {
    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.segments.iter().sum()
    }
}

thread_local! {
    static LAYOUT: RefCell<Option<RowLayout>> = const { RefCell::new(None) };
}

/// Runs `f` with `layout` for the products of [`crate::linear`] and [`crate::unembed`]
/// on this thread whose row count is the layout's: each one-row segment through the
/// row-invariant kernel, each longer segment as a product of its own. Products with
/// another row count are left alone.
pub fn with_row_layout<R>(layout: RowLayout, f: impl FnOnce() -> R) -> R {
    /// Puts the outer layout back, also when `f` panics.
    struct Restore(Option<RowLayout>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LAYOUT.with(|l| *l.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(LAYOUT.with(|l| l.borrow_mut().replace(layout)));
    f()
}

/// The scope's layout, when a product has its row count.
pub(crate) fn layout_for(rows: usize) -> Option<RowLayout> {
    LAYOUT.with(|l| l.borrow().as_ref().filter(|l| l.rows() == rows).cloned())
}

/// `product(rows)` for each group of `x`'s rows (`[rows, d]`) as `layout` lays them
/// out: `single` for runs of one-row segments, `whole` for each longer one; the results
/// stacked.
pub(crate) fn by_layout(
    x: Tensor<2>,
    layout: &RowLayout,
    single: impl Fn(Tensor<2>) -> Tensor<2>,
    whole: impl Fn(Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut singles = 0;
    for &n in &layout.segments {
        if n == 1 {
            singles += 1;
            continue;
        }
        if singles > 0 {
            parts.push(single(x.clone().narrow(0, start, singles)));
            start += singles;
            singles = 0;
        }
        parts.push(whole(x.clone().narrow(0, start, n)));
        start += n;
    }
    if singles > 0 {
        parts.push(single(x.clone().narrow(0, start, singles)));
    }
    Tensor::cat(parts, 0)
}

/// `layer` on rows that each stand alone (f32 weights): [`rows_times`] on the CPU
/// backends, else each row as a product of its own.
pub(crate) fn single_rows_linear(
    layer: &Linear,
    x: Tensor<2>,
    whole: impl Fn(Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    let weight = layer.weight.val();
    let product = with_cpu_backend!(&x, B => rows_times::<B>(&x, &weight)).flatten();
    match product {
        Some(y) => match &layer.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        },
        None => each_row(x, whole),
    }
}

/// Every row of `x` through `product` on its own.
pub(crate) fn each_row(x: Tensor<2>, product: impl Fn(Tensor<2>) -> Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    Tensor::cat(
        (0..rows)
            .map(|r| product(x.clone().narrow(0, r, 1)))
            .collect(),
        0,
    )
}

/// `x · w` for plain tensors on backend `B`, each output a sum over the inner
/// dimension in one fixed order; `None` for tracked tensors or a layout it does not
/// read.
///
/// # Shapes
/// - x: `[rows, k]`, w: `[k, n]` → `[rows, n]`
pub(crate) fn rows_times<B: CpuBackend>(x: &Tensor<2>, w: &Tensor<2>) -> Option<Tensor<2>> {
    let (x, w) = (B::plain(x)?, B::plain(w)?);
    let values = B::values(&x);
    let w = B::matrix(&w);
    let [rows, k] = [B::shape(&x)[0], B::shape(&x)[1]];
    let out = rows_times_matrix(&values, rows, k, &w)?;
    Some(B::from_plain(B::new_tensor(&[rows, w.dims.1], out)))
}

/// Output columns per task.
const COLUMNS_PER_TASK: usize = 64;

/// `x · w`, row-major `[rows, n]`: rows of `w` contiguous (a linear layer's `[in, out]`
/// weight) through [`accumulate`], columns contiguous (a tied head's transposed
/// embedding) through dot products.
fn rows_times_matrix(x: &[f32], rows: usize, k: usize, w: &MatrixView<'_>) -> Option<Vec<f32>> {
    let (wk, n) = w.dims;
    assert_eq!(wk, k, "inner dimensions");
    if k == 0 || n == 0 {
        return Some(vec![0.0; rows * n]);
    }
    let blocks: Vec<(usize, Vec<f32>)> = if w.col_stride == 1 && w.row_stride >= n as isize {
        let stride = w.row_stride as usize;
        // SAFETY: the view covers `k` rows of `stride` values, the last `n` long.
        let w = unsafe { std::slice::from_raw_parts(w.ptr, (k - 1) * stride + n) };
        (0..n.div_ceil(COLUMNS_PER_TASK))
            .into_par_iter()
            .map(|task| {
                let first = task * COLUMNS_PER_TASK;
                let width = COLUMNS_PER_TASK.min(n - first);
                let mut block = vec![0.0f32; rows * width];
                accumulate(x, rows, k, w, stride, first, &mut block);
                (first, block)
            })
            .collect()
    } else if w.row_stride == 1 && w.col_stride >= k as isize {
        let stride = w.col_stride as usize;
        // SAFETY: the view covers `n` columns of `stride` values, the last `k` long.
        let w = unsafe { std::slice::from_raw_parts(w.ptr, (n - 1) * stride + k) };
        let dot = crate::half_weights::dot_f32_kernel();
        (0..n.div_ceil(COLUMNS_PER_TASK))
            .into_par_iter()
            .map(|task| {
                let first = task * COLUMNS_PER_TASK;
                let width = COLUMNS_PER_TASK.min(n - first);
                let mut block = vec![0.0f32; rows * width];
                for r in 0..rows {
                    for c in 0..width {
                        let column = &w[(first + c) * stride..(first + c) * stride + k];
                        block[r * width + c] = dot(&x[r * k..(r + 1) * k], column);
                    }
                }
                (first, block)
            })
            .collect()
    } else {
        return None;
    };
    let mut out = vec![0.0f32; rows * n];
    for (first, block) in blocks {
        let width = block.len() / rows.max(1);
        for r in 0..rows {
            out[r * n + first..r * n + first + width]
                .copy_from_slice(&block[r * width..(r + 1) * width]);
        }
    }
    Some(out)
}

widest_fn! {
    /// `block[r, c] = Σ_i x[r, i] · w[i, first + c]`, each sum taken over `i` in order
    /// (whatever `rows` and the block are: row-invariant). `w` rows are `stride` apart.
    fn accumulate(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[f32],
        stride: usize,
        first: usize,
        block: &mut [f32],
    ) {
        let width = block.len() / rows;
        for i in 0..k {
            let w_row = &w[i * stride + first..i * stride + first + width];
            for r in 0..rows {
                let a = x[r * k + i];
                for (out, &wv) in block[r * width..(r + 1) * width].iter_mut().zip(w_row) {
                    *out += a * wv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::half_weights::{HalfKind, HalfMatrix, half_param};
    use burn::module::ParamId;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    fn random(dims: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
    }

    /// A row's output is the same bits whatever rows surround it, with f32 and bf16
    /// weights and the tied head's transposed embedding; and close to the plain
    /// product.
    #[test]
    fn each_row_is_the_same_bits_alone_and_among_others() {
        let device = Device::ndarray();
        device.seed(11);
        let layer = LinearConfig::new(40, 150).init(&device);
        let values = layer.weight.val().into_data().to_vec::<f32>().unwrap();
        // `[out, in]` rows from Burn's `[in, out]` weight.
        let matrix = HalfMatrix::from_f32_transposed(HalfKind::Bf16, 150, 40, &values);
        let layer_bf16 = Linear {
            weight: half_param(ParamId::new(), matrix, true, &device, false),
            bias: layer.bias.clone(),
        };
        let x = random([20, 40], &device);
        for (name, layer) in [("f32", &layer), ("bf16", &layer_bf16)] {
            let alone = with_row_layout(RowLayout { segments: vec![1] }, || {
                crate::linear(layer, x.clone().narrow(0, 3, 1))
            });
            let among = with_row_layout(
                RowLayout {
                    segments: vec![1; 20],
                },
                || crate::linear(layer, x.clone()),
            );
            assert_eq!(
                alone.into_data(),
                among.clone().narrow(0, 3, 1).into_data(),
                "{name}"
            );
            // Mixed with a chunk of 5 rows, which is a product of its own.
            let mixed = with_row_layout(
                RowLayout {
                    segments: vec![1, 1, 1, 1, 5, 1],
                },
                || crate::linear(layer, x.clone().narrow(0, 0, 10)),
            );
            let chunk = crate::linear(layer, x.clone().narrow(0, 4, 5));
            assert_eq!(
                mixed.clone().narrow(0, 3, 1).into_data(),
                among.clone().narrow(0, 3, 1).into_data(),
                "{name}"
            );
            assert_eq!(
                mixed.clone().narrow(0, 9, 1).into_data(),
                among.clone().narrow(0, 9, 1).into_data(),
                "{name}"
            );
            assert_eq!(
                mixed.narrow(0, 4, 5).into_data(),
                chunk.into_data(),
                "{name}"
            );
            among.into_data().assert_approx_eq::<f32>(
                &crate::linear(layer, x.clone()).into_data(),
                burn::tensor::Tolerance::absolute(1e-4),
            );
        }
    }
}
