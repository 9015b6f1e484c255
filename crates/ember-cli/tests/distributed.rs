//! Data-parallel training across processes under `mpirun` (the `mpi` feature; CI
//! installs Open MPI): two ranks train as one process with the whole batch (dropout
//! on: the masks are keyed by each example's row in the whole batch), resume exactly,
//! every training command runs under it, and a rank that stops or dies ends the job
//! with the last checkpoint intact.
//!
//! `cargo test -p ember-cli --features mpi --test distributed` (CI: `--features nccl`,
//! which includes `mpi`)
#![cfg(feature = "mpi")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, workspace};

/// `mpirun -np RANKS ember ARGS` (one process without MPI when `ranks` is 0), each
/// rank on one core with one thread, as on a machine with a core per rank.
fn launch(ranks: usize, args: &[&str]) -> Command {
    let ember = env!("CARGO_BIN_EXE_ember");
    let mut cmd = if ranks == 0 {
        Command::new(ember)
    } else {
        let mut cmd = Command::new("mpirun");
        cmd.args([
            "-np",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        // Open MPI refuses to start as root unless told (CI's containers run as root).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg(ember);
        cmd
    };
    cmd.args(args)
        .env("EMBER_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1");
    cmd
}

fn output(mut cmd: Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run {cmd:?} (is Open MPI installed? apt install openmpi-bin): {e}")
        }
    }
}

/// `ember pretrain` of a small model on the-verdict into `out` (the other tests' small
/// run, wider and deeper): batch 4 in 2 micro-batches, clipping, an evaluation every 2
/// steps, dropout on, plus `extra`.
fn pretrain_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut settings = Vec::new();
    for setting in [
        "model.context_length=32",
        "model.emb_dim=32",
        "model.n_layers=2",
        "model.drop_rate=0.1",
        "train.grad_accum_steps=2",
        "train.grad_clip=0.05",
        "train.eval_freq=2",
        "train.eval_iter=2",
    ] {
        settings.extend(["--set", setting]);
    }
    settings.extend(extra);
    common::small_pretrain_args(out, &settings)
}

fn pretrain(ranks: usize, out: &Path, extra: &[&str]) -> Output {
    let args = pretrain_args(out, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = output(launch(ranks, &args));
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Each step's line of `metrics.jsonl`, by field.
fn metrics(dir: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The steps' losses, gradient norms and evaluations agree within 1e-5 (relative).
fn assert_same_training(a: &Path, b: &Path, steps: usize) {
    let (a, b) = (metrics(a), metrics(b));
    assert_eq!((a.len(), b.len()), (steps, steps));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["tokens_seen"], y["tokens_seen"]);
        for key in [
            "train_loss",
            "grad_norm",
            "val_loss",
            "eval_train_loss",
            "val_accuracy",
        ] {
            match (
                x.get(key).and_then(|v| v.as_f64()),
                y.get(key).and_then(|v| v.as_f64()),
            ) {
                (Some(p), Some(q)) => assert!(
                    (p - q).abs() <= 1e-5 * p.abs().max(1.0),
                    "{key} at step {}: {p} vs {q}",
                    x["step"]
                ),
                (p, q) => assert_eq!(p.is_some(), q.is_some(), "{key} at step {}", x["step"]),
            }
        }
    }
}

/// Every tensor of the two runs' saved models, element by element.
fn assert_same_weights(a: &Path, b: &Path, file: &str, tolerance: f32) {
    let read = |dir: &Path| -> BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(dir.join("model").join(file)).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        tensors
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (name, values)
            })
            .collect()
    };
    let (wa, wb) = (read(a), read(b));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (name, x) in &wa {
        let worst = x
            .iter()
            .zip(&wb[name])
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "{name} differs by {worst}");
    }
}

/// The values a resumed run must repeat exactly (not the timings).
fn exact(dir: &Path) -> Vec<String> {
    metrics(dir)
        .into_iter()
        .map(|mut m| {
            m.retain(|k, _| !matches!(k.as_str(), "tokens_per_sec" | "mfu" | "exchange_s"));
            serde_json::to_string(&m).unwrap()
        })
        .collect()
}

