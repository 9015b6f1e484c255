//! End-to-end pretraining runs on a very small model: the run directory's files,
//! exact resumption, and the errors for data that cannot feed a run.
#![allow(deprecated)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::prelude::Device;
use ember_data::error_chain;
use ember_model::GptConfig;
use ember_train::{MetricsLine, PretrainConfig, RunMode, RunOptions, StopReason, pretrain};

fn verdict() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/the-verdict.txt")
}

/// A model small enough to train a few steps in a second.
fn small_config() -> PretrainConfig {
    let mut config = PretrainConfig::tiny();
    config.model = GptConfig {
        context_length: 16,
        emb_dim: 16,
        n_heads: 2,
        n_layers: 1,
        ..GptConfig::tiny()
    };
    config.data.path = verdict();
    config.train.batch_size = 4;
    config.train.eval_freq = 2;
    config.train.eval_iter = 2;
    config.train.sample_tokens = 5;
    config.train.warmup_steps = 2;
    config.train.initial_lr = Some(1e-4);
    config.train.min_lr = Some(1e-4);
    config.train.grad_clip = Some(1.0);
    config
}

/// Dropout draws from the backend's one random generator, which the loop re-seeds at
/// every step: runs in parallel threads of this process would draw from each other's
/// stream, so they take turns.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn try_run(
    config: &PretrainConfig,
    dir: &Path,
    resume: bool,
    interrupted: bool,
) -> Result<ember_train::PretrainOutcome, ember_train::TrainError> {
    try_run_on(&[], config, dir, resume, interrupted)
}

/// A run data-parallel across `devices` (none: one device).
fn try_run_on(
    devices: &[Device],
    config: &PretrainConfig,
    dir: &Path,
    resume: bool,
    interrupted: bool,
) -> Result<ember_train::PretrainOutcome, ember_train::TrainError> {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let interrupt = AtomicBool::new(interrupted);
    pretrain(
        config,
        dir,
        &Device::ndarray(),
        RunOptions {
            mode: if resume {
                RunMode::Resume
            } else {
                RunMode::New
            },
            progress: false,
            interrupt: &interrupt,
            devices,
            collective: None,
        },
    )
}

fn run(config: &PretrainConfig, dir: &Path, resume: bool) -> ember_train::PretrainOutcome {
    try_run(config, dir, resume, false).unwrap()
}

fn metrics(dir: &Path) -> Vec<MetricsLine> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The values that must not depend on an interruption (not the timings).
fn comparable(lines: &[MetricsLine]) -> Vec<(usize, u64, String, String, String, Option<String>)> {
    lines
        .iter()
        .map(|m| {
            (
                m.step,
                m.tokens_seen,
                format!("{:.10e}", m.lr),
                format!("{:.7e}", m.train_loss),
                format!("{:.6e}", m.grad_norm),
                m.val_loss.map(|v| format!("{v:.7e}")),
            )
        })
        .collect()
}

#[test]
fn resumed_run_writes_the_same_metrics_as_a_straight_run() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.train.max_steps = Some(7);
    let straight = root.path().join("straight");
    let outcome = run(&config, &straight, false);
    assert_eq!(outcome.stop, StopReason::MaxSteps);
    assert_eq!(outcome.state.step, 7);

    let split = root.path().join("split");
    config.train.max_steps = Some(3);
    run(&config, &split, false);
    // A later interrupted run may have written lines past the checkpoint: the resumed
    // run must drop them.
    let mut extra = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    extra.push_str(&serde_json::to_string(&metrics(&straight)[3]).unwrap());
    extra.push('\n');
    std::fs::write(split.join("metrics.jsonl"), extra).unwrap();
    config.train.max_steps = Some(7);
    let resumed = run(&config, &split, true);
    assert_eq!(resumed.state, outcome.state);

    let a = metrics(&straight);
    let b = metrics(&split);
    assert_eq!(a.len(), 7);
    assert_eq!(comparable(&a), comparable(&b));
    // The samples too: the report of the first stop gives way to the resumed run's.
    let samples = |dir: &Path| std::fs::read_to_string(dir.join("samples.txt")).unwrap();
    assert_eq!(samples(&straight), samples(&split));
    assert!(
        samples(&split).contains("stopped at step 7 (epoch "),
        "{}",
        samples(&split)
    );
    assert!(!samples(&split).contains("stopped at step 3 "));
    // Warmup from 1e-4 to 1e-3 over two steps, evaluations at steps 1, 3, 5, 7.
    assert!((a[0].lr - 1e-4).abs() < 1e-12 && (a[2].lr - 1e-3).abs() < 1e-12);
    let evals: Vec<usize> = a
        .iter()
        .filter(|m| m.val_loss.is_some())
        .map(|m| m.step)
        .collect();
    assert_eq!(evals, vec![1, 3, 5, 7]);
    // The loss comes down from ln(50257) ≈ 10.8.
    assert!(a[0].train_loss > 10.5 && a[6].train_loss < a[0].train_loss);

    // The run directory holds what the docs promise.
    for file in [
        "config.toml",
        "metrics.jsonl",
        "samples.txt",
        "loss.png",
        "model/config.json",
        "model/model.safetensors",
        "checkpoints/latest",
    ] {
        assert!(straight.join(file).exists(), "{file} missing");
    }
    // The exported model reloads and gives the run's last validation loss.
    let loaded =
        ember_model::load_model(&straight.join("model"), None, &Device::ndarray()).unwrap();
    // (The initialisation scheme is not part of the weights.)
    assert_eq!(
        loaded.config,
        ember_model::ModelConfig::Gpt2(GptConfig {
            weight_init: Default::default(),
            ..config.model.clone()
        })
    );
}

