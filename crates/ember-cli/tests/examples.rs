//! Runs the chapter examples (`crates/ember-cli/examples/`) and checks the numbers
//! each prints on its `KEY NUMBERS:` line against the book.
//!
//! Integration tests do not build examples, so each test runs
//! `cargo run -q -p ember-cli --example NAME` from the workspace root (default
//! features). The tests take a lock so that only one example runs at a time.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the example and returns (all of stdout, its `KEY NUMBERS:` line).
fn run_example(name: &str) -> (String, String) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cargo = Command::new(env!("CARGO"));
    // What cargo sets for this test's process (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...)
    // is not passed on: build scripts that watch those variables (ring's does) would see
    // another environment, rebuild ring and all above it here, and again in the next
    // `cargo` run from a shell (90 s each in a cold CI run).
    for (key, _) in std::env::vars_os() {
        let set_by_cargo = key.to_str().is_some_and(|k| {
            [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| k.starts_with(prefix))
                || ["CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&k)
        });
        if set_by_cargo {
            cargo.env_remove(key);
        }
    }
    let output = cargo
        .args(["run", "-q", "-p", "ember-cli", "--example", name])
        .current_dir(workspace_root())
        .env("EMBER_LOG", "warn")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let key = stdout
        .lines()
        .find(|l| l.starts_with("KEY NUMBERS:"))
        .unwrap_or_else(|| panic!("{name} printed no KEY NUMBERS line:\n{stdout}"))
        .to_string();
    (stdout, key)
}

fn assert_has(key: &str, expected: &str) {
    assert!(key.contains(expected), "expected {expected:?} in\n{key}");
}

/// The number after `name=` on the key line.
fn number(key: &str, name: &str) -> f64 {
    let start = key
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("{name} not in {key}"))
        + name.len()
        + 1;
    let value: String = key[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e'))
        .collect();
    value.parse().unwrap_or_else(|_| panic!("{name}={value}"))
}

/// The `[a, b, ...]` list after `name=` on the key line.
fn list(key: &str, name: &str) -> Vec<f64> {
    let start = key
        .find(&format!("{name}=["))
        .unwrap_or_else(|| panic!("{name} not in {key}"))
        + name.len()
        + 2;
    let end = start + key[start..].find(']').unwrap();
    key[start..end]
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect()
}

#[test]
fn ch02_tokenization() {
    let (_, key) = run_example("ch02_tokenization");
    for expected in [
        "characters=20479",
        "simple_tokens=4690",
        "vocab=1130",
        "vocab_special=1132",
        "v1_ids=[1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]",
        "v2_ids=[1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]",
        "bpe_ids=[15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286, 617, 34680, 27271, 13]",
        "verdict_bpe_tokens=5145",
        "first_input=[40, 367, 2885, 1464]",
        "first_target=[367, 2885, 1464, 1807]",
        "windows=5141",
        "input_embeddings=[8, 4, 256]",
    ] {
        assert_has(&key, expected);
    }
}

#[test]
fn ch03_attention() {
    let (_, key) = run_example("ch03_attention");
    let weights = list(&key, "journey_weights");
    let book = [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581];
    assert_eq!(weights.len(), 6);
    for (w, b) in weights.iter().zip(book) {
        assert!((w - b).abs() < 1e-4, "{weights:?} vs the book's {book:?}");
    }
    for expected in [
        "journey_sum=1.0000",
        "rows_sum_to_one=true",
        "masked_rows_sum_to_one=true",
        "upper_triangle_zero=true",
        "self_attention_v2=[6, 2]",
        "causal_attention=[2, 6, 2]",
        "wrapper=[2, 6, 4]",
        "multi_head=[2, 6, 2]",
        "multi_head_gpt2=[2, 6, 768]",
        "kv_cache_equal=true",
    ] {
        assert_has(&key, expected);
    }
}

#[test]
fn ch04_gpt_model() {
    let (stdout, key) = run_example("ch04_gpt_model");
    for expected in [
        "params_untied=163,009,536",
        "params_tied=124,412,160",
        "size_mb=621.83",
        "built_params=163,009,536",
        "gpt2-medium=406,212,608/354,749,440",
        "gpt2-large=838,220,800/773,891,840",
        "gpt2-xl=1,637,792,000/1,557,380,800",
        "logits=[2, 4, 50257]",
        "generated_len=10",
        "kv_cache_same=true",
    ] {
        assert_has(&key, expected);
    }
    assert!(stdout.contains("[6109, 3626, 6100, 345]"), "{stdout}");
    assert!(stdout.contains("[6109, 1110, 6622, 257]"), "{stdout}");
    assert!(
        stdout.contains("encoded: [15496, 11, 314, 716]"),
        "{stdout}"
    );
}

