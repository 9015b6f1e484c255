//! Next-token cross-entropy with an ignore index (sections 5.1.2 and 7.4).

use burn::prelude::*;

pub use ember_kernels::IGNORE_INDEX;

/// Mean cross-entropy over every target that is not [`IGNORE_INDEX`].
///
/// The mean is over the counted targets only, as `torch.nn.functional.cross_entropy`
/// computes it; a batch with no counted target gives 0.
///
/// # Shapes
/// - logits: `[batch, seq_len, vocab]`
/// - targets: `[batch, seq_len]`
/// - returns `[1]`
///
/// On the CPU backend this is one fused pass each way (ember-kernels); the log-softmax
/// over the vocabulary is never materialised.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [batch, seq_len, vocab] = logits.dims();
    let n = batch * seq_len;
    ember_kernels::cross_entropy(logits.reshape([n, vocab]), targets.reshape([n]))
}

/// `exp(loss)`: the effective number of tokens the model hesitates between.
pub fn perplexity(loss: f64) -> f64 {
    loss.exp()
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;

    #[test]
    fn matches_a_hand_computed_value_and_ignores_masked_targets() {
        let device = Device::ndarray();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5], [1, 2, 3]),
            &device,
        );
        let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 0], [1, 2]), &device);
        let l0 = -(3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        let l1 = 3f64.ln();
        let loss: f32 = cross_entropy(logits.clone(), targets).into_scalar();
        assert!((loss as f64 - (l0 + l1) / 2.0).abs() < 1e-6);
        let masked =
            Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, IGNORE_INDEX], [1, 2]), &device);
        let loss: f32 = cross_entropy(logits, masked).into_scalar();
        assert!((loss as f64 - l0).abs() < 1e-6);
        assert!((perplexity(0.0) - 1.0).abs() < 1e-12);
    }
}