#[test]
fn a_finished_run_is_not_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.train.max_steps = Some(1);
    run(&config, root.path(), false);
    let err = error_chain(&try_run(&config, root.path(), false, false).unwrap_err());
    assert!(err.contains("already holds a run; pass --resume"), "{err}");
}

#[test]
fn data_that_cannot_feed_the_run_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let attempt = |config: &PretrainConfig| {
        error_chain(&try_run(config, &root.path().join("run"), false, false).unwrap_err())
    };
    let short = root.path().join("short.txt");
    std::fs::write(&short, "Only a few words here, far too few for a window.").unwrap();
    let mut config = small_config();
    config.data.path = short.clone();
    let err = attempt(&config);
    assert!(
        err.contains("short.txt") && err.contains("needs more than max_length 16"),
        "{err}"
    );

    let binary = root.path().join("binary.txt");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe]).unwrap();
    config.data.path = binary;
    let err = attempt(&config);
    assert!(
        err.contains("binary.txt: not valid UTF-8 (byte 2)"),
        "{err}"
    );

    config.data.path = root.path().join("missing.txt");
    let err = attempt(&config);
    assert!(err.contains("missing.txt"), "{err}");

    config.data.path = verdict();
    config.train.batch_size = 10_000;
    let err = attempt(&config);
    assert!(
        err.contains("make no full step of batch_size 10000"),
        "{err}"
    );
}

#[test]
fn gradient_accumulation_equals_one_larger_batch() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.model.drop_rate = 0.0;
    config.train.max_steps = Some(3);
    config.train.batch_size = 4;
    run(&config, &root.path().join("one"), false);
    config.train.batch_size = 2;
    config.train.grad_accum_steps = 2;
    run(&config, &root.path().join("two"), false);
    let one = metrics(&root.path().join("one"));
    let two = metrics(&root.path().join("two"));
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.tokens_seen, b.tokens_seen);
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-5 * a.train_loss,
            "{a:?} {b:?}"
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm,
            "{a:?} {b:?}"
        );
    }
}

