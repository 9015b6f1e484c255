//! `metrics.jsonl`: one line per optimizer step, appended as the run goes.
//!
//! A resumed run keeps the lines of the steps up to its checkpoint byte for byte (they
//! are not parsed and written again, so no float digit changes) and appends from there.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimizer steps done (1 after the first step).
    pub step: usize,
    /// Fractional epoch.
    pub epoch: f64,
    /// Training tokens processed.
    pub tokens_seen: u64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Loss of this step's batch (mean over its micro-batches).
    pub train_loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training throughput since the previous line.
    pub tokens_per_sec: f64,
    /// Model FLOP utilisation: achieved FLOP/s over `train.peak_flops`.
    pub mfu: f64,
    /// Seconds of the step spent in the exchange between the ranks of a data-parallel
    /// job (summing the gradients, and waiting for the slowest rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_s: Option<f64>,
    /// Mean loss over `eval_iter` training batches (evaluation steps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_train_loss: Option<f64>,
    /// Mean loss over `eval_iter` validation batches (evaluation steps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Accuracy on `eval_iter` training batches (classification, preference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Accuracy on `eval_iter` validation batches (classification, preference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// What else a task measures at evaluation steps (DPO's reward margins).
    #[serde(default, flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// `metrics.jsonl`, open for appending.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// A fresh log (an old file is replaced).
    pub fn create(path: &Path) -> Result<Self, TrainError> {
        Self::with_kept(path, b"")
    }

    /// The log of a run resumed at step `up_to_step`: the lines of steps up to it are
    /// kept as they were written (a line torn by a crash at the end is dropped, the
    /// resumed run writes it again); returns them parsed too.
    pub fn resume(path: &Path, up_to_step: usize) -> Result<(Self, Vec<MetricsLine>), TrainError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io(path, e)),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut kept_text = String::new();
        let mut kept = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<MetricsLine>(line) {
                Ok(m) if m.step <= up_to_step => {
                    kept_text.push_str(line);
                    kept_text.push('\n');
                    kept.push(m);
                }
                Ok(_) => {}
                Err(_) if i + 1 == lines.len() => {}
                Err(e) => {
                    return Err(TrainError::Corrupt {
                        path: path.to_path_buf(),
                        message: format!("line {}: {e}", i + 1),
                    });
                }
            }
        }
        Ok((Self::with_kept(path, kept_text.as_bytes())?, kept))
    }

    fn with_kept(path: &Path, kept: &[u8]) -> Result<Self, TrainError> {
        ember_data::files::write_atomic(path, kept).map_err(|e| TrainError::io(path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one line and flushes it.
    pub fn append(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        let text = serde_json::to_string(line).expect("metrics serialise");
        writeln!(self.file, "{text}")
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: usize, loss: f64) -> MetricsLine {
        MetricsLine {
            step,
            epoch: 0.0,
            tokens_seen: step as u64,
            lr: 1e-3,
            train_loss: loss,
            grad_norm: 1.0,
            tokens_per_sec: 1.0,
            mfu: 0.0,
            exchange_s: None,
            eval_train_loss: None,
            val_loss: None,
            train_accuracy: None,
            val_accuracy: None,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn resuming_keeps_the_written_bytes_and_drops_later_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        // A line as another writer formatted it: its digits must survive unchanged.
        let written = "{\"step\":1,\"epoch\":0.0,\"tokens_seen\":1,\"lr\":0.001,\"train_loss\":10.899025201797485,\"grad_norm\":1.0,\"tokens_per_sec\":1.0,\"mfu\":0.0}\n";
        let later = serde_json::to_string(&line(2, 9.0)).unwrap();
        std::fs::write(&path, format!("{written}{later}\n{{\"step\":3,")).unwrap();
        let (mut log, kept) = MetricsLog::resume(&path, 1).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        log.append(&line(2, 8.5)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(written) && text.lines().count() == 2,
            "{text}"
        );
        std::fs::write(&path, "garbage\n{}\n").unwrap();
        let err = MetricsLog::resume(&path, 1).err().unwrap().to_string();
        assert!(err.contains("metrics.jsonl: line 1"), "{err}");
    }
}
