//! Products whose output rows do not depend on how many rows there are: what makes a
//! server's batches invariant (a sequence gets the same bits alone or batched).
//!
//! A matrix product library picks its method by shape: `gemm` takes a matrix-vector
//! path for one row and blocks the inner dimension differently for a few rows than for
//! many, so row 0 of a 9-row product is not, in general, the bits of the same row
//! multiplied alone. Within [`with_row_layout`], [`crate::linear`] and
//! [`crate::unembed`] split their rows as the layout says: a segment of one row (a
//! decoding sequence's token) is computed so that its result does not depend on the
//! other rows (with f32 weights, a product of its own); a longer segment (a prompt
//! chunk) is a product of its own, as it would be alone.
//!
//! Packed weights (bf16, f16, quantized) need no layout on the CPU: every output of
//! their dot products is one sequence of operations whatever the block
//! (`panel_dot.rs`), so all the rows of a step, prompt chunks and decoding tokens,
//! share one pass over the weights ([`crate::packed_weights::linear_packed`]).

use std::cell::RefCell;

use burn::prelude::*;

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

/// Every row of `x` through `product` on its own: a one-row product is the same bits
/// whatever rows surround it. (For f32 weights `gemm` is fast on one row and not
/// row-invariant on several, so decoding rows do not share their pass over f32 weights;
/// packed weights do, through `panel_dot.rs`'s row-invariant dot products.)
pub(crate) fn each_row(x: Tensor<2>, product: impl Fn(Tensor<2>) -> Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    Tensor::cat(
        (0..rows)
            .map(|r| product(x.clone().narrow(0, r, 1)))
            .collect(),
        0,
    )
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::packed_weights::{PackedMatrix, WeightFormat, packed_param};
    use burn::module::ParamId;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Distribution;

    fn random(dims: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
    }

    /// A row's output is the same bits whatever rows surround it, with f32 and bf16
    /// weights and the tied head's transposed embedding; and close to the plain
    /// product.
    #[test]
    fn each_row_is_the_same_bits_alone_and_among_others() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        device.seed(11);
        // 600 inputs: more than one of `gemm`'s 512-deep blocks.
        let layer = LinearConfig::new(600, 150).init(&device);
        let values = layer.weight.val().into_data().to_vec::<f32>().unwrap();
        // `[out, in]` rows from Burn's `[in, out]` weight.
        let matrix = PackedMatrix::from_f32_transposed(WeightFormat::Bf16, 150, 600, &values);
        let layer_bf16 = Linear {
            weight: packed_param(ParamId::new(), matrix, true, &device, false),
            bias: layer.bias.clone(),
        };
        let x = random([20, 600], &device);
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
            if name == "bf16" {
                // Packed weights need no layout: 20 rows in one product (as a prompt's
                // chunk) are each row's bits alone.
                assert_eq!(
                    crate::linear(layer, x.clone()).into_data(),
                    among.clone().into_data(),
                    "{name} without a layout"
                );
            }
            among.into_data().assert_approx_eq::<f32>(
                &crate::linear(layer, x.clone()).into_data(),
                burn::tensor::Tolerance::absolute(1e-4),
            );
        }
    }
}
