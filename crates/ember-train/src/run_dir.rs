//! A run directory: its layout, its lock, its configuration and the small files a run
//! writes.
//!
//! ```text
//! RUN/
//!   .lock            held by the one process using the directory (an OS file lock)
//!   config.toml      the resolved configuration
//!   metrics.jsonl    one line per optimizer step (metrics.rs)
//!   reports.jsonl    the epoch reports, and samples.txt rendered from them
//!   loss.png         (and accuracy.png for classification; the `plot` feature)
//!   checkpoints/     step-N/ and `latest` (checkpoint.rs)
//!   model/           the trained model
//! ```
//!
//! Opening a directory takes its lock first and only then looks at what it holds, so
//! two processes can never both decide it is free.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ember_data::files::{remove_stale_temporaries, write_atomic};
use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, TrainConfig};
use crate::error::TrainError;

/// How a run treats its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// A new run: the directory must not hold one.
    New,
    /// Continue the run the directory holds.
    Resume,
    /// Start over: the run files the directory holds are removed first.
    Overwrite,
}

/// The files and folders the run layer writes for every run; a pipeline declares the
/// rest ([`crate::RunConfig::OUTPUT_FILES`]). The plots only with the `plot` feature.
pub const RUN_LAYER_FILES: &[&str] = &[
    "config.toml",
    "metrics.jsonl",
    "reports.jsonl",
    "samples.txt",
    #[cfg(feature = "plot")]
    "loss.png",
    #[cfg(feature = "plot")]
    "accuracy.png",
    "checkpoints",
    "model",
];

/// The file in which a run directory lists what its run writes (a JSON array of names),
/// so that [`RunMode::Overwrite`] removes exactly the files of the run it replaces, of
/// whatever kind, and nothing else in the directory.
const OUTPUTS_FILE: &str = ".outputs";

/// One report line: what the task printed after an epoch, or when the run stopped
/// inside one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Optimizer steps done when it was written.
    pub step: usize,
    /// 1-based epoch.
    pub epoch: usize,
    /// Whether the run stopped inside the epoch (rather than finishing it).
    pub stopped: bool,
    /// The text (one line).
    pub text: String,
}

impl Report {
    /// The line of `samples.txt`.
    fn line(&self) -> String {
        if self.stopped {
            format!(
                "stopped at step {} (epoch {}): {}",
                self.step, self.epoch, self.text
            )
        } else {
            format!("epoch {} step {}: {}", self.epoch, self.step, self.text)
        }
    }
}

/// An open run directory, locked for this process until dropped.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    /// What this run writes: the run layer's files and the pipeline's outputs.
    files: Vec<String>,
    /// Held while the run writes here; none for a rank that only follows the run.
    lock: Option<File>,
}

