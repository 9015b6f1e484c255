//! End-to-end fine-tuning runs on small models: chapter 6's classifier (with freezing
//! and with LoRA) and chapter 7's instruction run, through ember-train's loop.
#![allow(deprecated)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use ember_data::error_chain;
use ember_finetune::classifier::GptClassifier;
use ember_finetune::instruct_finetune::{InstructConfig, finetune_instruct};
use ember_finetune::spam_finetune::{
    SpamConfig, classify_text, finetune_spam, load_adapters, load_classifier,
};
use ember_model::{GptConfig, load_model};
use ember_train::{MetricsLine, RunMode, RunOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn options(interrupt: &AtomicBool) -> RunOptions<'_> {
    RunOptions {
        mode: RunMode::New,
        progress: false,
        interrupt,
        devices: &[],
        collective: None,
    }
}

/// A model that trains a step in well under a second.
fn small_model() -> GptConfig {
    GptConfig {
        context_length: 128,
        emb_dim: 32,
        n_heads: 2,
        n_layers: 2,
        ..GptConfig::tiny()
    }
}

fn spam_config() -> SpamConfig {
    let mut config = SpamConfig::book();
    config.data = root().join("datasets/sms_spam_collection/SMSSpamCollection");
    config.model = small_model();
    config.trainable = "all".into();
    config.train.lr = 1e-3;
    config.train.max_steps = Some(60);
    config.train.eval_freq = 20;
    config
}

/// Burn's ndarray device has one random generator for the process, which seeding and
/// initialising models draw from: the tests that train hold this lock, so that one does
/// not reseed or draw from it while another initialises its model (a run then starts from
/// other weights than the same run alone).
fn device_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn metrics(dir: &Path) -> Vec<MetricsLine> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn spam_classifier_learns_saves_and_reloads() {
    let _rng = device_rng();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("spam");
    let device = Device::ndarray();
    let interrupt = AtomicBool::new(false);
    let results = finetune_spam(&spam_config(), &run, &device, options(&interrupt)).unwrap();
    // The book's split and padded length.
    assert_eq!(results.split_sizes, [1045, 149, 300]);
    assert_eq!(results.max_length, 120);
    assert_eq!(results.steps, 60);
    // 60 steps from scratch already beat the majority class (50%) by far.
    assert!(results.val_accuracy > 0.75, "{results:?}");
    assert!(results.test_accuracy > 0.75, "{results:?}");
    let lines = metrics(&run);
    assert_eq!(lines.len(), 60);
    let evals: Vec<&MetricsLine> = lines.iter().filter(|m| m.val_accuracy.is_some()).collect();
    assert_eq!(
        evals.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 21, 41]
    );
    assert!(evals[2].val_loss.unwrap() < evals[0].val_loss.unwrap());
    for file in ["loss.png", "accuracy.png", "results.json", "config.toml"] {
        assert!(run.join(file).exists(), "{file}");
    }

    // The saved classifier gives the probabilities the trained one gives.
    let (model, info, tokenizer) = load_classifier(&run, &device).unwrap();
    assert_eq!(info.labels, ["ham", "spam"]);
    let text = "WINNER!! You have won a 1000 cash prize. Call 09061701461 to claim now";
    let probs = classify_text(&model, &info, &tokenizer, text, &device).unwrap();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    // The whole test split through the reloaded model: the recorded accuracy.
    let split = ember_finetune::spam::book_split(&spam_config().data).unwrap();
    let correct = split
        .test
        .iter()
        .filter(|e| {
            let p = classify_text(&model, &info, &tokenizer, &e.text, &device).unwrap();
            (p[1] > p[0]) as u8 == e.label
        })
        .count();
    // (Batched and one-by-one forward passes may round a near-tie differently.)
    assert!((correct as f64 / 300.0 - results.test_accuracy).abs() <= 1.0 / 300.0 + 1e-12);

    // A second run into the same directory is refused, nothing is overwritten.
    let err = error_chain(
        &finetune_spam(&spam_config(), &run, &device, options(&interrupt)).unwrap_err(),
    );
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn lora_trains_adapters_that_can_be_saved_alone() {
    let _rng = device_rng();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let device = Device::ndarray();
    device.seed(5);
    // A base model on disk, as a pretraining run would leave it.
    ember_model::save_model(
        &ember_model::LanguageModel::Gpt2(small_model().init(&device)),
        &ember_tokenizer::ModelTokenizer::gpt2().unwrap(),
        &base,
    )
    .unwrap();
    let mut config = spam_config();
    config.base = Some(base.clone());
    config.lora_rank = Some(4);
    config.lora_alpha = 8.0;
    config.train.max_steps = Some(4);
    let run = dir.path().join("lora");
    let interrupt = AtomicBool::new(false);
    let results = finetune_spam(&config, &run, &device, options(&interrupt)).unwrap();
    // Adapters on c_attn, c_proj, c_fc, mlp.c_proj of 2 blocks, and the head.
    let (d, r) = (32, 4);
    let per_block = r * (d + 3 * d) + r * (d + d) + r * (d + 4 * d) + r * (4 * d + d);
    assert_eq!(results.trainable_params, 2 * per_block + r * (d + 2));

    // Base + the adapters file = the merged classifier that was saved.
    let (merged, info, tokenizer) = load_classifier(&run, &device).unwrap();
    let gpt = load_model(&base, None, &device).unwrap().model;
    let fresh = GptClassifier::new(gpt, 2, &device).with_lora(4, 8.0);
    // The head is not an adapter: take the trained one.
    let mut restored = load_adapters(fresh, &run.join("adapters.bpk")).unwrap();
    restored.head.bias = merged.head.bias.clone();
    let text = "Are we still meeting for lunch today?";
    let a = classify_text(&merged, &info, &tokenizer, text, &device).unwrap();
    let b = classify_text(&restored, &info, &tokenizer, text, &device).unwrap();
    assert!((a[0] - b[0]).abs() < 1e-5, "{a:?} vs {b:?}");
}

