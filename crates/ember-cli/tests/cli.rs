//! The `ember` binary as a user runs it: outputs, exit codes and one-line errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ember() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.env("EMBER_LOG", "warn");
    cmd
}

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = ember()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child that fails before reading its input closes the pipe: that is its answer,
    // not a failure of the test.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2-a")
}

/// A failure: exit code 2 and exactly one line on stderr, containing `needle`.
fn assert_one_line_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line: {err}"
    );
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let o = run(
        &["tokenize", "--json"],
        "Hello, do you like tea?".as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        r#"{"ids":[15496,11,466,345,588,8887,30]}"#
    );
    let o = run(&["tokenize", "--allow-special"], b"tea? <|endoftext|> In");
    assert_eq!(stdout(&o).trim(), "660 64 30 220 50256 554");
    let o = run(&["detokenize"], b"660 64 30 220 50256 554");
    assert_eq!(stdout(&o), "tea? <|endoftext|> In");
    let o = run(&["detokenize"], br#"{"ids": [15496, 11]}"#);
    assert_eq!(stdout(&o), "Hello,");
}

#[test]
fn bad_input_gives_one_line_errors() {
    assert_one_line_error(&run(&["tokenize"], b"a<|endoftext|>b"), "<|endoftext|>");
    assert_one_line_error(
        &run(&["tokenize"], &[0x61, 0xff, 0x62]),
        "not valid UTF-8 (invalid byte at offset 1)",
    );
    assert_one_line_error(
        &run(&["tokenize", "--tokenizer", "gpt9"], b"x"),
        "unknown tokenizer \"gpt9\"",
    );
    assert_one_line_error(
        &run(&["detokenize"], b"12 abc"),
        "\"abc\" is not a token id",
    );
    assert_one_line_error(
        &run(&["info", "--preset", "gpt5"], b""),
        "unknown preset \"gpt5\"",
    );
    assert_one_line_error(
        &run(
            &[
                "generate",
                "--model",
                "/nonexistent/model",
                "--prompt",
                "hi",
            ],
            b"",
        ),
        "no such file or directory",
    );
    let pth = fixture().join("model.pth");
    assert_one_line_error(
        &run(
            &[
                "generate",
                "--model",
                pth.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
            b"",
        ),
        "holds no configuration; pass a preset or a config.json",
    );
    // The right preset name but the wrong shapes: every mismatch is named.
    assert_one_line_error(
        &run(
            &[
                "generate",
                "--model",
                pth.to_str().unwrap(),
                "--preset",
                "gpt2-small",
                "--prompt",
                "hi",
            ],
            b"",
        ),
        "tensor tok_emb.weight has shape [50257, 64], expected [50257, 768]",
    );
    assert_one_line_error(
        &run(
            &["pretrain", "--set", "train.epochs=0", "--out", "/tmp/never"],
            b"",
        ),
        "train.epochs must be at least 1",
    );
    assert_one_line_error(
        &run(&["--backend", "metal", "backends"], b""),
        "backend \"metal\" is not compiled into this ember",
    );
}

#[test]
fn info_reports_the_books_parameter_counts() {
    let o = run(&["info", "--preset", "gpt2-small", "--json"], b"");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params_untied"], 163_009_536);
    assert_eq!(v["params_tied"], 124_412_160);
    assert!((v["size_mb"].as_f64().unwrap() - 621.83).abs() < 0.01);
}

#[test]
fn generate_json_from_hf_and_pth_is_the_reference_greedy_text() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json")).unwrap())
            .unwrap();
    let want = &cases["generation"]["generated_ids"];
    let dir = fixture();
    let config = dir.join("config.json");
    let pth = dir.join("model.pth");
    for args in [
        vec!["--model", dir.to_str().unwrap()],
        vec![
            "--model",
            pth.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        vec!["--model", dir.to_str().unwrap(), "--no-kv-cache"],
    ] {
        let mut all = vec!["generate"];
        all.extend(args.iter().copied());
        all.extend([
            "--prompt",
            "Every effort moves you",
            "--max-new-tokens",
            "24",
            "--json",
            "--no-stop",
        ]);
        let o = run(&all, b"");
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["prompt_ids"], serde_json::json!([6109, 3626, 6100, 345]));
        assert_eq!(&v["generated_ids"], want, "{args:?}");
        assert!(v["text"].as_str().unwrap().starts_with(" richer"));
    }
    // Streaming prints the prompt and the same continuation.
    let o = run(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Every effort moves you",
            "--max-new-tokens",
            "3",
        ],
        b"",
    );
    assert!(
        stdout(&o).starts_with("Every effort moves you richerindal chassis"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn perplexity_is_exp_of_the_mean_loss() {
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        text.path(),
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/the-verdict.txt"),
        )
        .unwrap(),
    )
    .unwrap();
    let o = run(
        &[
            "perplexity",
            "--model",
            fixture().to_str().unwrap(),
            "--text-file",
            text.path().to_str().unwrap(),
            "--json",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"], 5145);
    let loss = v["loss"].as_f64().unwrap();
    assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-6 * loss.exp());
    // A random model is close to uniform over 50257 tokens: ln(50257) = 10.8.
    assert!(loss > 10.0 && loss < 12.5, "{loss}");
}

#[test]
fn chat_wraps_each_line_in_the_alpaca_prompt_and_streams_the_answer() {
    let dir = fixture();
    let model = dir.to_str().unwrap();
    let o = run(
        &["chat", "--model", model, "--max-new-tokens", "5"],
        b"Name a colour.\nexit\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let prompt = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n";
    let g = run(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "5",
            "--json",
        ],
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
    let answer = v["text"].as_str().unwrap().replace("<|endoftext|>", "");
    assert!(!answer.is_empty());
    assert_eq!(stdout(&o), format!("> {answer}\n> "));
}

fn spam_data() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/sms_spam_collection/SMSSpamCollection")
        .display()
        .to_string()
}

#[test]
fn finetune_commands_check_their_inputs_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = spam_data();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let o = run(&["finetune-spam", "--out", out], b"");
    assert_one_line_error(&o, "pass --base MODEL");
    let o = run(
        &[
            "finetune-spam",
            "--from-scratch",
            "--out",
            out,
            "--trainable",
            "some",
        ],
        b"",
    );
    assert_one_line_error(&o, "trainable \"some\" is not one of all, head, last-N");
    let o = run(
        &[
            "finetune-spam",
            "--base",
            "/nonexistent/model",
            "--out",
            out,
            "--data",
            &data,
        ],
        b"",
    );
    assert_one_line_error(&o, "/nonexistent/model");
    let o = run(
        &[
            "finetune-instruct",
            "--from-scratch",
            "--out",
            out,
            "--set",
            "train.epoch=3",
        ],
        b"",
    );
    assert_one_line_error(&o, "unknown field `epoch`");
    let o = run(
        &[
            "finetune-instruct",
            "--from-scratch",
            "--out",
            out,
            "--data",
            "/nonexistent.json",
        ],
        b"",
    );
    assert_one_line_error(&o, "/nonexistent.json");
    let o = run(&["finetune-dpo", "--out", out], b"");
    assert_one_line_error(&o, "pass --base MODEL");
    let o = run(
        &[
            "finetune-dpo",
            "--from-scratch",
            "--out",
            out,
            "--beta",
            "0",
        ],
        b"",
    );
    assert_one_line_error(&o, "beta must be a positive number, got 0");
    let o = run(
        &[
            "finetune-dpo",
            "--from-scratch",
            "--out",
            out,
            "--data",
            "/nonexistent.json",
        ],
        b"",
    );
    assert_one_line_error(&o, "/nonexistent.json");
    // Nothing was written for a run that never started... except the refusal to reuse
    // a directory that holds one.
    assert!(!dir.path().join("run").join("metrics.jsonl").exists());
    let o = run(
        &["classify", "--model", dir.path().to_str().unwrap(), "hello"],
        b"",
    );
    assert_one_line_error(&o, "classifier.json");
}