#[test]
fn ch05_pretraining() {
    let (_, key) = run_example("ch05_pretraining");
    let loss = number(&key, "untrained_loss");
    // Near-uniform predictions: about ln(50257) = 10.82 (the book's untrained GPT-2: 10.7940).
    assert!(
        (loss - 50257f64.ln()).abs() < 0.25,
        "untrained loss {loss} is not about ln(50257)"
    );
    assert_has(&key, "greedy=forward");
    // The book's softmax: 6.0907e-02, 1.6313e-03, 1.0019e-04, 5.7212e-01, ...
    assert_has(
        &key,
        "probs_t1=[0.0609, 0.0016, 0.0001, 0.5721, 0.0034, 0.0001, 0.0001, 0.3576, 0.0040]",
    );
    let probs = list(&key, "probs_t1");
    for name in ["counts_t1", "counts_t0.1", "counts_t5"] {
        let counts = list(&key, name);
        assert_eq!(counts.iter().sum::<f64>(), 1000.0, "{name}");
        if name == "counts_t1" {
            for (c, p) in counts.iter().zip(&probs) {
                assert!((c / 1000.0 - p).abs() < 0.05, "{counts:?} vs {probs:?}");
            }
        }
    }
    // T = 0.1 is nearly greedy; T = 5 spreads the draws over every word.
    assert!(list(&key, "counts_t0.1")[3] >= 980.0, "{key}");
    assert!(list(&key, "counts_t5").iter().all(|&c| c > 0.0), "{key}");
    assert_has(&key, "top3=[3, 7, 0]");
    assert_has(&key, "topk_only=true");
    assert_has(&key, "train_steps=20");
    assert_has(&key, "loss_falls=true");
    let first = number(&key, "first_loss");
    let last = number(&key, "last_loss");
    assert!(first > 10.0 && last < first - 0.5, "{first} -> {last}");
}

#[test]
fn ch06_classification() {
    let (_, key) = run_example("ch06_classification");
    for expected in [
        "rows=5572",
        "ham=4825",
        "spam=747",
        "balanced=1494",
        "first_balanced=[4307, 4138, 4831, 4461, 5440]",
        "split=1045/149/300",
        "longest_train_tokens=120",
        "pad_id=50256",
        "padded_len=120",
        "head_all_positions=[1, 4, 2]",
        "last_token_logits=[1, 2]",
    ] {
        assert_has(&key, expected);
    }
}

#[test]
fn ch07_instruction() {
    let (stdout, key) = run_example("ch07_instruction");
    for expected in [
        "entries=1100",
        "split=935/110/55",
        "collate_inputs=[[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]",
        "collate_targets=[[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]",
        "collate_max3_inputs=[[0, 1, 2], [5, 6, 50256], [7, 8, 9]]",
        "collate_max3_targets=[[1, 2, 3], [6, 50256, -100], [8, 9, 50256]]",
    ] {
        assert_has(&key, expected);
    }
    assert!(stdout.contains(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
         ### Instruction:\nIdentify the correct spelling of the following word.\n\n\
         ### Input:\nOcassion\n\n### Response:\nThe correct spelling is 'Occasion.'"
    ), "{stdout}");
}

#[test]
fn appendix_a() {
    let (stdout, key) = run_example("appendix_a");
    for expected in [
        "product=[14, 32, 32, 77]",
        "autograd_matches=true",
        "grad_w1=-0.089826",
        "grad_b=-0.081660",
        "params=2213",
        "params_2_2=752",
        "train_accuracy=1.00",
        "test_accuracy=1.00",
        "reload_same=true",
    ] {
        assert_has(&key, expected);
    }
    // PyTorch's numbers (tests/fixtures/appendix-a): the seeded network's logits and
    // softmax, the six batch losses from the same starting weights and batch orders,
    // and the trained network's logits.
    assert!(number(&key, "logits_diff") < 1e-5, "{key}");
    assert!(number(&key, "losses_diff") < 1e-5, "{key}");
    assert!(number(&key, "final_logits_diff") < 1e-5, "{key}");
    let losses = list(&key, "losses");
    let book = [0.75, 0.65, 0.44, 0.13, 0.03, 0.00];
    // Printed with two decimals (0.6450 shows as 0.65).
    for (got, printed) in losses.iter().zip(book) {
        assert!(
            (got - printed).abs() <= 0.0051,
            "{losses:?} vs the appendix's {book:?}"
        );
    }
    assert!(
        stdout.contains("Epoch: 003/003 | Batch 001/002 | Train Loss: 0.00"),
        "{stdout}"
    );
}
