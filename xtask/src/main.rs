//! `cargo xtask`: builds the `ember` binary with the chosen backend and runs whole
//! pipelines.
//!
//! ```text
//! cargo xtask pretrain          [--backend ndarray|openblas|flex|wgpu|tch|cuda] [--debug] [ARGS...]
//! cargo xtask finetune-spam     [--backend ...] [--base PATH|--from-scratch] [--lora RANK] [ARGS...]
//! cargo xtask finetune-instruct [--backend ...] [--base PATH|--from-scratch] [--judge-url URL [--judge-model M]] [ARGS...]
//! cargo xtask finetune-dpo      [--backend ...] [--base PATH|--from-scratch] [--judge-url URL [--judge-model M]] [ARGS...]
//! cargo xtask build             [--backend ...] [--debug]
//! cargo xtask bench    [--backend ...] [--python PYTHON] [--quick] [--rounds N] [--peak-gflops G]
//!                       [--without TEXT]... [--llama-cpp LLAMA_CPP_DIR --checkpoint HF_DIR]
//! ```
//! `bench` runs `ember bench` and its reference on the same settings, alternating
//! (Ember, reference, Ember, reference, ...) for `--rounds` rounds (3; 1 with
//! `--quick`) so that a slow minute of the machine falls on both sides (`--without TEXT`
//! leaves out the rows whose name has TEXT, e.g. `bf16` on a CPU without bf16
//! instructions, where PyTorch's bf16 step takes ten minutes), and reports each
//! side's median and the median of the rounds' ratios with their spread (lowest and
//! highest), for each measurement: `bench/torch_gpt_bench.py` (PyTorch) for GPT-2 training
//! and generation, `bench/hf_generate_bench.py` (transformers) for generation with
//! Qwen3-0.6B's shape in fp32 and bf16. `--python` (default `python3`) must have torch
//! and transformers. It prints the side-by-side table, with each side's peak memory,
//! and writes `target/bench.json`. Training is measured in fp32 and in bf16 (Ember's
//! mixed precision, `ember bench --precision bf16`, against PyTorch's bf16 autocast), and
//! PyTorch's steps also with SDPA attention (tiny and gpt2-small in fp32, gpt2-small in
//! bf16, and gpt2-small at context 1024 in fp32). With `--peak-gflops` (the
//! CPU's fp32 peak: cores x FLOPs per cycle x clock) training rows get an MFU column,
//! against that fp32 peak also for bf16 rows (a CPU with AVX512_BF16 has twice it for
//! bf16 products). With `--llama-cpp` (a llama.cpp tree with llama-bench and
//! llama-quantize built) and `--checkpoint` (a Hub-layout model, e.g. the Qwen3-0.6B
//! shape of scripts/reference/make_bench_checkpoint.py), a second table sets Ember's
//! decoding and prompt speed beside llama.cpp's for BF16, Q8_0, Q4_0 and Q4_K weights
//! (`bench/llama_cpp_compare.sh`, whose converter needs `gguf` and `sentencepiece` in
//! `--python` too).
//! Every argument xtask does not know is passed on to the `ember` subcommand of the
//! same name (`--config`, `--preset`, `--set key=value`, `--max-steps`, `--out`,
//! `--resume`, ...). `finetune-instruct` with `--judge-url` then scores the responses
//! with `ember judge` (Ollama's API; `--judge-model`, default llama3); `finetune-dpo`
//! with it scores the responses before and after preference tuning.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const BACKENDS: [&str; 6] = ["ndarray", "openblas", "flex", "wgpu", "tch", "cuda"];

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <pretrain|finetune-spam|finetune-instruct|finetune-dpo|build|bench> [--backend {}] [--debug] [ember arguments...]",
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
    let mut backend = "flex".to_string();
    let mut release = true;
    let mut rest = Vec::new();
    let mut judge_url = None;
    let mut judge_model = "llama3".to_string();
    let judged = task == "finetune-instruct" || task == "finetune-dpo";
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--backend" => match iter.next() {
                Some(b) => backend = b,
                None => return usage(),
            },
            "--debug" => release = false,
            "--judge-url" if judged => match iter.next() {
                Some(u) => judge_url = Some(u),
                None => return usage(),
            },
            "--judge-model" if judged => match iter.next() {
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
        "finetune-dpo",
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
        // The responses sit in the run directory (--out, or the default one).
        let (default_out, files): (&str, &[&str]) = match task.as_str() {
            "finetune-dpo" => (
                "runs/dpo",
                &[
                    "instruction-data-with-response-before-dpo.json",
                    "instruction-data-with-response.json",
                ],
            ),
            _ => ("runs/instruct", &["instruction-data-with-response.json"]),
        };
        let out = rest
            .iter()
            .position(|a| a == "--out" || a == "--resume")
            .and_then(|i| rest.get(i + 1).cloned())
            .unwrap_or_else(|| default_out.to_string());
        for file in files {
            let responses = PathBuf::from(&out).join(file);
            let judge = vec![
                "judge".to_string(),
                "--responses".to_string(),
                responses.display().to_string(),
                "--url".to_string(),
                url.clone(),
                "--model".to_string(),
                judge_model.clone(),
            ];
            let code = run_ember(&binary, &judge);
            if code != ExitCode::SUCCESS {
                return code;
            }
        }
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

/// A reference script (under bench/) and its arguments after the row's shared ones.
type Reference = (&'static str, &'static [&'static str]);

/// One row of the side-by-side table.
struct Measurement {
    name: &'static str,
    /// Arguments both sides take (the torch_gpt_bench.py rows mirror `ember bench`).
    shared: &'static [&'static str],
    /// Arguments of `ember bench` after the shared ones.
    ember: &'static [&'static str],
    /// The reference script (under bench/) and its arguments after the shared ones.
    reference: Reference,
    /// The number compared: a JSON key, or for generation rows of `ember bench` and
    /// torch_gpt_bench.py `kv_cache` / `no_cache` (their `new_tokens_per_s`).
    key: &'static str,
}

const GPT_SCRIPT: &str = "torch_gpt_bench.py";
const HF_SCRIPT: &str = "hf_generate_bench.py";
const QWEN3_CONFIG: &str = "bench/configs/qwen3-0.6b.json";
const TINY_TRAIN: &[&str] = &["--mode", "train", "--preset", "tiny", "--steps", "5"];
/// The gpt2-small training step at the book's setting.
const GPT2_SMALL_TRAIN: &[&str] = &["--mode", "train", "--preset", "gpt2-small", "--steps", "3"];
/// The gpt2-small training step at GPT-2's own context (batch 2 x 1024: 4x the tokens of
/// the book's step, the attention's share of the FLOPs 13% rather than 4%).
const GPT2_SMALL_TRAIN_1024: &[&str] = &[
    "--mode",
    "train",
    "--preset",
    "gpt2-small",
    "--steps",
    "2",
    "--context",
    "1024",
];
const GPT2_SMALL_GENERATE: &[&str] = &["--mode", "generate", "--preset", "gpt2-small"];
/// bf16: Ember's mixed precision, PyTorch's autocast.
const EMBER_BF16: &[&str] = &["--precision", "bf16"];
const TORCH_BF16: &[&str] = &["--dtype", "bf16"];

const MEASUREMENTS: [Measurement; 13] = [
    Measurement {
        name: "train tiny (tokens/s)",
        shared: TINY_TRAIN,
        ember: &[],
        reference: (GPT_SCRIPT, &[]),
        key: "tokens_per_s",
    },
    Measurement {
        name: "train tiny, bf16: Ember mixed precision, PyTorch autocast (tokens/s)",
        shared: TINY_TRAIN,
        ember: EMBER_BF16,
        reference: (GPT_SCRIPT, TORCH_BF16),
        key: "tokens_per_s",
    },
    // PyTorch's fastest on a CPU without bf16 instructions: fp32 with SDPA.
    Measurement {
        name: "train tiny, PyTorch SDPA attention (tokens/s)",
        shared: TINY_TRAIN,
        ember: &[],
        reference: (GPT_SCRIPT, &["--attn", "sdpa"]),
        key: "tokens_per_s",
    },
    Measurement {
        name: "train gpt2-small (tokens/s)",
        shared: GPT2_SMALL_TRAIN,
        ember: &[],
        reference: (GPT_SCRIPT, &[]),
        key: "tokens_per_s",
    },
    Measurement {
        name: "train gpt2-small, bf16: Ember mixed precision, PyTorch autocast (tokens/s)",
        shared: GPT2_SMALL_TRAIN,
        ember: EMBER_BF16,
        reference: (GPT_SCRIPT, TORCH_BF16),
        key: "tokens_per_s",
    },
    // PyTorch's SDPA attention, in fp32 and under bf16 autocast, against Ember's run of
    // the same precision (reused from the rows above).
    Measurement {
        name: "train gpt2-small, PyTorch SDPA attention (tokens/s)",
        shared: GPT2_SMALL_TRAIN,
        ember: &[],
        reference: (GPT_SCRIPT, &["--attn", "sdpa"]),
        key: "tokens_per_s",
    },
    Measurement {
        name: "train gpt2-small, bf16, PyTorch SDPA attention (tokens/s)",
        shared: GPT2_SMALL_TRAIN,
        ember: EMBER_BF16,
        reference: (GPT_SCRIPT, &["--dtype", "bf16", "--attn", "sdpa"]),
        key: "tokens_per_s",
    },
    Measurement {
        name: "train gpt2-small, context 1024, PyTorch SDPA attention (tokens/s)",
        shared: GPT2_SMALL_TRAIN_1024,
        ember: &[],
        reference: (GPT_SCRIPT, &["--attn", "sdpa"]),
        key: "tokens_per_s",
    },
    Measurement {
        name: "generate gpt2-small, KV cache (new tokens/s)",
        shared: GPT2_SMALL_GENERATE,
        ember: &[],
        reference: (GPT_SCRIPT, &[]),
        key: "kv_cache",
    },
    Measurement {
        name: "generate gpt2-small, no cache (new tokens/s)",
        shared: GPT2_SMALL_GENERATE,
        ember: &[],
        reference: (GPT_SCRIPT, &[]),
        key: "no_cache",
    },
    // Qwen3-0.6B's shape, random weights, prompt 16 + 64 new tokens, KV cache; the
    // reference is transformers, whose script takes its own arguments.
    Measurement {
        name: "generate Qwen3-0.6B shape, fp32 (new tokens/s)",
        shared: &[],
        ember: &[
            "--mode",
            "generate",
            "--model-config",
            QWEN3_CONFIG,
            "--dtype",
            "f32",
        ],
        reference: (HF_SCRIPT, &["--config", QWEN3_CONFIG, "--dtype", "fp32"]),
        key: "kv_cache",
    },
    Measurement {
        name: "generate Qwen3-0.6B shape, bf16 (new tokens/s)",
        shared: &[],
        ember: &[
            "--mode",
            "generate",
            "--model-config",
            QWEN3_CONFIG,
            "--dtype",
            "bf16",
        ],
        reference: (HF_SCRIPT, &["--config", QWEN3_CONFIG, "--dtype", "bf16"]),
        key: "kv_cache",
    },
    // Eight sequences at once: Ember's packed decoding steps (a server's batch, each
    // sequence's bits as alone), transformers' static batch; new tokens of all eight.
    Measurement {
        name: "generate Qwen3-0.6B shape, bf16, 8 sequences together (new tokens/s)",
        shared: &[],
        ember: &[
            "--mode",
            "generate",
            "--model-config",
            QWEN3_CONFIG,
            "--dtype",
            "bf16",
            "--sequences",
            "8",
        ],
        reference: (
            HF_SCRIPT,
            &["--config", QWEN3_CONFIG, "--dtype", "bf16", "--batch", "8"],
        ),
        key: "kv_cache",
    },
];

/// The number `key` names in one JSON line: `key.new_tokens_per_s` for the generation
/// rows of `ember bench` and torch_gpt_bench.py, the line's own `new_tokens_per_s` for
/// hf_generate_bench.py (one mode per run), else `key` itself.
fn metric(line: &str, key: &str) -> Option<f64> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    match key {
        "kv_cache" | "no_cache" => json[key]["new_tokens_per_s"]
            .as_f64()
            .or_else(|| json["new_tokens_per_s"].as_f64()),
        other => json[other].as_f64(),
    }
}

