//! Packed weights for inference (`load_model_as`, `with_weight_dtype`): bf16, f16,
//! q8_0, q4_0 and q4_k on the fixture architectures: a model with packed weights computes
//! what the f32 model with the same rounded or quantized weights computes, whether it
//! was loaded that way or converted after loading; a bf16 checkpoint loaded as bf16 loses nothing (transformers' greedy
//! tokens, exactly); the f32 values, computed when something asks for them, are the
//! rounded weights in Burn's layout.
#![allow(deprecated)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use ember_model::weights::collect_parameters;
use ember_model::{
    CausalLm, Dtype, GenerationConfig, LanguageModel, generate, load_model, load_model_as,
    with_weight_dtype,
};
use serde_json::Value;

mod common;

use common::fixture;

fn prompt(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(vec![1i64, 7, 42, 3, 99, 5], [1, 6]), device)
}

fn logits(model: &LanguageModel, device: &Device) -> Vec<f32> {
    model.logits(prompt(device)).into_data().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Computes every parameter's f32 value, so the model stops using its half weights.
struct ComputeF32;

impl ModuleVisitor for ComputeF32 {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

#[test]
fn packed_weights_compute_what_the_rounded_f32_weights_compute() {
    let device = Device::ndarray();
    // tiny-gemma3-b is 48 wide: rows of 48 are not whole blocks of 32, so those
    // matrices stay f32 in q8_0 and q4_0 (its MLP's down projection, 96 wide, does not).
    // In q4_k, rows that are not whole super-blocks of 256 are held in q8_0: all but
    // tiny-gpt2-a's MLP projection (256 wide) here.
    for name in [
        "tiny-gpt2-a",
        "tiny-llama3",
        "tiny-qwen3",
        "tiny-gemma3",
        "tiny-gemma3-b",
    ] {
        let dir = fixture(name);
        let f32_logits = logits(&load_model(&dir, None, &device).unwrap().model, &device);
        for dtype in [
            Dtype::Bf16,
            Dtype::F16,
            Dtype::Q8_0,
            Dtype::Q4_0,
            Dtype::Q4_K,
        ] {
            let loaded = load_model_as(&dir, None, dtype, &device).unwrap().model;
            let converted =
                with_weight_dtype(load_model(&dir, None, &device).unwrap().model, dtype);
            let packed_logits = logits(&loaded, &device);
            assert_eq!(packed_logits, logits(&converted, &device), "{name} {dtype}");
            // The same model computing in f32 from the rounded or quantized weights:
            // the same logits, but for the quantized formats' rounding of the
            // activations (to Q8_0 blocks, as llama.cpp does).
            converted.visit(&mut ComputeF32);
            let rounded_logits = logits(&converted, &device);
            let worst = max_diff(&packed_logits, &rounded_logits);
            let largest = f32_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let bound = if dtype.bits() == 16 {
                1e-5
            } else {
                0.05 * largest
            };
            assert!(
                worst <= bound,
                "{name} {dtype}: {worst} from the rounded f32 model"
            );
            // Rounding changed something, but not much; checkpoints stored in bf16 lose
            // nothing to bf16 or f16.
            let from_f32 = max_diff(&packed_logits, &f32_logits);
            let lossless = matches!(name, "tiny-llama3" | "tiny-gemma3") && dtype.bits() == 16;
            if !lossless {
                assert!(from_f32 > 0.0, "{name} {dtype}: weights were not rounded");
            }
            // Bounds relative to the largest logit: these random models' weights are
            // spread wide, which 16 levels per block (q4_0) keep coarsely.
            let bound = match dtype {
                Dtype::Q8_0 => 0.05,
                Dtype::Q4_0 | Dtype::Q4_K => 0.4,
                _ => 0.01,
            } * largest;
            assert!(
                from_f32 < bound,
                "{name} {dtype}: {from_f32} from the f32 model (bound {bound})"
            );
        }
    }
}

/// q4_k on models whose rows are whole super-blocks (each architecture 256 wide, random
/// weights): loaded as q4_k (streamed from the weights, never whole in f32) it computes
/// what the f32 model converted to q4_k computes, bit for bit; its error against f32 is
/// below q4_0's (the same 4.5 bits per weight, fitted better) and of the size 16 levels
/// instead of 256 make it beside q8_0's.
#[test]
fn q4_k_models_are_closer_to_f32_than_q4_0_models() {
    use ember_model::weights::random_model;
    let device = Device::ndarray();
    for name in ["tiny-gpt2-a", "tiny-llama3", "tiny-qwen3", "tiny-gemma3"] {
        let config = common::wide_config(name);
        let model = |dtype| random_model(&config, dtype, 7, &device).unwrap();
        let f32_logits = logits(&model(Dtype::F32), &device);
        let error = |dtype| {
            let loaded = logits(&model(dtype), &device);
            let converted = logits(&with_weight_dtype(model(Dtype::F32), dtype), &device);
            assert_eq!(loaded, converted, "{name} {dtype}");
            let squared: f32 = loaded
                .iter()
                .zip(&f32_logits)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            squared.sqrt()
        };
        let (q8_0, q4_0, q4_k) = (error(Dtype::Q8_0), error(Dtype::Q4_0), error(Dtype::Q4_K));
        assert!(
            q8_0 > 0.0 && q4_k < q4_0 && q4_k < 16.0 * q8_0,
            "{name}: q8_0 {q8_0}, q4_0 {q4_0}, q4_k {q4_k}"
        );
    }
}

/// tiny-llama3 is stored in bf16: loading it as bf16 is lossless, and greedy decoding
/// with and without the KV cache gives transformers' tokens.
#[test]
fn a_bf16_checkpoint_in_bf16_gives_transformers_tokens() {
    let device = Device::ndarray();
    let dir = fixture("tiny-llama3");
    let f32_model = load_model(&dir, None, &device).unwrap().model;
    let model = load_model_as(&dir, None, Dtype::Bf16, &device)
        .unwrap()
        .model;
    let worst = max_diff(&logits(&model, &device), &logits(&f32_model, &device));
    assert!(worst <= 1e-5, "{worst}");
    let as_loaded: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("as-loaded.json")).unwrap())
            .unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    for (i, case) in cases["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let want: Vec<u32> =
            serde_json::from_value(as_loaded["prompts"][i]["greedy_24"].clone()).unwrap();
        for use_kv_cache in [true, false] {
            let config = GenerationConfig {
                max_new_tokens: 24,
                use_kv_cache,
                ..Default::default()
            };
            let got = generate(&model, &prompt, &config, &device, |_| {}).unwrap();
            assert_eq!(got, want, "prompt {i} cache {use_kv_cache}");
        }
    }
}