#[test]
fn bad_spam_settings_are_named() {
    let _rng = device_rng();
    let device = Device::ndarray();
    let interrupt = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let mut config = spam_config();
    config.trainable = "last".into();
    let err =
        finetune_spam(&config, &dir.path().join("a"), &device, options(&interrupt)).unwrap_err();
    let err = error_chain(&err);
    assert!(err.contains("trainable \"last\""), "{err}");
    let mut config = spam_config();
    config.data = dir.path().join("missing.tsv");
    let err =
        finetune_spam(&config, &dir.path().join("b"), &device, options(&interrupt)).unwrap_err();
    let err = error_chain(&err);
    assert!(err.contains("missing.tsv"), "{err}");
    let mut config = spam_config();
    config.max_length = Some(500);
    let err =
        finetune_spam(&config, &dir.path().join("c"), &device, options(&interrupt)).unwrap_err();
    let err = error_chain(&err);
    assert!(
        err.contains("exceeds the model's context length 128"),
        "{err}"
    );
}

#[test]
fn instruction_run_trains_and_answers_the_test_entries() {
    let _rng = device_rng();
    let dir = tempfile::tempdir().unwrap();
    let device = Device::ndarray();
    // The first 100 entries: 85 train, 10 test, 5 validation.
    let data: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("datasets/instruction-data.json")).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(&path, serde_json::to_string(&data[..100]).unwrap()).unwrap();
    let mut config = InstructConfig::book();
    config.data = path;
    config.model = GptConfig {
        qkv_bias: true,
        ..small_model()
    };
    config.train.lr = 1e-3;
    config.train.max_steps = Some(6);
    config.train.sample_tokens = 5;
    config.max_new_tokens = 8;
    config.responses = Some(3);
    config.mask_instruction = true;
    let run = dir.path().join("instruct");
    let interrupt = AtomicBool::new(false);
    let results = finetune_instruct(&config, &run, &device, options(&interrupt)).unwrap();
    assert_eq!(results.split_sizes, [85, 10, 5]);
    assert_eq!(results.steps, 6);
    let lines = metrics(&run);
    assert_eq!(lines.len(), 6);
    // The loss falls from about ln(50257) = 10.8.
    let first = lines[0].val_loss.unwrap();
    let last = lines[5].val_loss.unwrap();
    assert!(first > 10.0 && last < first, "{first} -> {last}");
    let answered: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results.responses_file).unwrap()).unwrap();
    assert_eq!(answered.len(), 3);
    assert_eq!(answered[0]["instruction"], data[85]["instruction"]);
    assert!(answered.iter().all(|e| e["model_response"].is_string()));
    // The model written at the end answers the same way as during the run.
    let loaded = load_model(&run.join("model"), None, &device).unwrap();
    let tokenizer = ember_model::model_tokenizer(&loaded).unwrap();
    let model = loaded.model;
    let entry: ember_data::InstructionEntry = serde_json::from_value(data[85].clone()).unwrap();
    let again =
        ember_finetune::instruct_finetune::respond(&model, &tokenizer, &entry, 8, &device).unwrap();
    assert_eq!(again, answered[0]["model_response"].as_str().unwrap());
    assert!(run.join("loss.png").exists());
    let samples = std::fs::read_to_string(run.join("samples.txt")).unwrap();
    assert!(
        samples.starts_with("stopped at step 6 (epoch 1): "),
        "{samples}"
    );
}