/// Appendix A's data parallelism: two replicas, each with half of every batch, give the
/// losses, gradient norms and weights of one device with the whole batch (with gradient
/// accumulation and clipping, dropout off), and a resumed replicated run stays exact.
#[test]
fn two_replicas_train_as_one_device_with_the_whole_batch() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.model.drop_rate = 0.0;
    config.train.max_steps = Some(4);
    config.train.batch_size = 4;
    config.train.grad_accum_steps = 2;
    let devices = [Device::ndarray(), Device::ndarray()];
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    try_run_on(&[], &config, &one, false, false).unwrap();
    try_run_on(&devices, &config, &two, false, false).unwrap();
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), 4);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * x.abs().max(1.0);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.tokens_seen, b.tokens_seen);
        assert!(close(a.train_loss, b.train_loss), "{a:?} {b:?}");
        assert!(close(a.grad_norm, b.grad_norm), "{a:?} {b:?}");
        assert_eq!(a.val_loss.is_some(), b.val_loss.is_some());
        if let (Some(x), Some(y)) = (a.val_loss, b.val_loss) {
            assert!(close(x, y), "{a:?} {b:?}");
        }
    }
    // The weights after four steps.
    let weights = |dir: &Path| {
        ember_model::weights::read_safetensors(&dir.join("model/model.safetensors")).unwrap()
    };
    let (wa, wb) = (weights(&one), weights(&two));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (name, x) in &wa {
        let worst = x
            .data
            .iter()
            .zip(&wb[name].data)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name} differs by {worst}");
    }

    // Stopped at step 2 and resumed on both replicas: the straight replicated run.
    let split = root.path().join("split");
    config.train.max_steps = Some(2);
    try_run_on(&devices, &config, &split, false, false).unwrap();
    config.train.max_steps = Some(4);
    try_run_on(&devices, &config, &split, true, false).unwrap();
    assert_eq!(comparable(&metrics(&split)), comparable(&b));

    // With dropout on: each example's masks are keyed by its row in the micro-batch,
    // so the replicas draw the masks of the whole batch and still train as one device.
    config.train.max_steps = Some(3);
    config.model.drop_rate = 0.1;
    let (one, two) = (root.path().join("one-drop"), root.path().join("two-drop"));
    try_run_on(&[], &config, &one, false, false).unwrap();
    try_run_on(&devices, &config, &two, false, false).unwrap();
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), 3);
    for (a, b) in a.iter().zip(&b) {
        assert!(close(a.train_loss, b.train_loss), "{a:?} {b:?}");
        assert!(close(a.grad_norm, b.grad_norm), "{a:?} {b:?}");
    }
    // (Different from the run without dropout: the masks did something.)
    assert!((a[2].train_loss - metrics(&root.path().join("one"))[2].train_loss).abs() > 1e-4);

    // Under bf16 mixed precision: the replicas run on threads of their own, which
    // compute their products in the run's precision too (one device's bf16 run, which
    // differs from the f32 one above).
    config.train.precision = ember_kernels::Dtype::Bf16;
    let (one, two) = (root.path().join("one-bf16"), root.path().join("two-bf16"));
    try_run_on(&[], &config, &one, false, false).unwrap();
    try_run_on(&devices, &config, &two, false, false).unwrap();
    let (c, d) = (metrics(&one), metrics(&two));
    for (c, d) in c.iter().zip(&d) {
        assert!(close(c.train_loss, d.train_loss), "{c:?} {d:?}");
        assert!(close(c.grad_norm, d.grad_norm), "{c:?} {d:?}");
    }
    assert!(
        (c[2].grad_norm - a[2].grad_norm).abs() > 1e-4,
        "{:?} {:?}",
        c[2],
        a[2]
    );
    config.train.precision = ember_kernels::Dtype::F32;

    // A batch that does not split evenly is refused before the run starts.
    config.train.batch_size = 3;
    let three = [Device::ndarray(), Device::ndarray()];
    let err = try_run_on(&three, &config, &root.path().join("odd"), false, false).unwrap_err();
    assert!(
        error_chain(&err).contains("train.batch_size") && error_chain(&err).contains("2 devices"),
        "{}",
        error_chain(&err)
    );
}

#[test]
fn interrupt_writes_a_checkpoint_that_resumes() {
    let root = tempfile::tempdir().unwrap();
    let config = small_config();
    let err = try_run(&config, root.path(), false, true).unwrap_err();
    assert!(
        matches!(err, ember_train::TrainError::Interrupted { step: 1, .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("checkpoints/latest"))
            .unwrap()
            .trim(),
        "step-1"
    );
    let mut more = config.clone();
    more.train.max_steps = Some(2);
    let resumed = run(&more, root.path(), true);
    assert_eq!(resumed.state.step, 2);
    assert_eq!(metrics(root.path()).len(), 2);
}

#[test]
fn trains_from_prepared_shards() {
    let root = tempfile::tempdir().unwrap();
    let tokenizer = ember_tokenizer::Gpt2Tokenizer::gpt2().unwrap();
    let shards = root.path().join("shards");
    ember_data::prepare_corpus(
        &verdict(),
        &shards,
        &tokenizer,
        ember_data::PrepareOptions {
            val_fraction: 0.1,
            shard_tokens: 2000,
            progress: false,
        },
    )
    .unwrap();
    let mut config = small_config();
    config.data.path = shards;
    config.train.max_steps = Some(2);
    let outcome = run(&config, &root.path().join("run"), false);
    assert_eq!(outcome.state.step, 2);
    // 5145 tokens, 10% held out: 4631 training tokens in windows of 16.
    assert!(outcome.val_loss.unwrap() > 9.0);
}

/// Overwrites 8 bytes in the middle of `path` with 0xFF.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 8].fill(0xff);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_checkpoint_is_refused_and_the_previous_one_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.train.max_steps = Some(6);
    let straight = root.path().join("straight");
    run(&config, &straight, false);

    let dir = root.path().join("damaged");
    config.train.max_steps = Some(4);
    config.train.checkpoint_every = 2;
    run(&config, &dir, false);
    // Both the newest checkpoint and the one before are kept.
    assert!(dir.join("checkpoints/step-2").is_dir() && dir.join("checkpoints/step-4").is_dir());
    for file in ["model.bpk", "optimizer.bpk"] {
        corrupt(&dir.join("checkpoints/step-4").join(file));
        config.train.max_steps = Some(6);
        let resumed = run(&config, &dir, true);
        assert_eq!(resumed.state.step, 6);
        // Resumed from step 2: the same run as a straight one.
        assert_eq!(comparable(&metrics(&dir)), comparable(&metrics(&straight)));
        // Start the damaged case again for the next file.
        config.train.max_steps = Some(4);
        std::fs::remove_dir_all(&dir).unwrap();
        run(&config, &dir, false);
    }
    // With every checkpoint damaged, the run is refused and names the newest one.
    corrupt(&dir.join("checkpoints/step-4/model.bpk"));
    corrupt(&dir.join("checkpoints/step-2/state.json"));
    let err = error_chain(&try_run(&config, &dir, true, false).unwrap_err());
    assert!(
        err.contains("no checkpoint passed its integrity check")
            && err.contains("step-4/model.bpk is corrupt"),
        "{err}"
    );
}

