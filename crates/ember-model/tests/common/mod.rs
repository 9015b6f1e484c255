//! The checks every architecture's parity suite runs against transformers' references.
#![allow(dead_code, deprecated)]

use std::path::{Path, PathBuf};

use burn::prelude::*;
use ember_model::weights::read_safetensors;
use ember_model::{CausalLm, GenerationConfig, generate, load_model, model_tokenizer};
use ember_tokenizer::ChatMessage;
use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

pub fn tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// The model at `dir` against transformers: `cases` (cases.json: prompts and their ids,
/// the loss text, the chat, the parameter count), `reference` (the greedy tokens and the
/// loss, under the same keys) and `expected` (the logits `logits_{i}` of each prompt):
/// logits within 1e-4, greedy tokens exact with and without the KV cache, the loss
/// within 1e-5 relative, the chat prompt rendered and its reply exact.
pub fn assert_matches_transformers(dir: &Path, reference: &Value, expected: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy();
    let device = Device::ndarray();
    let cases = json_file(&dir.join("cases.json"));
    let loaded = load_model(dir, None, &device).unwrap();
    assert_eq!(
        loaded.config.num_params() as u64,
        cases["parameters"].as_u64().unwrap(),
        "{name}"
    );
    let tokenizer = model_tokenizer(&loaded).unwrap();
    let model = loaded.model;
    let expected = read_safetensors(expected).unwrap();
    for (i, prompt) in cases["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt_ids = ids(&prompt["ids"]);
        assert_eq!(
            tokenizer.encode(prompt["text"].as_str().unwrap()).unwrap(),
            prompt_ids,
            "{name}"
        );
        let logits = model
            .logits(tensor(&prompt_ids, &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let want = &expected[&format!("logits_{i}")];
        assert_eq!(logits.len(), want.data.len());
        let worst = logits
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{name} prompt {i}: logits differ by {worst}");
        for use_kv_cache in [false, true] {
            let config = GenerationConfig {
                max_new_tokens: 24,
                use_kv_cache,
                ..Default::default()
            };
            let got = generate(&model, &prompt_ids, &config, &device, |_| {}).unwrap();
            let want = ids(&reference["prompts"][i]["greedy_24"]);
            assert_eq!(got, want, "{name} prompt {i} cache {use_kv_cache}");
        }
    }
    // The mean next-token loss of a text (transformers' `labels=input_ids`).
    let text_ids = tokenizer
        .encode(cases["loss"]["text"].as_str().unwrap())
        .unwrap();
    let n = text_ids.len();
    let logits = model.logits(tensor(&text_ids[..n - 1], &device));
    let targets: Vec<i64> = text_ids[1..].iter().map(|&i| i64::from(i)).collect();
    let loss: f32 = ember_kernels::cross_entropy(
        logits.reshape([n - 1, model.vocab_size()]),
        Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [n - 1]), &device),
    )
    .into_scalar();
    // The same loss with the head fused in, as training computes it.
    let fused: f32 = model
        .next_token_loss(
            tensor(&text_ids[..n - 1], &device),
            Tensor::<2, Int>::from_data(TensorData::new(targets, [1, n - 1]), &device),
        )
        .into_scalar();
    let want = reference["loss"]["mean_next_token_loss"].as_f64().unwrap();
    for (how, loss) in [("from the logits", loss), ("fused with the head", fused)] {
        assert!(
            ((loss as f64) - want).abs() / want < 1e-5,
            "{name}: loss {how} {loss} vs {want}"
        );
    }
    // The chat prompt, rendered by the model's template, and its greedy reply.
    let chat = &cases["chat"];
    let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let text = tokenizer.render_chat(&messages, true).unwrap().unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    let prompt_ids = tokenizer.encode_rendered(&text).unwrap();
    assert_eq!(prompt_ids, ids(&chat["ids"]), "{name}");
    let config = GenerationConfig {
        max_new_tokens: 16,
        stop_tokens: tokenizer.eos_ids().to_vec(),
        ..Default::default()
    };
    let reply = generate(&model, &prompt_ids, &config, &device, |_| {}).unwrap();
    assert_eq!(
        reply,
        ids(&reference["chat"]["greedy_16_until_eos"]),
        "{name}"
    );
}

/// The fixture `name`'s configuration, 256 wide (MLP 512, heads 64 wide, a vocabulary of
/// 600), so that every matrix's rows are whole Q4_K super-blocks.
pub fn wide_config(name: &str) -> ember_model::ModelConfig {
    let path = fixture(name).join("config.json");
    let mut json = json_file(&path);
    let config = json.as_object_mut().unwrap();
    for (key, value) in [
        ("hidden_size", 256),
        ("n_embd", 256),
        ("intermediate_size", 512),
        ("head_dim", 64),
        ("query_pre_attn_scalar", 64),
        ("vocab_size", 600),
    ] {
        if config.contains_key(key) || key == "vocab_size" {
            config.insert(key.to_string(), value.into());
        }
    }
    ember_model::ModelConfig::from_json(&json, &path).unwrap()
}