#[test]
fn a_corrupt_classifier_json_is_refused_by_name() {
    let _rng = device_rng();
    use ember_finetune::spam_finetune::{ClassifierInfo, save_classifier};
    let dir = tempfile::tempdir().unwrap();
    let device = Device::ndarray();
    let gpt = ember_model::LanguageModel::Gpt2(small_model().init(&device));
    let model = GptClassifier::new(gpt, 2, &device);
    let info = ClassifierInfo {
        labels: vec!["ham".into(), "spam".into()],
        max_length: 16,
    };
    let tokenizer = ember_tokenizer::ModelTokenizer::gpt2().unwrap();
    save_classifier(&model, &info, &tokenizer, dir.path()).unwrap();
    load_classifier(dir.path(), &device).unwrap();
    for (json, needle) in [
        (
            r#"{"labels": ["ham", "spam"], "max_length": 0}"#,
            "max_length 0 must be between 1 and the model's context length 128",
        ),
        (
            r#"{"labels": ["ham", "spam"], "max_length": 100000}"#,
            "max_length 100000 must be between 1",
        ),
        (
            r#"{"labels": ["ham"], "max_length": 16}"#,
            "1 label(s); a classifier needs at least 2",
        ),
        (r#"{"labels": 3}"#, "classifier.json: invalid type"),
    ] {
        std::fs::write(dir.path().join("classifier.json"), json).unwrap();
        let err = error_chain(&load_classifier(dir.path(), &device).unwrap_err());
        assert!(err.contains(needle), "{err}");
    }
}

/// Chapter 7's run on a Qwen3 and a Gemma 3 base with LoRA: the model is asked through
/// its chat template, the loss falls, and the saved model (adapters merged, tokenizer
/// files beside it) reloads and answers as it did in the run.
#[test]
fn lora_instruction_tuning_of_modern_models_lowers_their_loss_and_reloads() {
    let _rng = device_rng();
    for (fixture, model_type) in [("tiny-qwen3", "qwen3"), ("tiny-gemma3", "gemma3_text")] {
        lora_instruction_tuning_lowers_the_loss_and_reloads(fixture, model_type);
    }
}

fn lora_instruction_tuning_lowers_the_loss_and_reloads(fixture: &str, model_type: &str) {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::ndarray();
    let data: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("datasets/instruction-data.json")).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(&path, serde_json::to_string(&data[..100]).unwrap()).unwrap();
    let mut config = InstructConfig::book();
    config.data = path;
    config.base = Some(root().join("tests/fixtures").join(fixture));
    config.lora_rank = Some(8);
    config.train.lr = 5e-3;
    config.train.max_steps = Some(10);
    config.train.eval_freq = 9;
    config.train.sample_tokens = 4;
    config.max_new_tokens = 6;
    config.responses = Some(2);
    let run = dir.path().join(fixture);
    let interrupt = AtomicBool::new(false);
    let results = finetune_instruct(&config, &run, &device, options(&interrupt)).unwrap();
    let lines = metrics(&run);
    let evals: Vec<f64> = lines.iter().filter_map(|m| m.val_loss).collect();
    assert_eq!(evals.len(), 2);
    assert!(
        evals[1] < evals[0] - 0.1,
        "{fixture}: validation loss {evals:?}"
    );
    // Reloaded: a model of the same architecture with its chat template, answering as
    // during the run.
    let loaded = load_model(&run.join("model"), None, &device).unwrap();
    assert_eq!(loaded.config.model_type(), model_type);
    let tokenizer = ember_model::model_tokenizer(&loaded).unwrap();
    assert!(tokenizer.chat_template().is_some());
    let answered: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results.responses_file).unwrap()).unwrap();
    let entry: ember_data::InstructionEntry = serde_json::from_value(data[85].clone()).unwrap();
    let again =
        ember_finetune::instruct_finetune::respond(&loaded.model, &tokenizer, &entry, 6, &device)
            .unwrap();
    assert_eq!(
        again,
        answered[0]["model_response"].as_str().unwrap(),
        "{fixture}"
    );
}

/// Data parallel on a loss averaged over tokens: the replicas' halves of each batch
/// count different numbers of response tokens, so each part is weighted by its counted
/// targets; then two replicas train as one device with the whole batch.
#[test]
fn instruction_tuning_on_two_replicas_equals_one_device() {
    let _rng = device_rng();
    let dir = tempfile::tempdir().unwrap();
    let device = Device::ndarray();
    let data: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("datasets/instruction-data.json")).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(&path, serde_json::to_string(&data[..100]).unwrap()).unwrap();
    let mut config = InstructConfig::book();
    config.data = path;
    config.model = GptConfig {
        qkv_bias: true,
        ..small_model()
    };
    config.train.lr = 1e-3;
    config.train.max_steps = Some(3);
    config.train.grad_clip = Some(0.5);
    config.train.sample_tokens = 2;
    config.max_new_tokens = 2;
    config.responses = Some(1);
    config.mask_instruction = true;
    let interrupt = AtomicBool::new(false);
    let devices = [Device::ndarray(), Device::ndarray()];
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    finetune_instruct(&config, &one, &device, options(&interrupt)).unwrap();
    let replicated = RunOptions {
        devices: &devices,
        collective: None,
        ..options(&interrupt)
    };
    finetune_instruct(&config, &two, &device, replicated).unwrap();
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), 3);
    for (a, b) in a.iter().zip(&b) {
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-5 * a.train_loss,
            "{a:?} {b:?}"
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm,
            "{a:?} {b:?}"
        );
        assert_eq!(a.val_loss.is_some(), b.val_loss.is_some());
        if let (Some(x), Some(y)) = (a.val_loss, b.val_loss) {
            assert!((x - y).abs() < 1e-5 * x, "{a:?} {b:?}");
        }
    }
}
