//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! ```text
//! checkpoints/
//!   step-N/  model.bpk (Burn's record, parameter ids included: the optimizer state is
//!            keyed by them), optimizer.bpk, state.json, SHA256SUMS
//!   latest   "step-N", moved only once step-N is complete
//! ```
//!
//! The newest two checkpoints are kept. Loading checks every file against its
//! checksum; a damaged checkpoint is refused by name and the previous good one is used
//! instead.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use ember_data::files::{verify_checksums, write_atomic, write_checksums};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Checkpoints kept on disk: the newest, and the one before in case the newest is
/// damaged.
const KEEP: usize = 2;

/// Where a run stands; saved in every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Micro-batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
    /// Training tokens processed.
    pub tokens_seen: u64,
}

/// The checkpoints of a run directory.
pub struct Checkpoints {
    dir: PathBuf,
}

/// What [`Checkpoints::load`] restores.
pub struct Restored<M> {
    /// The model.
    pub model: M,
    /// The optimizer with its moments.
    pub optimizer: ModuleOptimizer,
    /// Where the run stood.
    pub state: TrainState,
}

impl Checkpoints {
    /// The checkpoints under `dir` (`RUN/checkpoints`).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn step_dir(&self, step: usize) -> PathBuf {
        self.dir.join(format!("step-{step}"))
    }

    fn latest(&self) -> PathBuf {
        self.dir.join("latest")
    }

    /// Writes checkpoint `state.step` and points `latest` at it once it is complete.
    /// The folder is written under a temporary name and renamed when whole, so a write
    /// that fails (a full disk) leaves no half-written `step-N/` behind.
    pub fn save<M: Module>(
        &self,
        model: &M,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        let optim_bytes = optimizer.into_bytes().map_err(|e| TrainError::Corrupt {
            path: self.step_dir(state.step),
            message: format!("cannot serialise the checkpoint: {e}"),
        })?;
        self.save_serialized(model, &optim_bytes, state)
    }

    /// [`Checkpoints::save`] with the optimizer's state already serialised (the state of
    /// a sharded optimizer, gathered from the ranks).
    pub fn save_serialized<M: Module>(
        &self,
        model: &M,
        optim_bytes: &[u8],
        state: &TrainState,
    ) -> Result<(), TrainError> {
        let dir = self.step_dir(state.step);
        write_dir_whole(&dir, |partial| {
            let write = |name: &str, bytes: &[u8]| {
                let path = partial.join(name);
                write_atomic(&path, bytes).map_err(|e| TrainError::io(&path, e))
            };
            let corrupt = |e: &dyn std::fmt::Display| TrainError::Corrupt {
                path: dir.clone(),
                message: format!("cannot serialise the checkpoint: {e}"),
            };
            let model_bytes = model
                .clone()
                .into_record()
                .into_bytes()
                .map_err(|e| corrupt(&e))?;
            write("model.bpk", &model_bytes)?;
            write("optimizer.bpk", optim_bytes)?;
            write(
                "state.json",
                serde_json::to_string_pretty(state)
                    .expect("state serialises")
                    .as_bytes(),
            )?;
            write_checksums(partial, &["model.bpk", "optimizer.bpk", "state.json"]).map_err(|e| {
                TrainError::DamagedCheckpoints {
                    dir: dir.clone(),
                    source: e,
                }
            })
        })?;
        // The pointer moves only once the whole checkpoint is on disk.
        let latest = self.latest();
        write_atomic(&latest, format!("step-{}\n", state.step).as_bytes())
            .map_err(|e| TrainError::io(&latest, e))?;
        self.prune(state.step)?;
        tracing::info!(step = state.step, dir = %dir.display(), "checkpoint written");
        Ok(())
    }

    /// Removes all but the newest [`KEEP`] checkpoints (never the current one).
    fn prune(&self, current: usize) -> Result<(), TrainError> {
        let mut steps = self.steps()?;
        steps.retain(|&s| s != current);
        steps.sort_unstable_by(|a, b| b.cmp(a));
        for step in steps.into_iter().skip(KEEP - 1) {
            let dir = self.step_dir(step);
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        }
        Ok(())
    }

    /// The steps of the checkpoint folders present, in no particular order.
    fn steps(&self) -> Result<Vec<usize>, TrainError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&self.dir, e)),
        };
        let mut steps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&self.dir, e))?;
            if let Some(step) = parse_step_name(&entry.file_name().to_string_lossy()) {
                steps.push(step);
            }
        }
        Ok(steps)
    }

    /// Whether any checkpoint exists.
    pub fn exist(&self) -> Result<bool, TrainError> {
        Ok(self.latest().exists() || !self.steps()?.is_empty())
    }

    /// Restores the newest checkpoint that passes its integrity check: `latest` first,
    /// then older ones (each refusal is logged with its reason).
    pub fn load<M: Module>(
        &self,
        model: M,
        optimizer: ModuleOptimizer,
        run_dir: &Path,
    ) -> Result<Restored<M>, TrainError> {
        let mut candidates = self.steps()?;
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        // `latest` names the newest complete checkpoint; folders newer than it were
        // interrupted mid-write.
        if let Ok(text) = std::fs::read_to_string(self.latest()) {
            match parse_step_name(text.trim()) {
                Some(latest) => candidates.retain(|&s| s <= latest),
                None => tracing::warn!(
                    path = %self.latest().display(),
                    "ignoring a `latest` pointer that does not name a checkpoint"
                ),
            }
        }
        if candidates.is_empty() {
            return Err(TrainError::NoCheckpoint {
                dir: run_dir.to_path_buf(),
            });
        }
        let mut first_problem = None;
        for step in candidates {
            let dir = self.step_dir(step);
            match verify_checksums(&dir) {
                Ok(true) => {
                    return self.read(&dir, step, model, optimizer);
                }
                Ok(false) => {
                    tracing::warn!(dir = %dir.display(), "checkpoint without SHA256SUMS; skipped")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %ember_data::error_chain(&e), "damaged checkpoint; trying the previous one");
                    first_problem.get_or_insert(e);
                }
            }
        }
        match first_problem {
            Some(source) => Err(TrainError::DamagedCheckpoints {
                dir: self.dir.clone(),
                source,
            }),
            None => Err(TrainError::NoCheckpoint {
                dir: run_dir.to_path_buf(),
            }),
        }
    }

    fn read<M: Module>(
        &self,
        dir: &Path,
        step: usize,
        model: M,
        optimizer: ModuleOptimizer,
    ) -> Result<Restored<M>, TrainError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|e| TrainError::io(&path, e))
        };
        let corrupt = |file: &str, e: &dyn std::fmt::Display| TrainError::Corrupt {
            path: dir.join(file),
            message: e.to_string(),
        };
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(read("model.bpk")?))
            .map_err(|e| corrupt("model.bpk", &e))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| corrupt("model.bpk", &e))?;
        let optimizer = optimizer
            .from_bytes(Bytes::from_bytes_vec(read("optimizer.bpk")?))
            .map_err(|e| corrupt("optimizer.bpk", &e))?;
        let state: TrainState =
            serde_json::from_slice(&read("state.json")?).map_err(|e| corrupt("state.json", &e))?;
        if state.step != step {
            return Err(corrupt(
                "state.json",
                &format!(
                    "claims step {} in the checkpoint of step {step}",
                    state.step
                ),
            ));
        }
        Ok(Restored {
            model,
            optimizer,
            state,
        })
    }
}

