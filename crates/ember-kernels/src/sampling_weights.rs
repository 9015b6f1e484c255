//! The weights a sampler draws the next token by: `exp((logit − max) / temperature)` for
//! every token of the vocabulary, with their sums by blocks.
//!
//! A server draws a token for every sequence of every step. With the C library's `exp`
//! in f64, one element at a time, that was 5.6% of a step of 8 sequences of a
//! 151,936-token vocabulary (perf, 2-core Zen 4, docs/serving.md); here the maximum,
//! the exponentials (the kernels' vectorised [`exp`], within 2 ulp of `f32::exp`) and
//! the sums run as wide as the CPU allows. The block sums let a draw skip whole blocks
//! instead of walking every token.

use crate::cross_entropy::{LANES, max_of};
use crate::exp::exp;
use crate::simd::widest_fn;

/// Tokens per block of [`temperature_weights`]'s sums.
pub const WEIGHT_BLOCK: usize = 1024;

/// Each token's weight `exp((logits[i] − max) / temperature)`, `max` the largest logit
/// (NaN ignored), and the sum of each [`WEIGHT_BLOCK`] tokens' weights: f32 partial
/// sums within the block, returned in f64. A NaN logit has a NaN weight, so its block's
/// sum is NaN; so has an infinite largest logit (every finite one then weighs 0).
///
/// # Shapes
/// - logits: `[vocab]`
/// - weights: `[vocab]` (written)
/// - returns `[vocab.div_ceil(WEIGHT_BLOCK)]`
pub fn temperature_weights(logits: &[f32], temperature: f32, weights: &mut [f32]) -> Vec<f64> {
    assert_eq!(
        logits.len(),
        weights.len(),
        "{} logits for {} weights",
        logits.len(),
        weights.len()
    );
    let mut sums = vec![0.0f64; logits.len().div_ceil(WEIGHT_BLOCK)];
    write_weights(logits, temperature, weights, &mut sums);
    sums
}

widest_fn! {
    fn write_weights(logits: &[f32], temperature: f32, weights: &mut [f32], sums: &mut [f64]) {
        let max = max_of(logits);
        // Plain loops: iterator adaptors with closures would be compiled apart from this
        // vectorised copy.
        for ((logits, weights), sum) in logits
            .chunks(WEIGHT_BLOCK)
            .zip(weights.chunks_mut(WEIGHT_BLOCK))
            .zip(sums.iter_mut())
        {
            let mut lanes = [0.0f32; LANES];
            let mut pairs = logits.chunks_exact(LANES).zip(weights.chunks_exact_mut(LANES));
            for (logits, weights) in &mut pairs {
                for ((lane, weight), &logit) in lanes.iter_mut().zip(weights).zip(logits) {
                    *weight = exp((logit - max) / temperature);
                    *lane += *weight;
                }
            }
            let whole = logits.len() / LANES * LANES;
            let mut total = 0.0f64;
            for (weight, &logit) in weights[whole..].iter_mut().zip(&logits[whole..]) {
                *weight = exp((logit - max) / temperature);
                total += f64::from(*weight);
            }
            for lane in lanes {
                total += f64::from(lane);
            }
            *sum = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_the_exponentials_of_the_scaled_logits_and_blocks_sum_them() {
        let vocab = 2 * WEIGHT_BLOCK + 37;
        let logits: Vec<f32> = (0..vocab)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        let mut weights = vec![0.0; vocab];
        let sums = temperature_weights(&logits, 0.8, &mut weights);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max, 9.98);
        for (&logit, &weight) in logits.iter().zip(&weights) {
            // Against the exponential of the same f32 argument: within 2 ulp.
            let exact = f64::from((logit - max) / 0.8).exp();
            assert!(
                (f64::from(weight) - exact).abs() <= 4e-7 * exact,
                "logit {logit}: {weight} against {exact}"
            );
        }
        assert_eq!(sums.len(), 3);
        for (block, &sum) in weights.chunks(WEIGHT_BLOCK).zip(&sums) {
            let exact: f64 = block.iter().map(|&w| f64::from(w)).sum();
            assert!((sum - exact).abs() <= 1e-6 * exact, "{sum} against {exact}");
        }
        // The largest logit's weight is exactly 1.
        let top = logits.iter().position(|&l| l == max).unwrap();
        assert_eq!(weights[top], 1.0);
    }

    #[test]
    fn a_nan_logit_spoils_only_its_own_block() {
        let mut logits = vec![0.5f32; 3 * WEIGHT_BLOCK];
        logits[WEIGHT_BLOCK + 5] = f32::NAN;
        let mut weights = vec![0.0; logits.len()];
        let sums = temperature_weights(&logits, 1.0, &mut weights);
        assert_eq!(sums[0], WEIGHT_BLOCK as f64);
        assert!(sums[1].is_nan());
        assert_eq!(sums[2], WEIGHT_BLOCK as f64);
    }
}