/// What a bf16 model saves (its f32 values, computed on demand) is its rounded weights
/// under the Hub's names and layouts.
#[test]
fn the_f32_values_of_packed_weights_are_the_rounded_weights() {
    let device = Device::ndarray();
    let dir = fixture("tiny-qwen3");
    let table = ember_model::llama::table();
    let LanguageModel::Llama(f32_model) = load_model(&dir, None, &device).unwrap().model else {
        panic!("a Llama-family model")
    };
    let LanguageModel::Llama(half) = load_model_as(&dir, None, Dtype::Bf16, &device)
        .unwrap()
        .model
    else {
        panic!("a Llama-family model")
    };
    let want = collect_parameters(&f32_model, &table);
    let got = collect_parameters(&half, &table);
    assert_eq!(want.len(), got.len());
    let mut halved = 0;
    for ((name, shape, values), (got_name, got_shape, got_values)) in want.iter().zip(&got) {
        assert_eq!((name, shape), (got_name, got_shape));
        let is_matrix = name.ends_with("_proj.weight") || name.ends_with("embed_tokens.weight");
        let rounded: Vec<f32> = if is_matrix {
            halved += 1;
            values
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect()
        } else {
            values.clone()
        };
        assert_eq!(&rounded, got_values, "{name}");
    }
    assert_eq!(
        halved,
        2 * 7 + 1,
        "seven projections per block, two blocks, the embedding"
    );
}
