//! Dropout with a counter-based mask.
//!
//! Burn draws a dropout mask one element at a time through a ChaCha generator and a
//! Bernoulli sampler (a tenth of a gpt2-small step on the CPU). Here each element's bit
//! comes from a hash of (seed, batch row, index in the row), so the mask is filled in
//! parallel and is the same whatever the thread count; the seed itself is drawn from the
//! device's generator, so `seed` and resumed runs stay reproducible.
//!
//! Keyed by the batch row, a row's mask does not depend on the other rows of its batch:
//! a part of a batch computed apart (on another device or process) inside
//! [`with_dropout_keys`] draws the masks the whole batch draws for those rows, so data
//! parallelism with dropout on trains exactly like one device. The index within a row
//! does not depend on the lengths of its dimensions either, so a batch padded to
//! another length keeps its masks.

use std::cell::Cell;

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::Distribution;
use rayon::prelude::*;

use crate::ELEMENTS_PER_TASK;
use crate::cpu::is_on_cpu_backend;

/// How the dropouts on this thread draw their masks (see [`with_dropout_keys`]).
#[derive(Clone, Copy, Default)]
struct Keys {
    /// The seed of the pass's sequence of mask seeds (none: the device's generator).
    seed: Option<u64>,
    /// Masks drawn so far in the pass.
    drawn: u64,
    /// Where the rows being computed start in the whole batch.
    first_row: u64,
}

thread_local! {
    static KEYS: Cell<Keys> = Cell::new(Keys::default());
}

/// Runs `f`, a forward pass over rows `first_row..` of a batch, with its dropout masks
/// keyed by `seed` and the rows' places in the whole batch: the k-th dropout inside
/// takes the k-th seed of `seed`'s sequence (instead of one from the device's
/// generator), and its rows are keyed as rows `first_row..`. The parts of a batch
/// computed apart with the same `seed` (on other devices, in other processes) so draw
/// exactly the masks of the whole batch computed at once.
pub fn with_dropout_keys<R>(seed: u64, first_row: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Keys);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEYS.set(self.0);
        }
    }
    let _restore = Restore(KEYS.replace(Keys {
        seed: Some(seed),
        drawn: 0,
        first_row: first_row as u64,
    }));
    f()
}

/// The seed of the next dropout mask: the next of [`with_dropout_keys`]'s sequence, or
/// 64 bits from the device's generator outside it.
pub(crate) fn next_seed(device: &Device) -> u64 {
    let keys = KEYS.get();
    match keys.seed {
        Some(seed) => {
            KEYS.set(Keys {
                drawn: keys.drawn + 1,
                ..keys
            });
            split_mix64(seed ^ keys.drawn.wrapping_mul(INDEX_STRIDE))
        }
        None => seed_from(device),
    }
}

/// `layer`'s dropout applied to `x`: identity unless the layer is training, `x` is on an
/// autodiff device and the probability is above 0 (the rules of Burn's `Dropout`).
///
/// # Shapes
/// - x: any
/// - returns the shape of `x`
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    if !is_on_cpu_backend(&x) {
        return layer.forward(x);
    }
    let device = x.device();
    let shape = x.shape();
    let stream = MaskStream::new(1.0 - layer.prob, next_seed(&device));
    let mask = mask(&x.dims(), stream);
    x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
}

/// 64 random bits from the device's generator.
fn seed_from(device: &Device) -> u64 {
    // Int tensors are i64 on ndarray and i32 on flex: draw words that fit (two of 32
    // bits on ndarray, as before flex was supported, so runs keep their masks).
    let wide = Tensor::<1, Int>::zeros([1], device).dtype() == burn::tensor::DType::I64;
    let (count, top, bits) = if wide {
        (2, 4_294_967_295.0, 32)
    } else {
        (4, 65_535.0, 16)
    };
    Tensor::<1, Int>::random([count], Distribution::Uniform(0.0, top), device)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("seed words")
        .into_iter()
        .fold(0u64, |seed, word| (seed << bits) ^ word as u64)
}

/// The mask of a tensor of shape `dims` (`[batch, ...]`): each value `1 / keep` with
/// probability `keep`, else 0. Within a batch row, an element's index packs its
/// coordinates 21 bits apart (`[batch, seq, width]`: `t << 21 | c`; `[batch, heads,
/// seq, seq]`: `h << 42 | i << 21 | j`, as the attention kernel keys its weights), so
/// that it does not depend on the lengths of the dimensions; rows of more than three
/// dimensions, or of dimensions of 2²¹ or more, number their elements in order.
fn mask(dims: &[usize], stream: MaskStream) -> Vec<f32> {
    let len: usize = dims.iter().product();
    let mut mask = vec![0.0f32; len];
    if len == 0 {
        return mask;
    }
    let rest = dims.get(1..).unwrap_or(&[]);
    let line = rest.last().copied().unwrap_or(1);
    let packed = rest.len() <= 3 && rest.iter().all(|&d| d < 1 << 21);
    mask.par_chunks_mut(len / dims.first().copied().unwrap_or(1))
        .enumerate()
        .for_each(|(row, values)| {
            let row = stream.row(row);
            values
                .par_chunks_mut(line)
                .with_min_len((ELEMENTS_PER_TASK / line).max(1))
                .enumerate()
                .for_each(|(index, values)| {
                    let first = match packed {
                        true => packed_line(index, &rest[..rest.len() - 1]),
                        false => (index * line) as u64,
                    };
                    for (c, value) in values.iter_mut().enumerate() {
                        *value = row.factor(first + c as u64);
                    }
                });
        });
    mask
}

