//! Gemma 3 against transformers 5.24: `tests/fixtures/tiny-gemma3` (bf16 in one file, a
//! tied head, a sliding window of 8 under prompts of 13 and 35 tokens) and
//! `tiny-gemma3-b` (f32 in shards, an untied head, `query_pre_attn_scalar` unlike
//! `head_dim`, linear rotary scaling of the global layers, softcapped logits, a window
//! of 5), references by transformers after `from_pretrained` in f32 (`cases.json`,
//! `expected.safetensors`). Both forms of `config.json`, a save and reload, and the
//! sliding layers' cache keeping only the window.
#![allow(deprecated)]

mod common;

use burn::prelude::*;
use common::{assert_matches_transformers, fixture, ids, json_file, tensor};
use ember_model::{
    CausalLm, GenerationConfig, LanguageModel, ModelConfig, generate, load_model, model_tokenizer,
    save_model,
};

const MODELS: [&str; 2] = ["tiny-gemma3", "tiny-gemma3-b"];

#[test]
fn gemma3_matches_transformers() {
    for name in MODELS {
        let dir = fixture(name);
        let cases = json_file(&dir.join("cases.json"));
        assert_matches_transformers(&dir, &cases, &dir.join("expected.safetensors"));
    }
}

/// transformers 4's `config.json` (`rope_theta`, `rope_local_base_freq`, `rope_scaling`,
/// `sliding_window_pattern`) describes the same model as transformers 5's.
#[test]
fn both_config_forms_give_the_same_model() {
    let device = Device::ndarray();
    for name in MODELS {
        let dir = fixture(name);
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        std::fs::copy(dir.join("config-v4.json"), copy.path().join("config.json")).unwrap();
        let v5 = load_model(&dir, None, &device).unwrap();
        let v4 = load_model(copy.path(), None, &device).unwrap();
        assert_eq!(v4.config, v5.config, "{name}");
    }
}

/// A saved Gemma 3 model loads back to the same configuration and logits, and its
/// `config.json` is the Hub's.
#[test]
fn saved_models_load_back() {
    let device = Device::ndarray();
    for name in MODELS {
        let loaded = load_model(&fixture(name), None, &device).unwrap();
        let tokenizer = model_tokenizer(&loaded).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_model(&loaded.model, &tokenizer, out.path()).unwrap();
        let again = load_model(out.path(), None, &device).unwrap();
        assert_eq!(again.config, loaded.config, "{name}");
        let written = json_file(&out.path().join("config.json"));
        assert_eq!(written["model_type"], "gemma3_text");
        let prompt = [2u32, 41, 357, 93, 313, 74];
        let a = loaded.model.logits(tensor(&prompt, &device)).into_data();
        let b = again.model.logits(tensor(&prompt, &device)).into_data();
        a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-6));
    }
}

/// Generating well past the window keeps only the window in a sliding layer's cache,
/// the whole sequence in a global one, and the same tokens as without a cache.
#[test]
fn sliding_layers_cache_only_their_window() {
    let device = Device::ndarray();
    let dir = fixture("tiny-gemma3");
    let loaded = load_model(&dir, None, &device).unwrap();
    let LanguageModel::Gemma3(model) = &loaded.model else {
        panic!("not a Gemma 3 model")
    };
    let ModelConfig::Gemma3(config) = &loaded.config else {
        unreachable!()
    };
    let cases = json_file(&dir.join("cases.json"));
    let prompt = ids(&cases["prompts"][1]["ids"]);
    let mut cache = CausalLm::new_cache(model);
    model
        .logits_cached(tensor(&prompt, &device), &mut cache)
        .unwrap();
    assert_eq!(cache.len(), prompt.len());
    for (layer, kind) in config.layer_types.iter().enumerate() {
        let want = match kind {
            ember_model::gemma3::LayerType::Sliding => config.sliding_window,
            ember_model::gemma3::LayerType::Full => prompt.len(),
        };
        assert_eq!(cache.kept(layer), want, "layer {layer}");
    }
    let long = GenerationConfig {
        max_new_tokens: 40,
        ..Default::default()
    };
    let cached = generate(&loaded.model, &prompt, &long, &device, |_| {}).unwrap();
    let uncached = GenerationConfig {
        use_kv_cache: false,
        ..long
    };
    let full = generate(&loaded.model, &prompt, &uncached, &device, |_| {}).unwrap();
    assert_eq!(cached, full);
}
