//! `cargo xtask`: builds the `ember` binary with the chosen backend and runs whole
//! pipelines.
//!
//! ```text
//! cargo xtask pretrain          [--backend ndarray|openblas|flex|wgpu|tch|cuda] [--debug] [ARGS...]
//! cargo xtask finetune-spam     [--backend ...] [--base PATH|--from-scratch] [--lora RANK] [ARGS...]
//! cargo xtask finetune-instruct [--backend ...] [--base PATH|--from-scratch] [--judge-url URL [--judge-model M]] [ARGS...]
//! cargo xtask build             [--backend ...] [--debug]
//! cargo xtask bench    [--backend ...] [--python PYTHON] [--quick]
//! ```
//! `bench` runs `ember bench` and `bench/torch_gpt_bench.py` (with `--python`, default
//! `python3`, which must have torch) on the same settings, one after the other for each
//! measurement, prints the side-by-side table and writes `target/bench.json`.
//! Every argument xtask does not know is passed on to the `ember` subcommand of the
//! same name (`--config`, `--preset`, `--set key=value`, `--max-steps`, `--out`,
//! `--resume`, ...). `finetune-instruct` with `--judge-url` then scores the responses
//! with `ember judge` (Ollama's API; `--judge-model`, default llama3).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const BACKENDS: [&str; 6] = ["ndarray", "openblas", "flex", "wgpu", "tch", "cuda"];

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <pretrain|finetune-spam|finetune-instruct|build|bench> [--backend {}] [--debug] [ember arguments...]",
        BACKENDS.join("|")
    );
    ExitCode::from(2)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds `ember` with one backend feature; returns the binary's path.
fn build(backend: &str, release: bool) -> Result<PathBuf, String> {
    if !BACKENDS.contains(&backend) {
        return Err(format!(
            "unknown backend \"{backend}\" (known: {})",
            BACKENDS.join(", ")
        ));
    }
    let root = workspace_root();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(&root).args([
        "build",
        "--package",
        "ember-cli",
        "--no-default-features",
        "--features",
        backend,
    ]);
    if release {
        cargo.arg("--release");
    }
    eprintln!(
        "xtask: building ember with the {backend} backend ({})",
        if release { "release" } else { "debug" }
    );
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("ember"))
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return usage();
    }
    let task = args.remove(0);
    let mut backend = "ndarray".to_string();
    let mut release = true;
    let mut rest = Vec::new();
    let mut judge_url = None;
    let mut judge_model = "llama3".to_string();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--backend" => match iter.next() {
                Some(b) => backend = b,
                None => return usage(),
            },
            "--debug" => release = false,
            "--judge-url" if task == "finetune-instruct" => match iter.next() {
                Some(u) => judge_url = Some(u),
                None => return usage(),
            },
            "--judge-model" if task == "finetune-instruct" => match iter.next() {
                Some(m) => judge_model = m,
                None => return usage(),
            },
            _ => rest.push(arg),
        }
    }
    if ![
        "build",
        "bench",
        "pretrain",
        "finetune-spam",
        "finetune-instruct",
    ]
    .contains(&task.as_str())
    {
        return usage();
    }
    let binary = match build(&backend, release) {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(1);
        }
    };
    let ember_args: Vec<String> = match task.as_str() {
        "build" => {
            println!("{}", binary.display());
            return ExitCode::SUCCESS;
        }
        "bench" => return bench(&binary, &backend, &rest),
        subcommand => {
            let mut a = vec![
                "--backend".to_string(),
                backend_name(&backend).to_string(),
                subcommand.to_string(),
            ];
            a.extend(rest.iter().cloned());
            a
        }
    };
    let code = run_ember(&binary, &ember_args);
    if code != ExitCode::SUCCESS {
        return code;
    }
    if let Some(url) = judge_url {
        // The responses file sits in the run directory (--out, or the default one).
        let out = rest
            .iter()
            .position(|a| a == "--out" || a == "--resume")
            .and_then(|i| rest.get(i + 1).cloned())
            .unwrap_or_else(|| "runs/instruct".to_string());
        let responses = PathBuf::from(out).join("instruction-data-with-response.json");
        let judge = vec![
            "judge".to_string(),
            "--responses".to_string(),
            responses.display().to_string(),
            "--url".to_string(),
            url,
            "--model".to_string(),
            judge_model,
        ];
        return run_ember(&binary, &judge);
    }
    ExitCode::SUCCESS
}