fn peak_mb(line: &str) -> Option<f64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?["peak_rss_mb"].as_f64()
}

fn last_json_line(output: &std::process::Output) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
}

/// One line of `bench`'s table: each side's median over the rounds, the median and
/// spread of the rounds' ratios, the highest peak memory, model FLOP utilisation.
struct Row {
    name: &'static str,
    ember: Option<f64>,
    reference: Option<f64>,
    ratio: Option<f64>,
    spread: Option<(f64, f64)>,
    peak_ember: Option<f64>,
    peak_reference: Option<f64>,
    mfu_ember: Option<f64>,
    mfu_reference: Option<f64>,
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The lowest and highest of `values`.
fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let lowest = values.iter().copied().reduce(f64::min)?;
    let highest = values.iter().copied().reduce(f64::max)?;
    Some((lowest, highest))
}

fn bench(binary: &std::path::Path, backend: &str, rest: &[String]) -> ExitCode {
    let mut python = "python3".to_string();
    let mut quick = false;
    let mut rounds: Option<usize> = None;
    let mut peak_gflops: Option<f64> = None;
    let mut without: Vec<String> = Vec::new();
    let (mut llama_cpp, mut checkpoint): (Option<String>, Option<String>) = (None, None);
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--python" => python = iter.next().cloned().unwrap_or(python),
            "--quick" => quick = true,
            "--rounds" => match iter.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => rounds = Some(n),
                _ => return usage(),
            },
            "--without" => match iter.next() {
                Some(text) => without.push(text.clone()),
                None => return usage(),
            },
            "--llama-cpp" => llama_cpp = iter.next().cloned(),
            "--checkpoint" => checkpoint = iter.next().cloned(),
            "--peak-gflops" => match iter.next().and_then(|v| v.parse().ok()) {
                Some(g) => peak_gflops = Some(g),
                None => return usage(),
            },
            other => {
                eprintln!("xtask bench: unknown argument {other}");
                return usage();
            }
        }
    }
    if llama_cpp.is_some() != checkpoint.is_some() {
        eprintln!("xtask bench: --llama-cpp and --checkpoint go together");
        return usage();
    }
    let rounds = rounds.unwrap_or(if quick { 1 } else { 3 });
    let root = workspace_root();
    let mut rows = Vec::new();
    let mut records = Vec::new();
    // Each distinct command runs once per round: rows that share one side reuse its line.
    type Args = (&'static [&'static str], &'static [&'static str]);
    type ReferenceArgs = (&'static [&'static str], Reference);
    let mut ember_runs: Vec<((Args, usize), Option<String>)> = Vec::new();
    let mut reference_runs: Vec<((ReferenceArgs, usize), Option<String>)> = Vec::new();
    for m in MEASUREMENTS
        .iter()
        .filter(|m| !without.iter().any(|text| m.name.contains(text.as_str())))
        .take(if quick { 1 } else { MEASUREMENTS.len() })
    {
        eprintln!("xtask bench: {} ({rounds} rounds)", m.name);
        let mut lines = Vec::new();
        for round in 0..rounds {
            let ember_key = ((m.shared, m.ember), round);
            let ember_line = match ember_runs.iter().find(|(key, _)| *key == ember_key) {
                Some((_, line)) => line.clone(),
                None => {
                    let output = Command::new(binary)
                        .current_dir(&root)
                        .env("EMBER_LOG", "warn")
                        .args(["--backend", backend_name(backend), "bench"])
                        .args(m.shared)
                        .args(m.ember)
                        .output();
                    let line = output.ok().as_ref().and_then(last_json_line);
                    records.extend(line.clone());
                    ember_runs.push((ember_key, line.clone()));
                    line
                }
            };
            let reference_key = ((m.shared, m.reference), round);
            let reference_line = match reference_runs.iter().find(|(key, _)| *key == reference_key)
            {
                Some((_, line)) => line.clone(),
                None => {
                    let (script, args) = m.reference;
                    let output = Command::new(&python)
                        .current_dir(&root)
                        .arg(root.join("bench").join(script))
                        .args(m.shared)
                        .args(args)
                        .output();
                    let line = output.ok().as_ref().and_then(last_json_line);
                    records.extend(line.clone());
                    reference_runs.push((reference_key, line.clone()));
                    line
                }
            };
            lines.push((ember_line, reference_line));
        }
        let value = |line: &Option<String>| line.as_deref().and_then(|l| metric(l, m.key));
        let peak = |line: &Option<String>| line.as_deref().and_then(peak_mb);
        let ember: Vec<f64> = lines.iter().filter_map(|(e, _)| value(e)).collect();
        let reference: Vec<f64> = lines.iter().filter_map(|(_, t)| value(t)).collect();
        let ratios: Vec<f64> = lines
            .iter()
            .filter_map(|(e, t)| Some(value(e)? / value(t).filter(|t| *t > 0.0)?))
            .collect();
        // Model FLOP utilisation of training rows: both sides train the same model, whose
        // FLOPs per token Ember's line states.
        let flops = lines
            .iter()
            .find_map(|(e, _)| e.as_deref().and_then(|l| metric(l, "flops_per_token")));
        let mfu = |tokens_per_s: Option<f64>| match (m.key, tokens_per_s, flops, peak_gflops) {
            ("tokens_per_s", Some(t), Some(f), Some(p)) => Some(100.0 * t * f / (p * 1e9)),
            _ => None,
        };
        let (e, t) = (median(&ember), median(&reference));
        let highest = |values: Vec<f64>| spread(&values).map(|(_, highest)| highest);
        rows.push(Row {
            name: m.name,
            ember: e,
            reference: t,
            ratio: median(&ratios),
            spread: spread(&ratios),
            peak_ember: highest(lines.iter().filter_map(|(e, _)| peak(e)).collect()),
            peak_reference: highest(lines.iter().filter_map(|(_, t)| peak(t)).collect()),
            mfu_ember: mfu(e),
            mfu_reference: mfu(t),
        });
    }
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "| measurement | Ember ({backend}) | PyTorch | Ember / PyTorch (median of {rounds}) | lowest - highest | peak MB Ember | peak MB PyTorch | MFU % Ember | MFU % PyTorch |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let ratio = row.ratio.map_or("-".to_string(), |r| format!("{r:.2}x"));
        let spread = row
            .spread
            .map_or("-".to_string(), |(lo, hi)| format!("{lo:.2}x - {hi:.2}x"));
        println!(
            "| {} | {} | {} | {ratio} | {spread} | {} | {} | {} | {} |",
            row.name,
            fmt(row.ember, 1),
            fmt(row.reference, 1),
            fmt(row.peak_ember, 0),
            fmt(row.peak_reference, 0),
            fmt(row.mfu_ember, 1),
            fmt(row.mfu_reference, 1)
        );
    }
    if let (Some(llama_cpp), Some(checkpoint)) = (llama_cpp, checkpoint) {
        records.extend(beside_llama_cpp(binary, &python, &llama_cpp, &checkpoint));
    }
    let out = root.join("target/bench.json");
    let _ = std::fs::write(&out, format!("[\n{}\n]\n", records.join(",\n")));
    eprintln!("xtask: raw results in {}", out.display());
    ExitCode::SUCCESS
}