#[test]
fn checkpoint_pointers_and_states_cannot_lie() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.train.max_steps = Some(2);
    let dir = root.path().join("run");
    run(&config, &dir, false);
    // `latest` naming a path outside the run is ignored: the newest step-N is used.
    std::fs::write(dir.join("checkpoints/latest"), "../../../etc\n").unwrap();
    config.train.max_steps = Some(3);
    assert_eq!(run(&config, &dir, true).state.step, 3);
    // A state.json that claims another step than its checkpoint is refused (its
    // manifest is rewritten so that only the claim is wrong).
    let checkpoint = dir.join("checkpoints/step-3");
    let state = std::fs::read_to_string(checkpoint.join("state.json")).unwrap();
    std::fs::write(
        checkpoint.join("state.json"),
        state.replace("\"step\": 3", "\"step\": 0"),
    )
    .unwrap();
    ember_data::files::write_checksums(&checkpoint, &["model.bpk", "optimizer.bpk", "state.json"])
        .unwrap();
    config.train.max_steps = Some(4);
    let err = error_chain(&try_run(&config, &dir, true, false).unwrap_err());
    assert!(
        err.contains("claims step 0 in the checkpoint of step 3"),
        "{err}"
    );
}

#[test]
fn temporaries_of_killed_writes_are_removed_and_kept_metrics_keep_their_bytes() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.train.max_steps = Some(3);
    let dir = root.path().join("run");
    run(&config, &dir, false);
    let before = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    // What a write killed half-way leaves behind.
    for folder in [dir.clone(), dir.join("checkpoints"), dir.join("model")] {
        std::fs::write(folder.join(".ember-tmp-abc"), vec![0u8; 4096]).unwrap();
    }
    config.train.max_steps = Some(5);
    run(&config, &dir, true);
    for folder in [dir.clone(), dir.join("checkpoints"), dir.join("model")] {
        assert!(
            !folder.join(".ember-tmp-abc").exists(),
            "{}",
            folder.display()
        );
    }
    let after = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(after.starts_with(&before), "the kept lines changed");
    assert_eq!(after.lines().count(), 5);
}

/// Mixed precision (`train.precision = "bf16"`): the run follows the fp32 run within
/// bf16's rounding without being the same run, its loss falls, and it resumes exactly
/// (the setting is part of the run's config).
#[test]
fn bf16_mixed_precision_follows_the_fp32_run_and_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let mut config = small_config();
    config.model.drop_rate = 0.0;
    config.train.max_steps = Some(8);
    // A rate at which eight steps visibly lower the loss.
    (
        config.train.lr,
        config.train.initial_lr,
        config.train.min_lr,
    ) = (1e-2, None, None);
    run(&config, &root.path().join("fp32"), false);
    config.train.precision = ember_model::Dtype::Bf16;
    run(&config, &root.path().join("bf16"), false);
    let fp32 = metrics(&root.path().join("fp32"));
    let bf16 = metrics(&root.path().join("bf16"));
    assert_eq!(fp32.len(), 8);
    let mut largest_gap: f64 = 0.0;
    for (a, b) in fp32.iter().zip(&bf16) {
        let gap = (a.train_loss - b.train_loss).abs() / a.train_loss;
        largest_gap = largest_gap.max(gap);
        assert!(gap < 5e-3, "step {}: fp32 {a:?} bf16 {b:?}", a.step);
        if let (Some(x), Some(y)) = (a.val_loss, b.val_loss) {
            assert!(
                (x - y).abs() < 5e-3 * x,
                "val at step {}: {x} vs {y}",
                a.step
            );
        }
    }
    assert!(largest_gap > 1e-6, "bf16 rounded nothing: {largest_gap}");
    assert!(bf16.last().unwrap().train_loss < bf16[0].train_loss - 0.1);
    let saved = std::fs::read_to_string(root.path().join("bf16/config.toml")).unwrap();
    assert!(saved.contains("precision = \"bf16\""), "{saved}");

    let halves = root.path().join("halves");
    config.train.max_steps = Some(4);
    run(&config, &halves, false);
    config.train.max_steps = Some(8);
    run(&config, &halves, true);
    assert_eq!(comparable(&metrics(&halves)), comparable(&bf16));
}
