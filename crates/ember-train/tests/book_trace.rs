//! The fidelity of a whole run: the book's own chapter 5 code (its `GPTModel`,
//! `create_dataloader_v1`, `calc_loss_batch`, `evaluate_model` and torch's AdamW),
//! traced step by step from given initial weights with dropout off and no shuffling
//! (`tests/fixtures/book-ch05-trace`, made by its `make_trace.py`). Both Ember loops,
//! `fit` (through `ember_train::pretrain --init`) and listing 5.3's
//! `train_model_simple`, must reproduce every step loss and every evaluation within
//! 1e-5 relative, and the greedy tokens after training exactly.
#![allow(deprecated)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::prelude::Device;
use ember_data::{Batcher, EpochPlan, SlidingWindowDataset, split_text};
use ember_model::{GenerationConfig, GptConfig, WeightInit, generate, load_model};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use ember_train::{MetricsLine, PretrainConfig, RunMode, RunOptions, pretrain, train_model_simple};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn trace() -> Value {
    let path = root().join("tests/fixtures/book-ch05-trace/trace.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The trace's settings as an Ember run.
fn trace_config(trace: &Value) -> PretrainConfig {
    let c = &trace["config"];
    let h = &trace["hparams"];
    let n = |v: &Value| v.as_u64().unwrap() as usize;
    let mut config = PretrainConfig::book();
    config.model = GptConfig {
        vocab_size: n(&c["vocab_size"]),
        context_length: n(&c["context_length"]),
        emb_dim: n(&c["emb_dim"]),
        n_heads: n(&c["n_heads"]),
        n_layers: n(&c["n_layers"]),
        drop_rate: c["drop_rate"].as_f64().unwrap(),
        qkv_bias: c["qkv_bias"].as_bool().unwrap(),
        tie_embeddings: false,
        weight_init: WeightInit::Torch,
    };
    config.init = Some(root().join("tests/fixtures/book-ch05-trace/init.pth"));
    config.data.path = root().join("datasets/the-verdict.txt");
    config.data.train_ratio = h["train_ratio"].as_f64().unwrap();
    config.data.stride = Some(n(&h["stride"]));
    config.train.lr = h["lr"].as_f64().unwrap();
    config.train.optimizer.weight_decay = h["weight_decay"].as_f64().unwrap();
    config.train.batch_size = n(&h["batch_size"]);
    config.train.epochs = n(&h["epochs"]);
    config.train.eval_freq = n(&h["eval_freq"]);
    config.train.eval_iter = n(&h["eval_iter"]);
    config.train.seed = h["seed"].as_u64().unwrap();
    config.train.shuffle = false;
    config.train.sample_tokens = 20;
    config
}

fn assert_relative(got: f64, want: f64, what: &str) {
    let error = (got - want).abs() / want.abs();
    assert!(
        error <= 1e-5,
        "{what}: {got} vs the book's {want} ({error:.2e} relative)"
    );
}

/// The trace's step losses and evaluations against a run's.
fn assert_matches_trace(trace: &Value, step_losses: &[f64], evals: &[(usize, f64, f64)]) {
    let want = floats(&trace["step_losses"]);
    assert_eq!(step_losses.len(), want.len());
    for (i, (&got, &want)) in step_losses.iter().zip(&want).enumerate() {
        assert_relative(got, want, &format!("loss of step {}", i + 1));
    }
    let want = trace["evals"].as_array().unwrap();
    assert_eq!(evals.len(), want.len());
    for (&(step, train, val), want) in evals.iter().zip(want) {
        assert_eq!(step as u64, want["step"].as_u64().unwrap());
        assert_relative(
            train,
            want["train_loss"].as_f64().unwrap(),
            &format!("train loss at {step}"),
        );
        assert_relative(
            val,
            want["val_loss"].as_f64().unwrap(),
            &format!("val loss at {step}"),
        );
    }
}

fn greedy_ids(model: &ember_model::GptModel, device: &Device) -> Vec<u32> {
    let tokenizer = Gpt2Tokenizer::gpt2().unwrap();
    let prompt = tokenizer.encode("Every effort moves you", false).unwrap();
    let config = GenerationConfig {
        max_new_tokens: 20,
        ..Default::default()
    };
    generate(model, &prompt, &config, device, |_| {}).unwrap()
}

#[test]
fn fit_reproduces_the_books_training_run() {
    fit_reproduces_the_books_training_run_on(Device::ndarray());
}

/// Flex, Burn's successor to ndarray and `ember`'s default CPU backend.
#[test]
fn fit_reproduces_the_books_training_run_on_flex() {
    fit_reproduces_the_books_training_run_on(Device::flex());
}

fn fit_reproduces_the_books_training_run_on(device: Device) {
    let trace = trace();
    let config = trace_config(&trace);
    let dir = tempfile::tempdir().unwrap();
    let interrupt = AtomicBool::new(false);
    let options = RunOptions {
        mode: RunMode::New,
        progress: false,
        interrupt: &interrupt,
        devices: &[],
        collective: None,
    };
    pretrain(&config, dir.path(), &device, options).unwrap();
    let metrics: Vec<MetricsLine> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<f64> = metrics.iter().map(|m| m.train_loss).collect();
    let evals: Vec<(usize, f64, f64)> = metrics
        .iter()
        .filter_map(|m| Some((m.step, m.eval_train_loss?, m.val_loss?)))
        .collect();
    assert_matches_trace(&trace, &steps, &evals);
    let trained = load_model(&dir.path().join("model"), None, &device)
        .unwrap()
        .into_gpt2()
        .unwrap();
    let want: Vec<u32> = serde_json::from_value(trace["greedy_after"]["ids"].clone()).unwrap();
    assert_eq!(greedy_ids(&trained, &device), want);
}

#[test]
fn train_model_simple_reproduces_the_books_training_run() {
    let trace = trace();
    let config = trace_config(&trace);
    let device = Device::ndarray().autodiff();
    let model = load_model(config.init.as_ref().unwrap(), Some(&config.model), &device)
        .unwrap()
        .into_gpt2()
        .unwrap();
    let tokenizer = Gpt2Tokenizer::gpt2().unwrap();
    let text = std::fs::read_to_string(&config.data.path).unwrap();
    let (train_text, val_text) = split_text(&text, config.data.train_ratio);
    let windows = |text: &str| {
        let ids = tokenizer.encode(text, true).unwrap();
        SlidingWindowDataset::new(ids, 32, 32).unwrap()
    };
    let (train, val) = (windows(train_text), windows(val_text));
    let t = &config.train;
    let train_loader = Batcher::new(
        &train,
        EpochPlan::new(t.batch_size, false, t.seed, true).unwrap(),
    )
    .unwrap();
    let val_loader = Batcher::new(
        &val,
        EpochPlan::new(t.batch_size, false, t.seed, false).unwrap(),
    )
    .unwrap();
    let mut optimizer = t.optimizer.init();
    let (model, log) = train_model_simple(
        model,
        &train_loader,
        &val_loader,
        &mut optimizer,
        t.lr,
        &device,
        t.epochs,
        t.eval_freq,
        t.eval_iter,
        "Every effort moves you",
        &tokenizer,
    )
    .unwrap();
    let eval_steps = (0..log.step_losses.len())
        .filter(|s| s % t.eval_freq == 0)
        .map(|s| s + 1);
    let evals: Vec<(usize, f64, f64)> = eval_steps
        .zip(log.train_losses.iter().zip(&log.val_losses))
        .map(|(step, (&train, &val))| (step, train, val))
        .collect();
    assert_matches_trace(&trace, &log.step_losses, &evals);
    assert_eq!(log.samples.len(), t.epochs);
    let want: Vec<u32> = serde_json::from_value(trace["greedy_after"]["ids"].clone()).unwrap();
    assert_eq!(greedy_ids(&model.valid(), &device.inner()), want);
}