/// Ember beside llama.cpp per weight format (`bench/llama_cpp_compare.sh`, one round):
/// prints the table, returns the JSON lines.
fn beside_llama_cpp(
    binary: &std::path::Path,
    python: &str,
    llama_cpp: &str,
    checkpoint: &str,
) -> Vec<String> {
    eprintln!("xtask bench: Qwen3-0.6B shape beside llama.cpp");
    let root = workspace_root();
    let output = Command::new("bash")
        .current_dir(&root)
        .env("EMBER", binary)
        .env("PYTHON", python)
        .arg(root.join("bench/llama_cpp_compare.sh"))
        .args([llama_cpp, checkpoint, "1"])
        .output();
    let lines: Vec<String> = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(str::to_string)
            .collect(),
        Ok(o) => {
            eprintln!(
                "xtask bench: llama_cpp_compare.sh failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Vec::new();
        }
        Err(e) => {
            eprintln!("xtask bench: cannot run bash: {e}");
            return Vec::new();
        }
    };
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |engine: &str, dtype: &str, key: &str, test: Option<&str>| {
        parsed
            .iter()
            .find(|v| {
                v["engine"] == engine && v["dtype"] == dtype && test.is_none_or(|t| v["test"] == t)
            })
            .and_then(|v| v[key].as_f64())
    };
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let ratio = |e: Option<f64>, l: Option<f64>| match (e, l) {
        (Some(e), Some(l)) if l > 0.0 => format!("{:.2}x", e / l),
        _ => "-".to_string(),
    };
    println!();
    println!(
        "| weights | decode tok/s Ember | llama.cpp | Ember / llama.cpp | prompt tok/s Ember | llama.cpp | Ember / llama.cpp | peak MB Ember |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for dtype in ["bf16", "q8_0", "q4_0", "q4_k"] {
        let (decode, llama_decode) = (
            find("ember", dtype, "tg63", None),
            find("llama.cpp", dtype, "tokens_per_s", Some("tg64")),
        );
        let (prompt, llama_prompt) = (
            find("ember", dtype, "pp16", None),
            find("llama.cpp", dtype, "tokens_per_s", Some("pp16")),
        );
        println!(
            "| {dtype} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(decode),
            fmt(llama_decode),
            ratio(decode, llama_decode),
            fmt(prompt),
            fmt(llama_prompt),
            ratio(prompt, llama_prompt),
            find("ember", dtype, "peak_rss_mb", None)
                .map_or("-".to_string(), |v| format!("{v:.0}")),
        );
    }
    lines
}

/// The runtime backend name of a build feature.
fn backend_name(feature: &str) -> &str {
    match feature {
        "openblas" => "ndarray",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_of_rounds() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.3, 0.9, 1.1]), Some(1.1));
        assert_eq!(median(&[2.0, 1.0, 4.0, 3.0]), Some(2.5));
        assert_eq!(spread(&[1.3, 0.9, 1.1]), Some((0.9, 1.3)));
        assert_eq!(spread(&[]), None);
    }
}