impl RunDir {
    /// Opens (creating it if needed) and locks `root` for a run that writes `outputs`
    /// (plain file or folder names) beside the run layer's own files, then checks it
    /// against `mode`: a new run refuses a directory that holds a run, a resumed one
    /// needs a run to resume, an overwriting one removes the old run's files (those it
    /// listed, and this run's). Temporary files of writes that a killed process left
    /// behind are removed.
    pub fn open(root: &Path, mode: RunMode, outputs: &[&str]) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
        let lock_path = root.join(".lock");
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| TrainError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                return Err(TrainError::Locked {
                    dir: root.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io(&lock_path, e)),
        }
        // Who holds it, for the message another process prints.
        let _ = lock.set_len(0);
        let _ = writeln!(lock, "pid {}", std::process::id());
        let files: Vec<String> = RUN_LAYER_FILES
            .iter()
            .chain(outputs)
            .map(|name| name.to_string())
            .collect();
        debug_assert!(files.iter().all(|name| is_plain_name(name)), "{files:?}");
        let dir = Self {
            root: root.to_path_buf(),
            files,
            lock: Some(lock),
        };
        let holds_run = dir.metrics().exists() || dir.checkpoints().exists();
        match mode {
            RunMode::New if holds_run => {
                return Err(TrainError::RunExists {
                    dir: root.to_path_buf(),
                });
            }
            RunMode::Resume if !dir.config().exists() => {
                return Err(TrainError::Corrupt {
                    path: dir.config(),
                    message: "not a run directory (no config.toml to resume)".into(),
                });
            }
            RunMode::Overwrite => dir.remove_run_files()?,
            _ => {}
        }
        for folder in [dir.root.clone(), dir.model(), dir.checkpoints()] {
            remove_stale_temporaries(&folder).map_err(|e| TrainError::io(&folder, e))?;
        }
        let listing = serde_json::to_string(&dir.files).expect("names serialise");
        dir.write(&dir.root.join(OUTPUTS_FILE), listing.as_bytes())?;
        Ok(dir)
    }

    /// The directory of a run that another process opened and writes (rank 0 of a
    /// data-parallel job): its paths, to read the checkpoints from on resume; nothing
    /// is locked, created or written ([`RunDir::write`] and every write through it do
    /// nothing).
    pub fn follow(root: &Path, outputs: &[&str]) -> Self {
        Self {
            root: root.to_path_buf(),
            files: RUN_LAYER_FILES
                .iter()
                .chain(outputs)
                .map(|name| name.to_string())
                .collect(),
            lock: None,
        }
    }

    /// Whether this process writes the directory (it opened it; see [`RunDir::follow`]).
    pub fn writes(&self) -> bool {
        self.lock.is_some()
    }

    /// The files the run in this directory listed when it started (none for a run of an
    /// Ember that did not list them, or a list that is not one).
    fn listed_files(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.root.join(OUTPUTS_FILE)).unwrap_or_default();
        let names: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
        // Only names inside the directory: the list is a file anyone could edit.
        names.into_iter().filter(|n| is_plain_name(n)).collect()
    }

    /// The path of `name`, a file this run declared it writes.
    ///
    /// # Panics
    /// In debug builds, if the run did not declare `name` (`--overwrite` would leave it).
    pub fn output(&self, name: &str) -> PathBuf {
        debug_assert!(
            self.files.iter().any(|f| f == name),
            "{name} is not among the run's declared files {:?}",
            self.files
        );
        self.root.join(name)
    }

    fn remove_run_files(&self) -> Result<(), TrainError> {
        let mut names = self.listed_files();
        names.extend(self.files.iter().cloned());
        names.sort();
        names.dedup();
        for name in names {
            let path = self.root.join(&name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        }
        Ok(())
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `metrics.jsonl`
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `reports.jsonl`
    pub fn reports(&self) -> PathBuf {
        self.root.join("reports.jsonl")
    }
    /// `samples.txt`
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples.txt")
    }
    /// `loss.png`
    pub fn loss_plot(&self) -> PathBuf {
        self.root.join("loss.png")
    }
    /// `accuracy.png` (classification runs)
    pub fn accuracy_plot(&self) -> PathBuf {
        self.root.join("accuracy.png")
    }
    /// `checkpoints/`
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// `model/`
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    /// Refuses to resume with settings that would make a different run: everything in
    /// `config` must equal the saved configuration except the keys the configuration
    /// declares free ([`TrainConfig::RESUMABLE`] and [`RunConfig::RESUMABLE`]).
    pub fn check_resumable<C: RunConfig>(&self, config: &C) -> Result<(), TrainError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let saved: toml::Table = toml::from_str(&text).map_err(|e| TrainError::Corrupt {
            path: path.clone(),
            message: e.message().to_string(),
        })?;
        // Read back as this version reads it, so that a value written under another name
        // this version still accepts (`precision = "fp32"`, now "f32") is the same value.
        let saved = saved
            .clone()
            .try_into::<C>()
            .ok()
            .and_then(|config| toml::Table::try_from(&config).ok())
            .unwrap_or(saved);
        let current = toml::Table::try_from(config).expect("configurations serialise");
        let mut differing = Vec::new();
        diff_tables(&saved, &current, "", &mut differing);
        differing.retain(|key| {
            !TrainConfig::RESUMABLE.contains(&key.as_str()) && !C::RESUMABLE.contains(&key.as_str())
        });
        if differing.is_empty() {
            Ok(())
        } else {
            Err(TrainError::NotResumable {
                path,
                keys: differing.join(", "),
            })
        }
    }

    /// Writes the resolved configuration.
    pub fn write_config<C: RunConfig>(&self, config: &C) -> Result<(), TrainError> {
        let text = toml::to_string_pretty(config).expect("configurations serialise");
        self.write(&self.config(), text.as_bytes())
    }

    /// Writes `value` as pretty JSON to `name` in the run directory; returns its path.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<PathBuf, TrainError> {
        let path = self.output(name);
        let text = serde_json::to_string_pretty(value).expect("results serialise");
        self.write(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Writes `bytes` to `path` atomically (nothing for a directory this process only
    /// follows).
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
        if !self.writes() {
            return Ok(());
        }
        write_atomic(path, bytes).map_err(|e| TrainError::io(path, e))
    }

    /// The reports written so far.
    pub fn read_reports(&self) -> Result<Vec<Report>, TrainError> {
        let path = self.reports();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut reports = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(report) => reports.push(report),
                // A crash can tear the last line; the resumed run writes it again.
                Err(_) if i + 1 == lines.len() => {}
                Err(e) => {
                    return Err(TrainError::Corrupt {
                        path,
                        message: format!("line {}: {e}", i + 1),
                    });
                }
            }
        }
        Ok(reports)
    }

    /// Replaces the reports (and `samples.txt`, rendered from them).
    pub fn write_reports(&self, reports: &[Report]) -> Result<(), TrainError> {
        let jsonl: String = reports
            .iter()
            .map(|r| serde_json::to_string(r).expect("reports serialise") + "\n")
            .collect();
        self.write(&self.reports(), jsonl.as_bytes())?;
        let text: String = reports.iter().map(|r| r.line() + "\n").collect();
        self.write(&self.samples(), text.as_bytes())
    }

    /// Adds one report.
    pub fn append_report(&self, report: Report) -> Result<(), TrainError> {
        let mut reports = self.read_reports()?;
        reports.push(report);
        self.write_reports(&reports)
    }

    /// On resume from checkpoint `step`: keeps the epoch reports written before it
    /// (every report of that step or later is written again by the resumed run) and
    /// drops the reports of earlier stops, so the reports equal an uninterrupted run's.
    pub fn rewind_reports(&self, step: usize) -> Result<(), TrainError> {
        let kept: Vec<Report> = self
            .read_reports()?
            .into_iter()
            .filter(|r| !r.stopped && r.step < step)
            .collect();
        self.write_reports(&kept)
    }
}

