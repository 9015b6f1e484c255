//! Next-token cross-entropy with an ignore index (sections 5.1.2 and 7.4).

use burn::prelude::*;

pub use ember_kernels::IGNORE_INDEX;

// The collates' padding targets are what the kernels skip (the data crate does not
// depend on the kernels, so the two constants are checked equal here).
const _: () = assert!(ember_data::IGNORE_INDEX == ember_kernels::IGNORE_INDEX);

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

    /// The `[batch, seq_len]` wrapper gives the flat loss of ember-kernels (whose values
    /// are tested there against hand-computed ones).
    #[test]
    fn folds_batch_and_positions_into_rows() {
        let device = Device::ndarray();
        let values: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 / 3.0).collect();
        let logits = Tensor::<3>::from_data(TensorData::new(values, [2, 3, 4]), &device);
        let ids = vec![3i64, IGNORE_INDEX, 0, 1, 2, 3];
        let targets = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 3]), &device);
        let loss: f32 = cross_entropy(logits.clone(), targets).into_scalar();
        let flat = ember_kernels::cross_entropy_reference(
            logits.reshape([6, 4]),
            Tensor::<1, Int>::from_data(TensorData::new(ids, [6]), &device),
        );
        let want: f32 = flat.into_scalar();
        assert!((loss - want).abs() < 1e-6 && want > 0.5, "{loss} vs {want}");
        assert!((perplexity(0.0) - 1.0).abs() < 1e-12);
    }
}