/// The packed index of the first element of line `index` of a row whose leading
/// dimensions (all but the last) are `leading`.
fn packed_line(mut index: usize, leading: &[usize]) -> u64 {
    let mut packed = 0;
    for (k, &d) in leading.iter().rev().enumerate() {
        packed |= ((index % d) as u64) << (21 * (k + 1));
        index /= d;
    }
    packed
}

/// One dropout mask, each element a function of (seed, batch row, index in the row):
/// kernels that fuse dropout into a larger pass draw the same mask as [`dropout`] with
/// the same seed. The rows are numbered from [`with_dropout_keys`]'s first row, read
/// when the stream is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskStream {
    seed: u64,
    first_row: u64,
    threshold: u32,
    scale: f32,
}

impl MaskStream {
    pub fn new(keep: f64, seed: u64) -> Self {
        Self {
            seed,
            first_row: KEYS.get().first_row,
            // An element is kept when its 32 random bits fall below keep · 2³².
            threshold: (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: (1.0 / keep) as f32,
        }
    }

    /// The mask of row `row` of this tensor's batch.
    pub fn row(&self, row: usize) -> RowMask {
        RowMask {
            key: split_mix64(self.seed ^ (self.first_row + row as u64).wrapping_mul(ROW_STRIDE)),
            threshold: self.threshold,
            scale: self.scale,
        }
    }
}

/// Odd constants that spread rows and indices over the 64-bit key space.
const ROW_STRIDE: u64 = 0xD6E8_FEB8_6659_FD93;
const INDEX_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// The mask of one batch row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowMask {
    key: u64,
    threshold: u32,
    scale: f32,
}

impl RowMask {
    /// Element `index` of the row's mask: `1 / keep` or 0.
    #[inline]
    pub fn factor(&self, index: u64) -> f32 {
        let bits = (split_mix64(self.key ^ index.wrapping_mul(INDEX_STRIDE)) >> 32) as u32;
        if bits < self.threshold {
            self.scale
        } else {
            0.0
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::nn::DropoutConfig;

    #[test]
    fn keeps_the_expected_share_scaled_and_is_reproducible() {
        let _rng = crate::tests::device_rng();
        let m = mask(&[4, 250_000], MaskStream::new(0.9, 42));
        let kept = m.iter().filter(|&&v| v != 0.0).count();
        // 900,000 expected, standard deviation 300.
        assert!((kept as i64 - 900_000).abs() < 1_500, "{kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(m, mask(&[4, 250_000], MaskStream::new(0.9, 42)));
        assert_ne!(m, mask(&[4, 250_000], MaskStream::new(0.9, 43)));
        // Rows do not repeat each other.
        assert_ne!(m[..250_000], m[250_000..500_000]);

        let device = Device::ndarray().autodiff();
        let layer = DropoutConfig::new(0.25).init();
        let x = Tensor::<2>::ones([64, 64], &device).require_grad();
        device.seed(7);
        let y = dropout(&layer, x.clone());
        device.seed(7);
        let again = dropout(&layer, x.clone());
        y.clone().into_data().assert_eq(&again.into_data(), true);
        // The gradient of sum(x · mask) is the mask itself.
        let grad = x.grad(&y.clone().sum().backward()).unwrap();
        grad.into_data().assert_eq(&y.inner().into_data(), true);
        // Without autodiff (evaluation) dropout is the identity.
        let plain = Tensor::<2>::ones([4, 4], &Device::ndarray());
        dropout(&layer, plain.clone())
            .into_data()
            .assert_eq(&plain.into_data(), true);
    }

    /// Rows 2 and 3 of a batch of 4, computed as a batch of their own starting at row 2,
    /// get the whole batch's masks for those rows, whatever the device's generator
    /// holds; a row padded longer keeps its mask on its first positions; the second
    /// dropout of a pass draws another mask.
    #[test]
    fn a_rows_mask_depends_on_its_place_in_the_whole_batch_only() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray().autodiff();
        let layer = DropoutConfig::new(0.5).init();
        let drop = |rows: usize, seq: usize, first_row: usize| {
            let x = Tensor::<3>::ones([rows, seq, 8], &device).require_grad();
            device.seed(first_row as u64);
            let [a, b] = with_dropout_keys(11, first_row, || {
                [dropout(&layer, x.clone()), dropout(&layer, x)]
            })
            .map(|y| y.inner().into_data().to_vec::<f32>().unwrap());
            assert_ne!(a, b);
            a
        };
        let whole = drop(4, 5, 0);
        assert_eq!(drop(2, 5, 2), whole[2 * 40..]);
        assert_eq!(drop(2, 5, 0), whole[..2 * 40]);
        let padded = drop(4, 7, 0);
        for row in 0..4 {
            assert_eq!(
                padded[row * 56..row * 56 + 40],
                whole[row * 40..(row + 1) * 40]
            );
        }
        // Outside, the masks come from the device's generator again.
        assert!(KEYS.get().seed.is_none());
    }
}