/// The dotted keys whose values differ between two tables.
fn diff_tables(a: &toml::Table, b: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (a.get(key), b.get(key)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(x, y, &path, out)
            }
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
}

/// Whether `name` is one plain entry of a directory (no separators, not `.` or `..`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose saved configuration names a value as an earlier version wrote it
    /// (`precision = "fp32"`) resumes; a changed value is still named.
    #[test]
    fn a_saved_configuration_is_compared_as_this_version_reads_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::open(&root.path().join("run"), RunMode::New, &[]).unwrap();
        let config = crate::PretrainConfig::tiny();
        dir.write_config(&config).unwrap();
        let text = std::fs::read_to_string(dir.config()).unwrap();
        assert!(text.contains("precision = \"f32\""), "{text}");
        std::fs::write(dir.config(), text.replace("\"f32\"", "\"fp32\"")).unwrap();
        dir.check_resumable(&config).unwrap();
        let mut changed = config.clone();
        changed.train.precision = ember_kernels::Dtype::Bf16;
        let err = dir.check_resumable(&changed).unwrap_err().to_string();
        assert!(err.contains("train.precision"), "{err}");
    }

    #[test]
    fn one_process_at_a_time_and_runs_are_not_overwritten_by_accident() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        let first = RunDir::open(&dir, RunMode::New, &[]).unwrap();
        let err = RunDir::open(&dir, RunMode::New, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is in use by another ember process (pid "),
            "{err}"
        );
        std::fs::write(first.metrics(), "{}\n").unwrap();
        std::fs::write(first.root().join("notes.txt"), "mine").unwrap();
        drop(first);
        let err = RunDir::open(&dir, RunMode::New, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds a run; pass --resume"), "{err}");
        let err = RunDir::open(&dir, RunMode::Resume, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no config.toml to resume"), "{err}");
        let over = RunDir::open(&dir, RunMode::Overwrite, &[]).unwrap();
        assert!(!over.metrics().exists());
        // Only the run's own files go.
        assert_eq!(
            std::fs::read_to_string(over.root().join("notes.txt")).unwrap(),
            "mine"
        );
    }

    /// `--overwrite` removes what the run it replaces declared, whatever kind of run
    /// that was, and what the new run declares; nothing else.
    #[test]
    fn overwriting_removes_exactly_the_declared_files_of_both_runs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        let dpo = RunDir::open(&dir, RunMode::New, &["results.json", "before-dpo.json"]).unwrap();
        for name in ["results.json", "before-dpo.json", "notes.txt"] {
            std::fs::write(dpo.root().join(name), "x").unwrap();
        }
        std::fs::write(dpo.metrics(), "{}\n").unwrap();
        drop(dpo);
        // A hand-edited list cannot reach outside the directory.
        let outside = root.path().join("outside.txt");
        std::fs::write(&outside, "keep").unwrap();
        let listing = std::fs::read_to_string(dir.join(OUTPUTS_FILE)).unwrap();
        std::fs::write(
            dir.join(OUTPUTS_FILE),
            listing.replace(']', ",\"../outside.txt\"]"),
        )
        .unwrap();
        let pretrain = RunDir::open(&dir, RunMode::Overwrite, &[]).unwrap();
        for gone in ["results.json", "before-dpo.json", "metrics.jsonl"] {
            assert!(!pretrain.root().join(gone).exists(), "{gone}");
        }
        assert!(pretrain.root().join("notes.txt").exists());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(pretrain.output("model"), dir.join("model"));
    }

    #[test]
    fn reports_rewind_to_a_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::open(root.path(), RunMode::New, &[]).unwrap();
        let report = |step, epoch, stopped| Report {
            step,
            epoch,
            stopped,
            text: format!("text {step}"),
        };
        dir.append_report(report(4, 1, false)).unwrap();
        dir.append_report(report(6, 2, true)).unwrap();
        dir.append_report(report(8, 2, false)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.samples()).unwrap(),
            "epoch 1 step 4: text 4\nstopped at step 6 (epoch 2): text 6\nepoch 2 step 8: text 8\n"
        );
        dir.rewind_reports(8).unwrap();
        assert_eq!(dir.read_reports().unwrap(), vec![report(4, 1, false)]);
        assert_eq!(
            std::fs::read_to_string(dir.samples()).unwrap(),
            "epoch 1 step 4: text 4\n"
        );
    }
}