/// Two ranks against one process with the whole batch (dropout on), exact resume,
/// the sharded optimizer, and what is refused.
#[test]
fn two_ranks_train_as_one_process_with_the_whole_batch() {
    let root = tempfile::tempdir().unwrap();
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    pretrain(0, &one, &["--max-steps", "4"]);
    let o = pretrain(2, &two, &["--max-steps", "4"]);
    // Rank 0 alone reports and writes.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("stopped at --max-steps")
            .count(),
        1
    );
    assert_same_training(&one, &two, 4);
    assert_same_weights(&one, &two, "model.safetensors", 1e-5);
    let files = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&one), files(&two));

    // Stopped after 2 steps and resumed on two ranks: the straight two-rank run,
    // bit for bit.
    let split = root.path().join("split");
    pretrain(2, &split, &["--max-steps", "2"]);
    let resume = [
        "--resume",
        split.to_str().unwrap(),
        "--quiet",
        "--max-steps",
        "4",
    ];
    let o = output(launch(
        2,
        &["pretrain"].into_iter().chain(resume).collect::<Vec<_>>(),
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(exact(&split), exact(&two));
    assert_same_weights(&split, &two, "model.safetensors", 0.0);

    // The optimizer's state sharded over the ranks (ZeRO stage 1): the same steps, bit
    // for bit; stopped and resumed sharded, the same again; and its checkpoint (the
    // whole state, gathered by rank 0) resumes in one process too.
    let shard = ["--set", "train.shard_optimizer=true"];
    let sharded = root.path().join("sharded");
    pretrain(2, &sharded, &[&["--max-steps", "4"][..], &shard].concat());
    assert_eq!(exact(&sharded), exact(&two));
    assert_same_weights(&sharded, &two, "model.safetensors", 0.0);
    let split = root.path().join("split-sharded");
    pretrain(2, &split, &[&["--max-steps", "2"][..], &shard].concat());
    let resume = ["pretrain", "--resume", split.to_str().unwrap(), "--quiet"];
    let o = output(launch(
        2,
        &[&resume[..], &["--max-steps", "4"], &shard].concat(),
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(exact(&split), exact(&two));
    let o = output(launch(0, &[&resume[..], &["--max-steps", "5"]].concat()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&split).len(), 5);

    // A batch that does not split across the ranks, and a run directory that holds a
    // run, are refused before training, in one line from the rank that saw it.
    let args = pretrain_args(&root.path().join("odd"), &["--set", "train.batch_size=3"]);
    let o = output(launch(
        2,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("train.batch_size") && stderr(&o).contains("2 processes"),
        "{}",
        stderr(&o)
    );
    let o = output(launch(
        2,
        &pretrain_args(&two, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("error: rank 0: ") && stderr(&o).contains("already holds a run"),
        "{}",
        stderr(&o)
    );
}

/// `--all-reduce nccl` where it cannot run ends the job at once with a line naming what
/// is missing: the CUDA driver and NCCL on a machine without them (CI; the `nccl`
/// feature), the feature itself in a build without it.
#[test]
fn nccl_is_refused_where_it_cannot_run() {
    #[cfg(feature = "nccl")]
    if ember_train::nccl::libraries_present().is_ok() {
        eprintln!("skipped: this machine has the CUDA driver and NCCL");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let args = pretrain_args(&root.path().join("nccl"), &["--all-reduce", "nccl"]);
    let started = Instant::now();
    let o = output(launch(
        2,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(!o.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = stderr(&o);
    if cfg!(feature = "nccl") {
        assert!(
            // Every rank fails alike; whichever aborts first ends the others.
            err.contains("error: rank ")
                && err.contains(": NCCL initialisation: cannot load the CUDA driver (libcuda.so.1")
                && err.contains("libnccl.so.2"),
            "{err}"
        );
    } else {
        assert!(
            err.contains("--all-reduce nccl: this ember was built without NCCL")
                && err.contains("--features nccl"),
            "{err}"
        );
    }
}

/// The three fine-tunings under two ranks, dropout on: the one-process run's losses,
/// weights and results (spam classification with frozen blocks, instruction tuning
/// with its loss averaged over tokens and its batches padded to their longest, DPO with
/// its reference model).
#[test]
fn every_fine_tuning_trains_under_mpirun() {
    let root = tempfile::tempdir().unwrap();
    let small = [
        "--from-scratch",
        "--quiet",
        "--max-steps",
        "2",
        "--set",
        "model.emb_dim=32",
        "--set",
        "model.n_layers=1",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.drop_rate=0.1",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.grad_accum_steps=2",
    ];
    // A small preference set: DPO scores every pair with its reference model first.
    let preferences: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(
            workspace().join("datasets/instruction-data-with-preference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let few = root.path().join("preferences.json");
    std::fs::write(&few, serde_json::to_string(&preferences[..60]).unwrap()).unwrap();
    let spam = workspace().join("datasets/sms_spam_collection/SMSSpamCollection");
    let instructions = workspace().join("datasets/instruction-data.json");
    let commands: [(&str, Vec<&str>); 3] = [
        ("finetune-spam", vec!["--data", spam.to_str().unwrap()]),
        (
            "finetune-instruct",
            vec![
                "--data",
                instructions.to_str().unwrap(),
                "--set",
                "responses=2",
                "--set",
                "max_new_tokens=3",
            ],
        ),
        (
            "finetune-dpo",
            vec![
                "--data",
                few.to_str().unwrap(),
                "--set",
                "responses=2",
                "--set",
                "max_new_tokens=3",
            ],
        ),
    ];
    for (command, extra) in commands {
        let run = |ranks: usize| -> PathBuf {
            let out = root.path().join(format!("{command}-{ranks}"));
            let mut args = vec![command, "--out", out.to_str().unwrap()];
            args.extend(small);
            args.extend(&extra);
            let o = output(launch(ranks, &args));
            assert!(
                o.status.success(),
                "{command} on {ranks} ranks: {}",
                stderr(&o)
            );
            out
        };
        let (one, two) = (run(0), run(2));
        assert_same_training(&one, &two, 2);
        assert_same_weights(&one, &two, "model.safetensors", 1e-5);
        let results = |dir: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap()
        };
        let (a, b) = (results(&one), results(&two));
        for key in ["test_accuracy", "responses", "split_sizes"] {
            assert_eq!(a.get(key), b.get(key), "{command}: {key}");
        }
    }
}

/// The process ids of the ranks of the job writing into `out`, by rank.
fn ranks_of(out: &Path) -> BTreeMap<usize, u32> {
    let mut ranks = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains(out.to_str().unwrap()) || cmdline.starts_with("mpirun") {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        for var in environ.split(|&b| b == 0) {
            if let Some(rank) = var.strip_prefix(b"OMPI_COMM_WORLD_RANK=")
                && let Ok(rank) = String::from_utf8_lossy(rank).parse()
            {
                ranks.insert(rank, pid);
            }
        }
    }
    ranks
}

/// Starts a long two-rank run into `out`, waits for its first checkpoint, sends
/// `signal` to rank 1 and returns what the job printed and how long it took to end.
fn signal_rank_one(out: &Path, signal: &str) -> (Output, Duration) {
    let args = pretrain_args(
        out,
        &[
            // Long enough that no rank of a loaded machine's three concurrent jobs is
            // late by accident; short enough for a test.
            "--rank-timeout",
            "10",
            "--set",
            "train.checkpoint_every=2",
            "--set",
            "train.eval_freq=1000",
            "--set",
            "train.epochs=1000",
        ],
    );
    let mut cmd = launch(2, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until("the first checkpoint", || {
        out.join("checkpoints/latest").exists()
    });
    let rank_one = ranks_of(out)[&1];
    let sent = Instant::now();
    let status = Command::new("kill")
        .args([signal, &rank_one.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    (o, sent.elapsed())
}

/// A rank that stops (SIGSTOP: a hang) is named by the other within the time limit,
/// and the job ends; a rank that dies (SIGKILL) ends the job through the launcher,
/// which names it. The last checkpoint resumes.
#[test]
fn a_rank_that_stops_or_dies_ends_the_job_and_the_checkpoint_resumes() {
    let root = tempfile::tempdir().unwrap();
    let hung = root.path().join("hung");
    let (o, took) = signal_rank_one(&hung, "-STOP");
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("error: rank 0: rank(s) [1] did not reach") && err.contains("within 10 s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "ended after {took:?}");

    let dead = root.path().join("dead");
    let (o, took) = signal_rank_one(&dead, "-KILL");
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("process rank 1") && err.contains("signal 9"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "ended after {took:?}");

    // Each resumes from its last checkpoint for one more step.
    for dir in [&hung, &dead] {
        let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap();
        let step: u64 = latest
            .trim()
            .strip_prefix("step-")
            .unwrap()
            .parse()
            .unwrap();
        let next = (step + 1).to_string();
        let resume = ["pretrain", "--resume", dir.to_str().unwrap(), "--quiet"];
        let o = output(launch(2, &[&resume[..], &["--max-steps", &next]].concat()));
        assert!(o.status.success(), "{}", stderr(&o));
        let steps: Vec<u64> = metrics(dir)
            .iter()
            .map(|m| m["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, (1..=step + 1).collect::<Vec<_>>());
    }
}
