//! Packed batches (a server's continuous batching): sequences of different lengths in
//! one forward pass, some decoding one token and some reading a chunk of their prompt,
//! get bit for bit the logits each gets in a packed pass of its own, on the four fixture
//! architectures in f32 and with bf16, q8_0, q4_0 and q4_k weights, step after step (so
//! the caches they leave are the same too); and within 1e-4 of `next_token_logits`.
#![allow(deprecated)]

use burn::prelude::*;
use burn::tensor::Tolerance;
use ember_model::weights::random_model;
use ember_model::{CausalLm, Dtype, KvCache, LanguageModel, PackedCaches, load_model_as};

mod common;

use common::fixture;

fn ids(tokens: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, tokens.len()]), device)
}

fn rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    let [n, vocab] = logits.dims();
    let values = logits.into_data().to_vec::<f32>().unwrap();
    (0..n)
        .map(|i| values[i * vocab..(i + 1) * vocab].to_vec())
        .collect()
}

/// One sequence: its tokens and how many of them its cache holds.
struct Sequence {
    tokens: Vec<u32>,
    cache: KvCache,
}

impl Sequence {
    /// A sequence whose cache already holds the first `cached` of `tokens`.
    fn new(model: &LanguageModel, tokens: Vec<u32>, cached: usize, device: &Device) -> Self {
        let mut cache = model.new_cache();
        if cached > 0 {
            model
                .next_token_logits(ids(&tokens[..cached], device), &mut cache)
                .unwrap();
        }
        Self { tokens, cache }
    }
}

/// Feeds `take[i]` more tokens of each sequence, packed together and each alone; the
/// logits must be the same bits. The packed step's next tokens (argmax) are appended.
fn step(model: &LanguageModel, sequences: &mut [Sequence], take: &[usize], device: &Device) {
    let mut packed_ids = Vec::new();
    let mut alone = Vec::new();
    for (sequence, &n) in sequences.iter().zip(take) {
        let start = sequence.cache.len();
        let new = &sequence.tokens[start..start + n];
        packed_ids.extend_from_slice(new);
        let mut packed_alone = PackedCaches::new(vec![sequence.cache.clone()], vec![n]);
        let logits = model
            .next_token_logits_packed(ids(new, device), &mut packed_alone)
            .unwrap();
        // Close to what generation computes, through the products' own paths.
        let mut cache = sequence.cache.clone();
        logits.clone().into_data().assert_approx_eq::<f32>(
            &model
                .next_token_logits(ids(new, device), &mut cache)
                .unwrap()
                .into_data(),
            Tolerance::absolute(1e-4),
        );
        alone.push(rows(logits).remove(0));
    }
    let caches = sequences.iter().map(|s| s.cache.clone()).collect();
    let mut packed = PackedCaches::new(caches, take.to_vec());
    let got = rows(
        model
            .next_token_logits_packed(ids(&packed_ids, device), &mut packed)
            .unwrap(),
    );
    for (i, (got, want)) in got.iter().zip(&alone).enumerate() {
        assert!(got == want, "sequence {i}: packed logits differ from alone");
    }
    for ((sequence, cache), logits) in sequences.iter_mut().zip(packed.into_caches()).zip(got) {
        sequence.cache = cache;
        if sequence.cache.len() == sequence.tokens.len() {
            let next = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap();
            sequence.tokens.push(next as u32);
        }
    }
}

#[test]
fn packed_sequences_get_the_logits_they_get_alone() {
    let device = Device::ndarray();
    for name in ["tiny-gpt2-a", "tiny-llama3", "tiny-qwen3", "tiny-gemma3"] {
        for dtype in [
            Dtype::F32,
            Dtype::Bf16,
            Dtype::Q8_0,
            Dtype::Q4_0,
            Dtype::Q4_K,
        ] {
            let model = if dtype == Dtype::Q4_K {
                // Rows of whole super-blocks: the architecture 256 wide, random weights.
                random_model(&common::wide_config(name), dtype, 3, &device).unwrap()
            } else {
                load_model_as(&fixture(name), None, dtype, &device)
                    .unwrap()
                    .model
            };
            let prompt = |seed: u32, len: u32| (0..len).map(|i| (seed * 31 + i * 7) % 97).collect();
            // a: 5 of 6 prompt tokens cached, decodes; b: a fresh 9-token prompt read in
            // chunks of 4; c: 3 cached, reads the remaining 2 then decodes.
            let mut sequences = vec![
                Sequence::new(&model, prompt(1, 6), 5, &device),
                Sequence::new(&model, prompt(2, 9), 0, &device),
                Sequence::new(&model, prompt(3, 5), 3, &device),
            ];
            step(&model, &mut sequences, &[1, 4, 2], &device);
            step(&model, &mut sequences, &[1, 4, 1], &device);
            step(&model, &mut sequences, &[1, 1, 1], &device);
            for _ in 0..4 {
                step(&model, &mut sequences, &[1, 1, 1], &device);
            }
            let lens: Vec<usize> = sequences.iter().map(|s| s.cache.len()).collect();
            assert_eq!(lens, [12, 13, 11], "{name} {dtype}");
        }
    }
}

/// A prompt longer than a prefill chunk is read in chunks (bounded activation memory):
/// the logits after it are within 1e-4 of one pass over the whole prompt, and greedy
/// generation gives the tokens of the path without a cache (whole windows each step),
/// for a full-attention model and for Gemma 3's sliding-window layers (a window of 8,
/// far shorter than a chunk).
#[test]
fn a_prompt_read_in_chunks_continues_as_one_read_at_once() {
    use ember_model::generate::{GenerationConfig, PREFILL_CHUNK, generate};
    let device = Device::ndarray();
    let len = 2 * PREFILL_CHUNK + 75;
    for name in ["tiny-qwen3", "tiny-gemma3"] {
        let model = load_model_as(&fixture(name), None, Dtype::F32, &device)
            .unwrap()
            .model;
        let prompt: Vec<u32> = (0..len as u32).map(|i| (i * 37 + 11) % 97).collect();
        let whole = model.logits(ids(&prompt, &device));
        let vocab = whole.dims()[2];
        let last = whole.narrow(1, len - 1, 1).reshape([1, vocab]);
        let mut cache = model.new_cache();
        let mut chunked = None;
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            chunked = Some(
                model
                    .next_token_logits(ids(chunk, &device), &mut cache)
                    .unwrap(),
            );
        }
        chunked
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&last.into_data(), Tolerance::absolute(1e-4));

        let config = GenerationConfig {
            max_new_tokens: 6,
            stop_tokens: vec![],
            ..Default::default()
        };
        let cached = generate(&model, &prompt, &config, &device, |_| {}).unwrap();
        let uncached = GenerationConfig {
            use_kv_cache: false,
            ..config
        };
        let full = generate(&model, &prompt, &uncached, &device, |_| {}).unwrap();
        assert_eq!(cached, full, "{name}");
        assert_eq!(cached.len(), 6, "{name}");
    }
}
