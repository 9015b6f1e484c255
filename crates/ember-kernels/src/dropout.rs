//! Dropout with a counter-based mask.
//!
//! Burn draws a dropout mask one element at a time through a ChaCha generator and a
//! Bernoulli sampler (a tenth of a gpt2-small step on the CPU). Here each element's bit
//! comes from a hash of (seed, index), so the mask is filled in parallel and is the same
//! whatever the thread count; the seed itself is drawn from the device's generator, so
//! `seed` and resumed runs stay reproducible.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::Distribution;
use rayon::prelude::*;

use crate::ELEMENTS_PER_TASK;
use crate::cpu::is_on_cpu_backend;

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
    let mask = mask(shape.num_elements(), 1.0 - layer.prob, seed_from(&device));
    x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
}

/// 64 random bits from the device's generator (which the trainer seeds every step).
pub(crate) fn seed_from(device: &Device) -> u64 {
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

/// `len` values, each `1 / keep` with probability `keep`, else 0.
pub(crate) fn mask(len: usize, keep: f64, seed: u64) -> Vec<f32> {
    let stream = MaskStream::new(keep, seed);
    let mut mask = Vec::with_capacity(len);
    (0..len)
        .into_par_iter()
        .with_min_len(ELEMENTS_PER_TASK)
        .map(|i| stream.factor(i))
        .collect_into_vec(&mut mask);
    mask
}

/// The elements of one dropout mask, each a function of (seed, index): kernels that
/// fuse dropout into a larger pass draw the same mask as [`dropout`] with the same seed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskStream {
    seed: u64,
    threshold: u32,
    scale: f32,
}

impl MaskStream {
    pub fn new(keep: f64, seed: u64) -> Self {
        Self {
            seed,
            // An element is kept when its 32 random bits fall below keep · 2³².
            threshold: (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: (1.0 / keep) as f32,
        }
    }

    /// Element `index` of the mask: `1 / keep` or 0.
    #[inline]
    pub fn factor(&self, index: usize) -> f32 {
        let bits = (split_mix64(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            >> 32) as u32;
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
        let m = mask(1_000_000, 0.9, 42);
        let kept = m.iter().filter(|&&v| v != 0.0).count();
        // 900,000 expected, standard deviation 300.
        assert!((kept as i64 - 900_000).abs() < 1_500, "{kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(m, mask(1_000_000, 0.9, 42));
        assert_ne!(m, mask(1_000_000, 0.9, 43));

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
}
