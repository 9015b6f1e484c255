//! The one shape of every training pipeline (pretraining, both fine-tunings, DPO):
//! [`Run::start`] validates the configuration, locks and checks the run directory,
//! compares the configuration with the run being resumed, saves it and seeds the
//! device; [`Run::fit`] trains a task; the pipeline then exports what it made into the
//! run directory.

use std::path::Path;

use burn::prelude::*;

use crate::config::{InvalidSetting, RunConfig, TrainConfig};
use crate::error::TrainError;
use crate::run_dir::{RunDir, RunMode};
use crate::task::TrainTask;
use crate::trainer::{FitOutcome, RunOptions, StopReason, fit};

/// A training run in its directory.
pub struct Run<'a> {
    dir: RunDir,
    train: TrainConfig,
    device: Device,
    train_device: Device,
    options: RunOptions<'a>,
}

impl<'a> Run<'a> {
    /// Starts (or resumes) the run of `config` in `run_dir` on `device`.
    pub fn start<C: RunConfig>(
        config: &C,
        run_dir: &Path,
        device: &Device,
        options: RunOptions<'a>,
    ) -> Result<Self, TrainError> {
        config.check()?;
        let replicas = options.devices.len().max(1);
        let ranks = options.collective.map_or(1, |c| c.size());
        let batch_size = config.train().batch_size;
        if !batch_size.is_multiple_of(replicas * ranks) {
            let across = match (ranks, replicas) {
                (1, _) => format!("{replicas} devices"),
                (_, 1) => format!("{ranks} processes"),
                _ => format!("{ranks} processes x {replicas} devices"),
            };
            return Err(InvalidSetting::new(
                "train.batch_size",
                format!("{batch_size} does not split evenly across {across}"),
            )
            .into());
        }
        crate::config::check_precision(config.train().precision, device)?;
        let dir = if options.writes() {
            let dir = RunDir::open(run_dir, options.mode, C::OUTPUT_FILES)?;
            if options.mode == RunMode::Resume {
                dir.check_resumable(config)?;
            }
            dir.write_config(config)?;
            dir
        } else {
            RunDir::follow(run_dir, C::OUTPUT_FILES)
        };
        if let Some(collective) = options.collective {
            // The other ranks read the directory only once rank 0 has set it up (an
            // overwritten run's files removed, the configuration checked).
            collective.barrier("the start of the run")?;
        }
        let train_device = device.clone().autodiff();
        // New models draw their weights from this seed.
        train_device.seed(config.train().seed);
        Ok(Self {
            dir,
            train: config.train().clone(),
            device: device.clone(),
            train_device,
            options,
        })
    }

    /// The run directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// The device for evaluation and inference after training (no autodiff).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The autodiff device the model trains on.
    pub fn train_device(&self) -> &Device {
        &self.train_device
    }

    /// The run's options.
    pub fn options(&self) -> &RunOptions<'a> {
        &self.options
    }

    /// Whether this process writes the run's outputs: one process, or rank 0 of a
    /// data-parallel job (the other ranks train and leave the rest to it).
    pub fn writes(&self) -> bool {
        self.dir.writes()
    }

    /// Trains `model` on `task`. An interruption is an error
    /// ([`TrainError::Interrupted`]), after its checkpoint is written, so every
    /// pipeline stops the same way and the process exits non-zero.
    pub fn fit<T: TrainTask>(
        &self,
        task: &T,
        model: T::Model,
    ) -> Result<FitOutcome<T::Model>, TrainError> {
        let outcome = fit(
            task,
            model,
            &self.train,
            &self.dir,
            &self.train_device,
            &self.options,
        )?;
        if outcome.stop == StopReason::Interrupted {
            return Err(TrainError::Interrupted {
                step: outcome.state.step,
                run_dir: self.dir.root().to_path_buf(),
            });
        }
        Ok(outcome)
    }
}