/// Fills the folder `target` through `fill`, which writes into a temporary folder
/// beside it (`.NAME.partial`) that replaces `target` only once `fill` succeeded; on
/// failure the temporary folder is removed and `target` is as it was.
fn write_dir_whole(
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let name = target.file_name().expect("a checkpoint folder has a name");
    let partial = target.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let remove = |path: &Path| match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::io(path, e)),
        _ => Ok(()),
    };
    // What a process killed mid-write left.
    remove(&partial)?;
    std::fs::create_dir_all(&partial).map_err(|e| TrainError::io(&partial, e))?;
    if let Err(e) = fill(&partial) {
        if let Err(cleanup) = remove(&partial) {
            tracing::warn!(error = %ember_data::error_chain(&cleanup), "cannot remove a partial checkpoint");
        }
        return Err(e);
    }
    remove(target)?;
    std::fs::rename(&partial, target).map_err(|e| TrainError::io(target, e))
}

/// `N` of a `step-N` name; nothing else (no paths) is accepted.
fn parse_step_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder whose filling fails is not left behind, half-written or otherwise, and
    /// an older complete one of the same name survives; one that succeeds replaces it.
    #[test]
    fn folders_appear_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("step-3");
        let full_disk = || std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let err = write_dir_whole(&target, |dir| {
            std::fs::write(dir.join("model.bpk"), b"half").unwrap();
            Err(TrainError::io(dir.join("optimizer.bpk"), full_disk()))
        })
        .unwrap_err();
        assert!(err.to_string().ends_with("optimizer.bpk"), "{err}");
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        write_dir_whole(&target, |dir| {
            std::fs::write(dir.join("state.json"), b"1").unwrap();
            Ok(())
        })
        .unwrap();
        write_dir_whole(&target, |_| Err(TrainError::io(&target, full_disk()))).unwrap_err();
        assert_eq!(std::fs::read(target.join("state.json")).unwrap(), b"1");
        write_dir_whole(&target, |dir| {
            std::fs::write(dir.join("state.json"), b"2").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(target.join("state.json")).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_plain_step_names_count() {
        assert_eq!(parse_step_name("step-12"), Some(12));
        for bad in [
            "step-",
            "../../x",
            "/tmp/step-3",
            "step-3/../..",
            "step-+3",
            "x",
        ] {
            assert_eq!(parse_step_name(bad), None, "{bad}");
        }
    }
}