#[test]
fn finetune_spam_then_classify_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("spam");
    let run_dir = run_dir.to_str().unwrap();
    let data = spam_data();
    let o = run(
        &[
            "finetune-spam",
            "--data",
            &data,
            "--from-scratch",
            "--out",
            run_dir,
            "--max-steps",
            "3",
            "--quiet",
            "--set",
            "model.emb_dim=32",
            "--set",
            "model.n_layers=1",
            "--set",
            "model.n_heads=2",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("accuracy after 3 steps"),
        "{}",
        stdout(&o)
    );
    let o = run(
        &[
            "classify",
            "--model",
            run_dir,
            "--json",
            "Win a free cruise, text WIN now",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ham = v["probabilities"]["ham"].as_f64().unwrap();
    let spam = v["probabilities"]["spam"].as_f64().unwrap();
    assert!((ham + spam - 1.0).abs() < 1e-5);
    assert_eq!(v["label"], if spam > ham { "spam" } else { "ham" });
    // Running again into the same directory is refused; the run is kept.
    let o = run(
        &[
            "finetune-spam",
            "--from-scratch",
            "--out",
            run_dir,
            "--data",
            &data,
        ],
        b"",
    );
    assert_one_line_error(&o, "already holds a run");
    assert!(Path::new(run_dir).join("model/classifier.json").exists());
}
