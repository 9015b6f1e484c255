//! `cargo xtask`: builds the `ember` binary with the chosen backend and runs whole
//! pipelines.
//!
//! ```text
//! cargo xtask pretrain [--backend ndarray|openblas|flex|wgpu|tch|cuda] [--debug] [ARGS...]
//! cargo xtask build    [--backend ...] [--debug]
//! ```
//! Every argument xtask does not know is passed on to `ember pretrain` (`--config`,
//! `--preset`, `--set key=value`, `--max-steps`, `--out`, `--resume`, ...).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const BACKENDS: [&str; 6] = ["ndarray", "openblas", "flex", "wgpu", "tch", "cuda"];

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <pretrain|build> [--backend {}] [--debug] [ember arguments...]",
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
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--backend" => match iter.next() {
                Some(b) => backend = b,
                None => return usage(),
            },
            "--debug" => release = false,
            _ => rest.push(arg),
        }
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
        "pretrain" => {
            let mut a = vec![
                "--backend".to_string(),
                backend_name(&backend).to_string(),
                "pretrain".to_string(),
            ];
            a.extend(rest);
            a
        }
        _ => return usage(),
    };
    eprintln!("xtask: {} {}", binary.display(), ember_args.join(" "));
    match Command::new(&binary)
        .current_dir(workspace_root())
        .args(&ember_args)
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

/// The runtime backend name of a build feature.
fn backend_name(feature: &str) -> &str {
    match feature {
        "openblas" => "ndarray",
        other => other,
    }
}