fn run_ember(binary: &std::path::Path, args: &[String]) -> ExitCode {
    eprintln!("xtask: {} {}", binary.display(), args.join(" "));
    match Command::new(binary)
        .current_dir(workspace_root())
        .args(args)
        .status()
    {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("xtask: cannot run {}: {e}", binary.display());
            ExitCode::from(1)
        }
    }
}

/// One measurement: the arguments both benchmarks take, and the JSON key compared.
const MEASUREMENTS: [(&str, &[&str], &str); 4] = [
    (
        "train tiny (tokens/s)",
        &["--mode", "train", "--preset", "tiny", "--steps", "5"],
        "tokens_per_s",
    ),
    (
        "train gpt2-small (tokens/s)",
        &["--mode", "train", "--preset", "gpt2-small", "--steps", "3"],
        "tokens_per_s",
    ),
    (
        "generate gpt2-small, KV cache (new tokens/s)",
        &["--mode", "generate", "--preset", "gpt2-small"],
        "kv_cache",
    ),
    (
        "generate gpt2-small, no cache (new tokens/s)",
        &["--mode", "generate", "--preset", "gpt2-small"],
        "no_cache",
    ),
];

/// The number a measurement compares, out of one JSON line: `key` itself, or for the
/// generation rows `key.new_tokens_per_s`.
fn metric(line: &str, key: &str) -> Option<f64> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    match key {
        "kv_cache" | "no_cache" => json[key]["new_tokens_per_s"].as_f64(),
        other => json[other].as_f64(),
    }
}

fn last_json_line(output: &std::process::Output) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
}

fn bench(binary: &std::path::Path, backend: &str, rest: &[String]) -> ExitCode {
    let mut python = "python3".to_string();
    let mut quick = false;
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--python" => python = iter.next().cloned().unwrap_or(python),
            "--quick" => quick = true,
            other => {
                eprintln!("xtask bench: unknown argument {other}");
                return usage();
            }
        }
    }
    let root = workspace_root();
    let script = root.join("bench/torch_gpt_bench.py");
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let mut last_args: Option<&[&str]> = None;
    let mut cached: (Option<String>, Option<String>) = (None, None);
    for (name, args, key) in MEASUREMENTS
        .iter()
        .take(if quick { 1 } else { MEASUREMENTS.len() })
    {
        // Both generate rows come from one run of each side.
        if last_args != Some(*args) {
            let ember = Command::new(binary)
                .current_dir(&root)
                .env("EMBER_LOG", "warn")
                .args(["--backend", backend_name(backend), "bench"])
                .args(*args)
                .output();
            let torch = Command::new(&python).arg(&script).args(*args).output();
            cached = (
                ember.ok().as_ref().and_then(last_json_line),
                torch.ok().as_ref().and_then(last_json_line),
            );
            records.extend(cached.0.clone());
            records.extend(cached.1.clone());
            last_args = Some(*args);
        }
        let e = cached.0.as_deref().and_then(|l| metric(l, key));
        let t = cached.1.as_deref().and_then(|l| metric(l, key));
        rows.push((name.to_string(), e, t));
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!("| measurement | Ember ({backend}) | PyTorch | Ember / PyTorch |");
    println!("|---|---:|---:|---:|");
    for (name, e, t) in &rows {
        let ratio = match (e, t) {
            (Some(e), Some(t)) if *t > 0.0 => format!("{:.2}x", e / t),
            _ => "-".to_string(),
        };
        println!("| {name} | {} | {} | {ratio} |", fmt(*e), fmt(*t));
    }
    let out = root.join("target/bench.json");
    let _ = std::fs::write(&out, format!("[\n{}\n]\n", records.join(",\n")));
    eprintln!("xtask: raw results in {}", out.display());
    ExitCode::SUCCESS
}

/// The runtime backend name of a build feature.
fn backend_name(feature: &str) -> &str {
    match feature {
        "openblas" => "ndarray",
        other => other,
    }
}
