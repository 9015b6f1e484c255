//! Parity with PyTorch and Hugging Face transformers on the reference fixtures in
//! `tests/fixtures/tiny-gpt2-a` (see its README): logits, losses, greedy ids and
//! AdamW steps.
//!
//! These run on the backend that `EMBER_BACKEND` names (default: the first compiled
//! in), so CI runs the same file on ndarray, wgpu and tch:
//! `EMBER_BACKEND=wgpu cargo test -p ember-cli --features wgpu --test parity`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ember_cli::backend;
use ember_model::read_model_config;
use ember_model::weights::{RawTensor, read_safetensors};
use ember_model::{GenerationConfig, GptModel, generate, load_model};
use ember_train::{AdamWSettings, clip_grad_norm, cross_entropy, grad_norm};
use serde_json::Value;

/// The fixtures of this checkout, or of the working tree `EMBER_REPO_ROOT` names: the
/// test binary built on one machine runs on another (scripts/gpu-check.sh).
fn fixture_dir() -> PathBuf {
    let root = std::env::var_os("EMBER_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    root.join("tests/fixtures/tiny-gpt2-a")
}

fn device() -> Device {
    backend::device(None).expect("a backend is compiled in")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn expected() -> BTreeMap<String, RawTensor> {
    read_safetensors(&fixture_dir().join("expected.safetensors")).unwrap()
}

/// The int64 tensors of expected.safetensors (read_safetensors keeps floats only).
fn expected_ids(name: &str) -> Vec<i64> {
    let bytes = std::fs::read(fixture_dir().join("expected.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    view.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn ids_of(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn int_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_rel(actual: f64, expected: f64, tol: f64, what: &str) {
    let rel = ((actual - expected) / expected).abs();
    assert!(
        rel <= tol,
        "{what}: {actual} vs {expected} (relative error {rel:e} > {tol:e})"
    );
}

fn hf_model(device: &Device) -> GptModel {
    load_model(&fixture_dir(), None, device)
        .unwrap()
        .into_gpt2()
        .unwrap()
}

fn book_model(tied: bool, device: &Device) -> GptModel {
    let ember_model::ModelConfig::Gpt2(config) =
        read_model_config(&fixture_dir().join("config.json"))
            .unwrap()
            .0
    else {
        unreachable!("the fixture is a GPT-2 model")
    };
    let config = config.with_tied_embeddings(tied);
    load_model(&fixture_dir().join("model.pth"), Some(&config), device)
        .unwrap()
        .into_gpt2()
        .unwrap()
}

fn check_logits(model: &GptModel, device: &Device, source: &str) {
    let cases = cases();
    let expected = expected();
    for prompt in cases["prompts"].as_array().unwrap() {
        let ids = ids_of(&prompt["input_ids"]);
        let logits = model.forward(int_tensor(&[ids], device));
        let want = &expected[prompt["logits_tensor"].as_str().unwrap()];
        let err = max_abs_diff(&to_vec(logits), &want.data);
        assert!(
            err <= 1e-4,
            "{source} {}: max abs logit error {err:e}",
            prompt["name"]
        );
    }
}

#[test]
fn logits_match_from_hugging_face_safetensors() {
    let device = device();
    check_logits(&hf_model(&device), &device, "safetensors");
}

#[test]
fn logits_match_from_the_books_pth_tied_and_untied() {
    let device = device();
    check_logits(&book_model(true, &device), &device, "pth (tied)");
    check_logits(&book_model(false, &device), &device, "pth (untied)");
}

#[test]
fn losses_match_plain_and_masked() {
    let device = device();
    let model = hf_model(&device);
    let cases = cases();
    for key in ["loss", "loss_masked"] {
        let case = &cases[key];
        let inputs: Vec<Vec<i64>> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids_of)
            .collect();
        let targets: Vec<Vec<i64>> = case["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids_of)
            .collect();
        let logits = model.forward(int_tensor(&inputs, &device));
        let loss: f32 = cross_entropy(logits, int_tensor(&targets, &device)).into_scalar();
        assert_rel(loss as f64, case["loss"].as_f64().unwrap(), 1e-5, key);
    }
}

#[test]
fn greedy_generation_matches_with_and_without_kv_cache() {
    let device = device();
    let model = hf_model(&device);
    let case = &cases()["generation"];
    let prompt: Vec<u32> = ids_of(&case["prompt_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    let want: Vec<u32> = ids_of(&case["generated_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    for use_kv_cache in [true, false] {
        let config = GenerationConfig {
            max_new_tokens: want.len(),
            use_kv_cache,
            ..Default::default()
        };
        let got = generate(&model, &prompt, &config, &device, |_| {}).unwrap();
        assert_eq!(got, want, "kv cache {use_kv_cache}");
    }
}

#[test]
fn kv_cache_logits_equal_full_logits_up_to_a_full_context() {
    let device = device();
    let model = hf_model(&device);
    // 64 positions: the whole context of the fixture model.
    let ids: Vec<i64> = (0..64).map(|i| (i * 773 + 11) % 50257).collect();
    let full = to_vec(model.forward(int_tensor(std::slice::from_ref(&ids), &device)));
    let mut cache = model.new_cache();
    let mut cached = to_vec(
        model
            .forward_cached(int_tensor(&[ids[..10].to_vec()], &device), &mut cache)
            .unwrap(),
    );
    for &id in &ids[10..] {
        cached.extend(to_vec(
            model
                .forward_cached(int_tensor(&[vec![id]], &device), &mut cache)
                .unwrap(),
        ));
    }
    let err = max_abs_diff(&full, &cached);
    assert!(err <= 1e-5, "cached vs full logits: {err:e}");
    let overflow = model.forward_cached(int_tensor(&[vec![0]], &device), &mut cache);
    assert!(
        overflow
            .unwrap_err()
            .to_string()
            .contains("exceed the context length 64")
    );
}

/// Runs one AdamW variant of `cases.json` → `training_step` and checks the losses,
/// gradient norms and updated tensors.
fn check_adamw(variant: &str, untied: bool) {
    let device = device();
    let train_device = device.clone().autodiff();
    let cases = cases();
    let step_case = &cases["training_step"]["variants"][variant];
    let case = if untied {
        &step_case["book_untied_variant"]
    } else {
        step_case
    };
    let steps = step_case["steps"].as_u64().unwrap() as usize;
    let max_norm = step_case["clip_grad_norm_max_norm"].as_f64();
    let loss_case = &cases["loss"];
    let inputs: Vec<Vec<i64>> = loss_case["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids_of)
        .collect();
    let targets: Vec<Vec<i64>> = loss_case["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids_of)
        .collect();
    let mut model = if untied {
        book_model(false, &train_device)
    } else {
        hf_model(&train_device)
    };
    let mut optim = AdamWSettings {
        weight_decay: 0.1,
        ..AdamWSettings::default()
    }
    .init();
    let losses = case["losses_before_each_step"].as_array().unwrap();
    let norms = case["total_grad_norm_before_clip_each_step"]
        .as_array()
        .unwrap();
    for step in 0..steps {
        let logits = model.forward(int_tensor(&inputs, &train_device));
        let loss = cross_entropy(logits, int_tensor(&targets, &train_device));
        let value: f32 = loss.clone().into_scalar();
        assert_rel(
            value as f64,
            losses[step].as_f64().unwrap(),
            1e-5,
            "loss before step",
        );
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = match max_norm {
            Some(max_norm) => clip_grad_norm(&model, &mut grads, max_norm),
            None => grad_norm(&model, &mut grads),
        };
        assert_rel(norm, norms[step].as_f64().unwrap(), 1e-4, "grad norm");
        model = optim.step(4e-4, model, grads);
    }
    let valid = model.valid();
    let logits = valid.forward(int_tensor(&inputs, &device));
    let loss: f32 = cross_entropy(logits, int_tensor(&targets, &device)).into_scalar();
    assert_rel(
        loss as f64,
        case["loss_after"].as_f64().unwrap(),
        1e-5,
        "loss after",
    );

    let expected = expected();
    let rows: Vec<usize> = expected_ids("train.wte_row_ids")
        .iter()
        .map(|&i| i as usize)
        .collect();
    let d = valid.wte.weight.dims()[1];
    let pick_rows = |matrix: &[f32], width: usize| -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| matrix[r * width..(r + 1) * width].to_vec())
            .collect()
    };
    let wte = to_vec(valid.wte.weight.val());
    let c_attn = to_vec(valid.h[0].attn.c_attn.weight.val());
    let ln_f = to_vec(valid.ln_f.gamma.val());
    let mut checks: Vec<(&str, Vec<f32>)> = Vec::new();
    let tensors = case["tensors"].as_object().unwrap();
    for (name, key) in tensors {
        let actual = match name.as_str() {
            "transformer.wte.weight" | "tok_emb.weight" => pick_rows(&wte, d),
            "transformer.h.0.attn.c_attn.weight" => c_attn.clone(),
            "transformer.ln_f.weight" | "final_norm.scale" => ln_f.clone(),
            "trf_blocks.0.att.W_query.weight" => {
                // nn.Linear [out, in] = the transpose of c_attn's query columns.
                let three_d = 3 * d;
                (0..d)
                    .flat_map(|out| (0..d).map(move |inp| (out, inp)))
                    .map(|(out, inp)| c_attn[inp * three_d + out])
                    .collect()
            }
            "out_head.weight" => {
                // lm_head is [d, vocab]; the book's rows are its columns.
                let head = to_vec(valid.lm_head.as_ref().unwrap().weight.val());
                let vocab = head.len() / d;
                rows.iter()
                    .flat_map(|&r| (0..d).map(move |k| (r, k)))
                    .map(|(r, k)| head[k * vocab + r])
                    .collect()
            }
            other => panic!("unexpected tensor {other}"),
        };
        checks.push((name.as_str(), actual));
        let want = &expected[key.as_str().unwrap()].data;
        let err = max_abs_diff(&checks.last().unwrap().1, want);
        assert!(err <= 1e-5, "{variant} {name}: max abs error {err:e}");
    }
    assert_eq!(checks.len(), tensors.len());
}

#[test]
fn adamw_one_step_matches_pytorch() {
    check_adamw("adamw_1step", false);
}

#[test]
fn adamw_two_steps_match_pytorch() {
    check_adamw("adamw_2steps", false);
}

#[test]
fn adamw_with_global_clipping_matches_pytorch() {
    check_adamw("adamw_clip1_1step", false);
    check_adamw("adamw_clip1_2steps", false);
}

#[test]
fn adamw_untied_book_variant_matches_pytorch() {
    check_adamw("adamw_2steps", true);
    check_adamw("adamw_clip1_2steps", true);
}
