//! The errors of a training run. Each keeps its cause as a source, so the one-line
//! message the `ember` binary prints (`ember_data::error_chain`) says what happened and
//! why.

use std::path::PathBuf;

use ember_data::DataError;
use ember_data::files::ChecksumError;
use ember_model::WeightsError;

use crate::config::{InvalidSetting, RunConfigError};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a run file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A run file that does not hold what it should.
    #[error("{}: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The configuration cannot run.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// The configuration could not be read or does not parse.
    #[error(transparent)]
    Config(#[from] RunConfigError),
    /// A resumed run whose settings differ from the saved ones.
    #[error("{}: {keys} differ(s) from the run being resumed", path.display())]
    NotResumable {
        /// The saved configuration.
        path: PathBuf,
        /// The differing dotted keys, comma-separated.
        keys: String,
    },
    /// The data cannot feed this configuration.
    #[error("{what}")]
    Data {
        /// Which data, and for what.
        what: String,
        /// The cause.
        #[source]
        source: DataError,
    },
    /// An exchange between the processes of a data-parallel job failed.
    #[error(transparent)]
    Collective(#[from] crate::collective::CollectiveError),
    /// Too little data for one optimizer step.
    #[error("{0}")]
    TooLittleData(String),
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] ember_tokenizer::TokenizerError),
    /// The model (initial weights or the export) could not be read or written.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The run directory already holds a run.
    #[error(
        "{} already holds a run; pass --resume to continue it, --overwrite to start it over, or choose another --out",
        dir.display()
    )]
    RunExists {
        /// The run directory.
        dir: PathBuf,
    },
    /// Another process is using the run directory.
    #[error("{} is in use by another ember process{}", dir.display(), holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: Option<String>,
    },
    /// Nothing to resume.
    #[error(
        "{} has no checkpoint to resume from; start it over with --overwrite",
        dir.display()
    )]
    NoCheckpoint {
        /// The run directory.
        dir: PathBuf,
    },
    /// Every checkpoint failed its integrity check.
    #[error("{}: no checkpoint passed its integrity check", dir.display())]
    DamagedCheckpoints {
        /// The checkpoints directory.
        dir: PathBuf,
        /// The newest checkpoint's problem.
        #[source]
        source: ChecksumError,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss became {loss} at step {step}; lower train.lr, enable train.grad_clip, or check the data"
    )]
    Diverged {
        /// The step.
        step: usize,
        /// The value.
        loss: f32,
    },
    /// Ctrl-C or SIGTERM: the run stopped after writing a checkpoint at `step`.
    #[error(
        "interrupted at step {step}; a checkpoint is written, continue with --resume {}",
        run_dir.display()
    )]
    Interrupted {
        /// Steps done.
        step: usize,
        /// The run to resume.
        run_dir: PathBuf,
    },
}

impl TrainError {
    /// A [`TrainError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`TrainError::Data`].
    pub fn data(what: impl Into<String>, source: DataError) -> Self {
        Self::Data {
            what: what.into(),
            source,
        }
    }
}
