//! What Ember guarantees about a run directory and its inputs, tried as an adversarial
//! user would: concurrent runs, corrupted and crafted files, signals, nonsense settings,
//! stalling and lying servers. Each test is named after what it protects.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

fn metrics_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn two_processes_cannot_share_a_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut first = small_pretrain(&out, &["--max-steps", "1000000", "--set", "train.seed=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first run to hold the lock", || {
        std::fs::read_to_string(out.join(".lock")).is_ok_and(|t| t.starts_with("pid "))
    });
    // A second fresh run and a concurrent resume are both refused; neither writes.
    let second = small_pretrain(&out, &["--max-steps", "6", "--set", "train.seed=2"])
        .output()
        .unwrap();
    assert_one_line_error(&second, "is in use by another ember process (pid ");
    let resume = ember()
        .args([
            "pretrain",
            "--resume",
            out.to_str().unwrap(),
            "--max-steps",
            "3",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&resume, "is in use by another ember process");
    first.kill().unwrap();
    first.wait().unwrap();
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("seed = 1"), "{config}");
}

#[test]
fn sigterm_and_ctrl_c_write_a_checkpoint_and_exit_non_zero() {
    for (signal, code) in [("-TERM", 143), ("-INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let child = small_pretrain(&out, &["--max-steps", "1000000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the first steps", || metrics_lines(&out) >= 2);
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("continue with --resume"),
            "{}",
            stderr(&o)
        );
        let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
        let step: usize = latest
            .trim()
            .strip_prefix("step-")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(step, metrics_lines(&out));
        // ... and the run continues from there.
        let o = ember()
            .args(["pretrain", "--resume", out.to_str().unwrap(), "--quiet"])
            .args(["--max-steps", &(step + 2).to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(metrics_lines(&out), step + 2);
    }
}

#[test]
fn a_run_without_checkpoint_starts_over_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // A run killed before its first checkpoint: metrics, no checkpoint.
    std::fs::create_dir_all(&out).unwrap();
    let o = small_pretrain(&out, &["--max-steps", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    std::fs::write(out.join("notes.md"), "mine").unwrap();
    let o = ember()
        .args(["pretrain", "--resume", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        "has no checkpoint to resume from; start it over with --overwrite",
    );
    let o = small_pretrain(&out, &["--max-steps", "2"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "already holds a run; pass --resume");
    let o = small_pretrain(&out, &["--max-steps", "3", "--overwrite"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics_lines(&out), 3);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.md")).unwrap(),
        "mine"
    );
}

#[test]
fn corrupted_models_are_refused_and_never_replace_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = small_pretrain(&out, &["--max-steps", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = out.join("model/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 8].fill(0xff);
    std::fs::write(&weights, &bytes).unwrap();
    let text = workspace().join("datasets/the-verdict.txt");
    let o = ember()
        .args(["perplexity", "--model", out.to_str().unwrap()])
        .args(["--text-file", text.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(&o, "model.safetensors is corrupt");
}

#[test]
fn crafted_configs_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let fixture = workspace().join("tests/fixtures/tiny-gpt2-a");
    std::fs::copy(
        fixture.join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    for (key, value, needle) in [
        ("n_head", serde_json::json!(0), "n_heads must be positive"),
        (
            "n_head",
            serde_json::json!(3),
            "emb_dim 64 is not divisible by n_heads 3",
        ),
        (
            "vocab_size",
            serde_json::json!(0),
            "vocab_size must be positive",
        ),
        (
            "n_layer",
            serde_json::json!(100_000_000u64),
            "config.json does not belong to these weights",
        ),
    ] {
        let mut config = good.clone();
        config[key] = value;
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        for args in [
            vec!["info", "--model", model.to_str().unwrap()],
            vec![
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
        ] {
            let o = ember().args(&args).output().unwrap();
            assert_one_line_error(&o, needle);
            assert!(o.stdout.is_empty());
        }
    }
    // A run directory whose model/config.json is missing names that file.
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("model")).unwrap();
    let o = ember()
        .args([
            "generate",
            "--model",
            run.to_str().unwrap(),
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&o, &format!("{}", run.join("model/config.json").display()));
}

#[test]
fn nonsense_settings_are_refused_at_parse_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    for (setting, needle) in [
        ("train.grad_clip=-1", "train.grad_clip must be positive"),
        ("train.grad_clip=nan", "train.grad_clip must be positive"),
        (
            "train.optimizer.beta1=2",
            "train.optimizer.beta1 must be in [0, 1)",
        ),
        (
            "train.initial_lr=-5",
            "train.initial_lr must be zero or positive",
        ),
        (
            "train.optimizer.eps=0",
            "train.optimizer.eps must be positive",
        ),
    ] {
        let o = small_pretrain(&out, &["--set", setting]).output().unwrap();
        assert_one_line_error(&o, needle);
    }
    let spam = workspace().join("datasets/sms_spam_collection/SMSSpamCollection");
    for (flags, needle) in [
        (
            vec!["--lora", "100000"],
            "lora_rank 100000 exceeds the model width 16",
        ),
        (
            vec!["--trainable", "last-999"],
            "trainable last-999: the model has 1 blocks",
        ),
    ] {
        let o = ember()
            .args([
                "finetune-spam",
                "--from-scratch",
                "--quiet",
                "--data",
                spam.to_str().unwrap(),
            ])
            .args(["--out", dir.path().join(flags[1]).to_str().unwrap()])
            .args([
                "--set",
                "model.emb_dim=16",
                "--set",
                "model.n_heads=2",
                "--set",
                "model.n_layers=1",
            ])
            .args(&flags)
            .output()
            .unwrap();
        assert_one_line_error(&o, needle);
    }
    let o = ember()
        .args([
            "pretrain",
            "--resume",
            out.to_str().unwrap(),
            "--preset",
            "tiny",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&o, "leave out --preset");
}

#[test]
fn generate_checks_its_settings_before_printing() {
    let model = workspace().join("tests/fixtures/tiny-gpt2-a");
    let o = ember()
        .args([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Hello",
        ])
        .args(["--temperature", "1", "--top-p", "2"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "top_p 2 must be in (0, 1]");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal_and_follow_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = small_pretrain(&out, &["--max-steps", "1"])
        .env_remove("EMBER_LOG")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("INFO") && err.contains("pretraining"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    let o = small_pretrain(&dir.path().join("quiet"), &["--max-steps", "1"])
        .env_remove("EMBER_LOG")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!stderr(&o).contains("INFO"), "{}", stderr(&o));
}

#[test]
fn tokenizing_a_large_text_needs_little_memory() {
    // 20 MB of text: the tokenizer's working memory must not grow with it.
    let verdict = std::fs::read_to_string(workspace().join("datasets/the-verdict.txt")).unwrap();
    let copies = 20_000_000 / verdict.len() + 1;
    let text = verdict.repeat(copies);
    let mut child = ember()
        .args(["tokenize", "--allow-special"])
        .env("EMBER_REPORT_PEAK_RSS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The-verdict is 5145 tokens, and copies join without merging across the seam.
    let ids = stdout(&o).split_whitespace().count();
    assert!(
        (ids as i64 - (5145 * copies) as i64).abs() <= copies as i64,
        "{ids}"
    );
    let peak: u64 = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: "))
        .and_then(|v| v.trim_end_matches(" MiB").parse().ok())
        .unwrap();
    assert!(peak < 500, "tokenizing 20 MB peaked at {peak} MiB");
}

/// A hub that serves one file whose body stalls after `stall_after` bytes the first
/// time, and supports ranges confirmed by its ETag.
fn stalling_hub(data: Vec<u8>, stall_after: usize) -> (String, Arc<AtomicUsize>) {
    let ranged = Arc::new(AtomicUsize::new(0));
    let seen = ranged.clone();
    let stalled = Arc::new(AtomicUsize::new(0));
    let url = serve(move |request, stream: &mut TcpStream| {
        if !request.path.ends_with("/config.json") && !request.path.ends_with("/model.safetensors")
        {
            respond(stream, "404 Not Found", &[], b"");
            return;
        }
        let etag = "\"v1\"".to_string();
        let start: usize = request
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        if start > 0 && request.header("if-range") == Some(etag.as_str()) {
            seen.fetch_add(1, Ordering::SeqCst);
            let range = format!("bytes {start}-{}/{}", data.len() - 1, data.len());
            respond(
                stream,
                "206 Partial Content",
                &[("ETag", etag), ("Content-Range", range)],
                &data[start..],
            );
            return;
        }
        if stalled.fetch_add(1, Ordering::SeqCst) == 0 {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n",
                data.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&data[..stall_after]);
            let _ = stream.flush();
            std::thread::sleep(std::time::Duration::from_secs(30));
            return;
        }
        respond(stream, "200 OK", &[("ETag", etag)], &data);
    });
    (url, ranged)
}

fn download(endpoint: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    ember()
        .args(["download", "--repo", "test/tiny", "--endpoint", endpoint])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_stalled_download_times_out_and_resumes() {
    let data: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (url, ranged) = stalling_hub(data.clone(), 1000);
    let out = tempfile::tempdir().unwrap();
    let o = download(&url, out.path(), &["--timeout", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for file in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(out.path().join(file)).unwrap(),
            data,
            "{file}"
        );
    }
    // The stalled file continued from its 1000 bytes, confirmed by the ETag.
    assert_eq!(ranged.load(Ordering::SeqCst), 1);
}

#[test]
fn a_download_may_not_run_past_its_announced_size() {
    // The Hub's redirect announces 1000 bytes; the CDN then streams without end.
    let url = serve(|request, stream: &mut TcpStream| {
        if request.path.contains("/resolve/") {
            let headers = [
                ("Location", "/cdn/file".to_string()),
                ("X-Linked-Size", "1000".to_string()),
            ];
            respond(stream, "302 Found", &headers, b"");
            return;
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![7u8; 4096];
        while stream.write_all(&chunk).is_ok() {}
    });
    let out = tempfile::tempdir().unwrap();
    let o = download(&url, out.path(), &["--timeout", "5"]);
    assert_one_line_error(&o, "the server sent more than the 1000 announced bytes");
    assert!(!out.path().join("config.json.part").exists());
    assert!(!out.path().join("config.json").exists());
}

#[test]
fn a_stale_part_file_is_not_trusted_without_the_server_confirming_it() {
    let data = b"{\"the\": \"real file\"}".to_vec();
    let ranges = Arc::new(AtomicUsize::new(0));
    let seen = ranges.clone();
    let served = data.clone();
    let url = serve(move |request, stream: &mut TcpStream| {
        if !request.path.ends_with("/config.json") && !request.path.ends_with("/model.safetensors")
        {
            respond(stream, "404 Not Found", &[], b"");
            return;
        }
        if request.header("range").is_some() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        // No ETag, no checksum: nothing confirms a part.
        respond(stream, "200 OK", &[], &served);
    });
    let out = tempfile::tempdir().unwrap();
    std::fs::write(
        out.path().join("config.json.part"),
        b"garbage left by another download",
    )
    .unwrap();
    let o = download(&url, out.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.path().join("config.json")).unwrap(), data);
    assert_eq!(ranges.load(Ordering::SeqCst), 0);
}

/// `--devices`: two CPU replicas train as one device (dropout off), and device lists
/// that cannot work are one-line errors before anything is written.
#[test]
fn devices_replicate_the_model_or_refuse_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ["--max-steps", "3", "--set", "model.drop_rate=0"];
    let one = dir.path().join("one");
    let o = small_pretrain(&one, &settings).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let two = dir.path().join("two");
    let mut args = settings.to_vec();
    args.extend(["--devices", "cpu,cpu"]);
    let o = small_pretrain(&two, &args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5 * x, "{a:?} vs {b:?}");
    }

    let refused = dir.path().join("refused");
    for (devices, message) in [
        ("cpu,gpu9", "unknown device \"gpu9\""),
        (
            "cpu,cuda:x",
            "device \"cuda:x\": the part after ':' must be a GPU number",
        ),
        (
            "cpu:1",
            "device \"cpu:1\": only cuda and tch-cuda devices are numbered",
        ),
        ("cpu,cuda:0", "--devices mixes backends (flex, cuda)"),
        (
            "cpu,cpu,cpu",
            "train.batch_size 4 does not split evenly across 3 devices",
        ),
    ] {
        let o = small_pretrain(&refused, &["--devices", devices])
            .output()
            .unwrap();
        assert_one_line_error(&o, message);
        assert!(!refused.join("metrics.jsonl").exists());
    }
}

/// An `ember` built without MPI that a launcher starts as one of several ranks would
/// train N unconnected copies into one directory: it refuses, naming the feature, and
/// writes nothing.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_several_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = small_pretrain(&out, &[])
        .env("OMPI_COMM_WORLD_RANK", "0")
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_one_line_error(&o, "rank 0 of 2 processes");
    assert!(stderr(&o).contains("--features mpi"), "{}", stderr(&o));
    assert!(!out.exists());
}
