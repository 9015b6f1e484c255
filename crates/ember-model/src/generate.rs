//! Text generation (sections 4.7 and 5.3): greedy decoding, temperature, top-k and
//! top-p sampling, with or without the KV cache.
//!
//! Sampling happens on the host over the last position's logits, with a seeded ChaCha
//! generator, so a seed gives the same text on every backend.
//!
//! Context overflow follows the book's `generate_text_simple`: the model sees the last
//! `context_length` tokens. With the KV cache, once the sequence is longer than the
//! context, the cache is rebuilt from that window at every step: exactly the book's
//! result, at the uncached cost.

use std::ops::ControlFlow;

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::CausalLm;

/// How to pick each new token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Number of tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (nucleus sampling).
    pub top_p: Option<f64>,
    /// Seed of the sampling generator.
    pub seed: u64,
    /// Stop after producing any of these tokens (e.g. `<|endoftext|>`; a model may have
    /// several end-of-text tokens), which is kept.
    pub stop_tokens: Vec<u32>,
    /// Use the KV cache (same ids, far less work per token).
    pub use_kv_cache: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 50,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 123,
            stop_tokens: Vec::new(),
            use_kv_cache: true,
        }
    }
}

/// Errors of [`generate`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    /// Nothing to continue.
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    /// A parameter out of range.
    #[error("invalid generation setting: {0}")]
    Invalid(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownToken {
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
}

impl GenerationConfig {
    /// Checks the sampling settings (temperature, top-k, top-p).
    pub fn validate(&self) -> Result<(), GenerateError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(GenerateError::Invalid(format!(
                "temperature {} must be >= 0",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(GenerateError::Invalid("top_k must be at least 1".into()));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(GenerateError::Invalid(format!(
                "top_p {p} must be in (0, 1]"
            )));
        }
        Ok(())
    }
}

/// Picks the next token from one position's logits.
///
/// Greedy when `temperature == 0` (the first maximum, like `torch.argmax`); otherwise
/// top-k, then temperature, then top-p, then a draw from the softmax.
///
/// Each token's weight is `exp((logit - max) / temperature)`, computed in f32 as wide
/// as the CPU allows ([`ember_kernels::temperature_weights`]) and summed in f64. The
/// vocabulary is sorted only as far as top-k and top-p need it (a server samples every
/// sequence of every step, and a full sort of a 150,000-token vocabulary took longer
/// than the step's arithmetic): without either the draw walks the tokens in id order,
/// which is the same distribution, skipping whole blocks by their sums. Weights that
/// are not finite (a NaN or infinite logit) fall back to the greedy choice.
pub fn sample_next_token(logits: &[f32], config: &GenerationConfig, rng: &mut impl Rng) -> u32 {
    if config.temperature == 0.0 || logits.len() < 2 {
        return argmax(logits);
    }
    // Every token's weight, once: the draw, top-p's total and its nucleus read them.
    let mut weights = vec![0.0f32; logits.len()];
    let block_sums =
        ember_kernels::temperature_weights(logits, config.temperature as f32, &mut weights);
    let total: f64 = block_sums.iter().sum();
    if !total.is_finite() || total <= 0.0 {
        return argmax(logits);
    }
    let weight = |id: u32| f64::from(weights[id as usize]);
    let vocab = logits.len();
    // The most likely first up to the one whose cumulative share of `total` reaches
    // top_p.
    let nucleus = |ids: &[u32], total: f64, top_p: f64| {
        let mut cumulative = 0.0;
        ids.iter().position(|&id| {
            cumulative += weight(id) / total;
            cumulative >= top_p
        })
    };
    let candidates: Vec<u32> = match (config.top_k, config.top_p) {
        (None, None) => {
            return draw_by_blocks(&weights, &block_sums, total, rng) as u32;
        }
        (Some(k), None) => top_ids(logits, k.min(vocab)),
        (Some(k), Some(top_p)) => {
            // The nucleus is measured against the top k's weight.
            let mut ids = top_ids(logits, k.min(vocab));
            let total: f64 = ids.iter().map(|&id| weight(id)).sum();
            if let Some(last) = nucleus(&ids, total, top_p) {
                ids.truncate(last + 1);
            }
            ids
        }
        (None, Some(top_p)) => {
            // Measured against the whole vocabulary; sorted only as far as needed: the
            // 64 most likely, then eight times more.
            let mut n = vocab.min(64);
            loop {
                let ids = top_ids(logits, n);
                match nucleus(&ids, total, top_p) {
                    Some(last) => break ids[..=last].to_vec(),
                    None if n == vocab => break ids,
                    None => n = (n * 8).min(vocab),
                }
            }
        }
    };
    let chosen: Vec<f64> = candidates.iter().map(|&id| weight(id)).collect();
    draw(&chosen, rng).map_or(candidates[0], |i| candidates[i])
}

/// An index drawn in proportion to `weights` (`None` if they sum to nothing).
fn draw(weights: &[f64], rng: &mut impl Rng) -> Option<usize> {
    let total: f64 = weights.iter().sum();
    walk(weights, rng.random::<f64>() * total)
}

/// An index drawn in proportion to `weights`, whose blocks of
/// [`ember_kernels::WEIGHT_BLOCK`] sum to `block_sums` and all to `total` (finite,
/// positive): the block that holds the draw found by its sum, then the token within it.
fn draw_by_blocks(weights: &[f32], block_sums: &[f64], total: f64, rng: &mut impl Rng) -> usize {
    let mut left = rng.random::<f64>() * total;
    let blocks = weights.chunks(ember_kernels::WEIGHT_BLOCK);
    for (b, (block, &sum)) in blocks.zip(block_sums).enumerate() {
        if left < sum {
            // A block whose sum exceeds `left` has a token with weight.
            if let Some(i) = walk(block, left) {
                return b * ember_kernels::WEIGHT_BLOCK + i;
            }
        }
        left -= sum;
    }
    // Rounding left a little past the last block: the last token with any weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// The index at which `left` runs out, walking `weights` in order; when rounding leaves
/// a little over (the weights summed in another order), the last one with any weight.
fn walk<W: Copy + Into<f64>>(weights: &[W], mut left: f64) -> Option<usize> {
    for (i, &w) in weights.iter().enumerate() {
        left -= w.into();
        if left < 0.0 {
            return Some(i);
        }
    }
    weights.iter().rposition(|&w| w.into() > 0.0)
}

/// The ids of the `n` largest logits, largest first, ties in id order (the order of
/// `total_cmp`, NaN above infinity).
fn top_ids(logits: &[f32], n: usize) -> Vec<u32> {
    // A logit's bits made to sort as `total_cmp` does, as unsigned integers.
    let ordered = |v: f32| {
        let bits = v.to_bits();
        if bits >> 31 == 1 {
            !bits
        } else {
            bits | 1 << 31
        }
    };
    // Largest first, then the lower id: one integer per token, sorted as integers.
    let mut keys: Vec<u64> = logits
        .iter()
        .enumerate()
        .map(|(id, &v)| (u64::from(!ordered(v)) << 32) | id as u64)
        .collect();
    if n < keys.len() {
        keys.select_nth_unstable(n);
        keys.truncate(n);
    }
    keys.sort_unstable();
    keys.into_iter().map(|key| key as u32).collect()
}

/// The token picker of one generation: its settings and its seeded generator (ChaCha8
/// from [`GenerationConfig::seed`]), so that a seed gives the same text wherever the
/// logits are the same ([`generate`], a server's batch).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: GenerationConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `config`, its generator at the start of `config.seed`'s stream.
    pub fn new(config: GenerationConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// The settings.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The next token, from the last position's logits ([`sample_next_token`]).
    pub fn next_token(&mut self, logits: &[f32]) -> u32 {
        sample_next_token(logits, &self.config, &mut self.rng)
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Fails for an empty prompt or a token outside the model's vocabulary (what
/// [`generate`] refuses), so a caller can check before printing anything.
pub fn check_prompt(model: &impl CausalLm, prompt: &[u32]) -> Result<(), GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let vocab_size = model.vocab_size();
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(GenerateError::UnknownToken { id, vocab_size });
    }
    Ok(())
}

/// Prompt tokens read per forward pass: [`generate`] reads a prompt in passes that end
/// at multiples of this in the sequence's own positions (and a server's chunked prefill
/// by default), so that activation memory does not grow with the prompt.
pub const PREFILL_CHUNK: usize = 256;

/// Continue `prompt` by up to `config.max_new_tokens` tokens; `on_token` sees each new
/// token as it is produced (for streaming output). Returns the new tokens only.
pub fn generate(
    model: &impl CausalLm,
    prompt: &[u32],
    config: &GenerationConfig,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, GenerateError> {
    generate_until(model, prompt, config, device, |id| {
        on_token(id);
        ControlFlow::Continue(())
    })
}

/// [`generate`], stopping early when `on_token` says so (a stop string was produced,
/// the client went away): the token it was given is the last one returned.
pub fn generate_until(
    model: &impl CausalLm,
    prompt: &[u32],
    config: &GenerationConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Vec<u32>, GenerateError> {
    config.validate()?;
    check_prompt(model, prompt)?;
    let context = model.context_length();
    let mut sampler = Sampler::new(config.clone());
    let mut tokens = prompt.to_vec();
    let mut cache = model.new_cache();
    // Index in `tokens` of the first position held in the cache.
    let mut cache_start = 0;
    let ids_tensor = |ids: &[u32]| {
        let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), device)
    };
    let mut generated = Vec::new();
    for _ in 0..config.max_new_tokens {
        let window_start = tokens.len().saturating_sub(context);
        let logits = if config.use_kv_cache {
            let uncached = cache_start + cache.len();
            if window_start > cache_start || tokens.len() - uncached + cache.len() > context {
                cache.reset();
                cache_start = window_start;
            }
            // A long prompt is read in chunks, so that the activations of one pass are
            // bounded whatever its length; the boundaries fall where a server's
            // chunked prefill puts them, so both compute the same.
            let end = tokens.len() - cache_start;
            let mut logits = None;
            while cache.len() < end {
                let done = cache.len();
                let next = ((done / PREFILL_CHUNK + 1) * PREFILL_CHUNK).min(end);
                let feed = &tokens[cache_start + done..cache_start + next];
                logits = Some(
                    model
                        .next_token_logits(ids_tensor(feed), &mut cache)
                        .expect("the window fits the context by construction"),
                );
            }
            logits.expect("at least the last token is uncached")
        } else {
            let logits = model.logits(ids_tensor(&tokens[window_start..]));
            let [_, seq_len, vocab] = logits.dims();
            logits
                .slice(s![.., seq_len - 1..seq_len, ..])
                .reshape([1, vocab])
        };
        let last: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float logits");
        let next = sampler.next_token(&last);
        tokens.push(next);
        generated.push(next);
        if on_token(next).is_break() || config.stop_tokens.contains(&next) {
            break;
        }
    }
    Ok(generated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        let config = GenerationConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            sample_next_token(&[0.1, 3.0, 3.0, -1.0], &config, &mut rng),
            1
        );
    }

    /// The book's section 5.3 vocabulary and next-token logits.
    #[allow(clippy::approx_constant)] // 6.28 is a logit, not 2π.
    const BOOK_LOGITS: [f32; 9] = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79];

    /// How often each token of `logits` is drawn in `draws` draws from `rng`.
    fn draw_counts(
        logits: &[f32],
        config: &GenerationConfig,
        rng: &mut ChaCha8Rng,
        draws: usize,
    ) -> Vec<usize> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sample_next_token(logits, config, rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn temperature_and_top_k_shape_the_distribution() {
        let draw = |config: &GenerationConfig| {
            draw_counts(
                &BOOK_LOGITS,
                config,
                &mut ChaCha8Rng::seed_from_u64(123),
                1000,
            )
        };
        let t1 = draw(&GenerationConfig {
            temperature: 1.0,
            ..Default::default()
        });
        // softmax(BOOK_LOGITS): forward 0.5721, toward 0.3576, closer 0.0609, inches 0.0010
        assert!((t1[3] as i64 - 572).abs() < 50, "{t1:?}");
        assert!((t1[7] as i64 - 358).abs() < 50, "{t1:?}");
        let cold = draw(&GenerationConfig {
            temperature: 0.1,
            ..Default::default()
        });
        assert!(cold[3] > 985, "{cold:?}");
        let top3 = draw(&GenerationConfig {
            temperature: 1.0,
            top_k: Some(3),
            ..Default::default()
        });
        let allowed = [0, 3, 7];
        assert!(
            top3.iter()
                .enumerate()
                .all(|(i, &c)| c == 0 || allowed.contains(&i))
        );
        let nucleus = draw(&GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.9),
            ..Default::default()
        });
        // forward + toward reach 0.93 ≥ 0.9: nothing else survives.
        assert_eq!(nucleus[3] + nucleus[7], 1000, "{nucleus:?}");
    }

    #[test]
    fn top_ids_are_the_largest_first_ties_by_id() {
        let logits = [0.5, -1.0, 2.0, 0.5, f32::NEG_INFINITY, -0.0, 0.0, 2.0];
        assert_eq!(top_ids(&logits, 8), [2, 7, 0, 3, 6, 5, 1, 4]);
        assert_eq!(top_ids(&logits, 3), [2, 7, 0]);
        assert_eq!(top_ids(&logits, 0), [0u32; 0]);
    }

    /// Over a vocabulary whose nucleus is hundreds of tokens (more than the first
    /// partial sort takes), exactly the smallest set of the most likely tokens reaching
    /// top_p is drawn from, each about as often as its share of the set's probability;
    /// with top-k as well, only the top k's.
    #[test]
    fn top_p_keeps_exactly_the_nucleus_of_a_large_vocabulary() {
        // Logits 0, -0.01, -0.02, ... shuffled over 5,000 ids.
        let vocab = 5000;
        let rank_of = |id: usize| (id * 1237) % vocab;
        let logits: Vec<f32> = (0..vocab).map(|id| -0.01 * rank_of(id) as f32).collect();
        let probs: Vec<f64> = {
            let w: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
            let total: f64 = w.iter().sum();
            w.iter().map(|w| w / total).collect()
        };
        let mut by_rank: Vec<usize> = (0..vocab).collect();
        by_rank.sort_by_key(|&id| rank_of(id));
        let nucleus_size = |top_p: f64| {
            let mut cumulative = 0.0;
            by_rank
                .iter()
                .position(|&id| {
                    cumulative += probs[id];
                    cumulative >= top_p
                })
                .unwrap()
                + 1
        };
        let top_p = 0.5;
        let size = nucleus_size(top_p);
        assert!(size > 64, "the nucleus is {size} tokens");
        let config = GenerationConfig {
            temperature: 1.0,
            top_p: Some(top_p),
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let draws = 20_000;
        let counts = draw_counts(&logits, &config, &mut rng, draws);
        let drawn: Vec<usize> = (0..vocab).filter(|&id| counts[id] > 0).collect();
        assert!(drawn.iter().all(|&id| rank_of(id) < size));
        // The most likely token's share of the nucleus.
        let top = by_rank[0];
        let share: f64 = probs[top] / by_rank[..size].iter().map(|&id| probs[id]).sum::<f64>();
        let expected = share * draws as f64;
        assert!(
            (counts[top] as f64 - expected).abs() < 4.0 * expected.sqrt(),
            "{} draws of the top token, {expected:.0} expected",
            counts[top]
        );
        // With top-k 10 the nucleus is measured within those 10.
        let config = GenerationConfig {
            top_k: Some(10),
            top_p: Some(0.35),
            ..config
        };
        for _ in 0..1000 {
            let id = sample_next_token(&logits, &config, &mut rng) as usize;
            // 0.35 of the top 10 (weights e^-0.00 .. e^-0.09) is their first four.
            assert!(rank_of(id) < 4, "rank {}", rank_of(id));
        }
    }

    /// Over a vocabulary of several blocks of weights, each token is drawn about as
    /// often as its share (the block sums find the block, the walk the token, the last
    /// block partial), a token of no weight never; a NaN or infinite logit makes the
    /// draw greedy.
    #[test]
    fn draws_over_blocks_follow_the_weights() {
        let vocab = 3 * ember_kernels::WEIGHT_BLOCK + 100;
        let mut logits = vec![f32::NEG_INFINITY; vocab];
        // Weights 1, 1, 2, 3 at temperature 1 (ln 2, ln 3 relative to id 5's 0).
        let tokens = [5, 2047, 2048, vocab - 1];
        for (&id, share) in tokens.iter().zip([1.0f32, 1.0, 2.0, 3.0]) {
            logits[id] = share.ln();
        }
        let config = GenerationConfig {
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let draws = 7000;
        let counts = draw_counts(&logits, &config, &mut rng, draws);
        for (&id, expected) in tokens.iter().zip([1000.0, 1000.0, 2000.0, 3000.0]) {
            assert!(
                (counts[id] as f64 - expected).abs() < 4.0 * f64::sqrt(expected),
                "token {id}: {} draws, {expected} expected",
                counts[id]
            );
        }
        assert_eq!(tokens.iter().map(|&id| counts[id]).sum::<usize>(), draws);
        for not_finite in [f32::NAN, f32::INFINITY] {
            let logits = [0.0, not_finite, 1.0, 0.5];
            let greedy = argmax(&logits);
            for _ in 0..10 {
                assert_eq!(sample_next_token(&logits, &config, &mut rng), greedy);
            }
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = GenerationConfig {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
    }
}
