//! Training, chapter 5 and appendix D of *Build a Large Language Model (From
//! Scratch)*, and the run layer every later chapter plugs into.
//!
//! ```
//! use ember_train::LrSchedule;
//!
//! // Appendix D: linear warmup to the peak, then cosine decay to the minimum.
//! let schedule = LrSchedule {
//!     initial_lr: 0.0,
//!     peak_lr: 1e-3,
//!     min_lr: 1e-4,
//!     warmup_steps: 10,
//!     total_steps: 110,
//! };
//! let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
//! assert!(close(schedule.lr(5), 5e-4));
//! assert!(close(schedule.lr(10), 1e-3));
//! assert!(close(schedule.lr(60), 5.5e-4)); // halfway down the cosine
//! assert!(close(schedule.lr(110), 1e-4));
//! ```
//!
//! - [`simple`]: listing 5.3's `train_model_simple`, to read beside the book;
//! - [`trainer`]: the loop every run shares, [`train_step`] and [`fit`], driven by a
//!   [`TrainTask`] ([`task`]);
//! - [`pipeline`]: [`Run`], the one shape of a training pipeline;
//! - [`run_dir`], [`checkpoint`], [`metrics`]: the run directory, its lock,
//!   configuration, reports, checkpoints and `metrics.jsonl`;
//! - [`mod@pretrain`]: pretraining as a task (sliding windows, text samples);
//! - [`loss`], [`optim`], [`eval`]: masked cross-entropy, PyTorch-exact AdamW,
//!   global-norm clipping, warmup + cosine, evaluation over the first batches and
//!   the loss (perplexity) of a whole text;
//! - [`config`]: run configuration (TOML, presets, `key=value` overrides, validation);
//! - [`plot`]: the loss plot of figure 5.12 (the `plot` feature, on by default, as are
//!   `progress`, a bar per epoch, and `pth`, runs from the book's `.pth` weights);
//! - [`error`]: the errors of a run, [`TrainError`].

#![warn(missing_docs)]

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod error;
pub mod eval;
pub mod loss;
pub mod metrics;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod optim;
pub mod pipeline;
#[cfg(feature = "plot")]
pub mod plot;
pub mod pretrain;
pub mod run_dir;
pub mod shard;
pub mod simple;
pub mod task;
pub mod trainer;

pub use checkpoint::TrainState;
pub use collective::{Collective, CollectiveError};
pub use config::{
    DataConfig, InvalidSetting, PretrainConfig, RunConfig, RunConfigError, TrainConfig,
    check_precision,
};
pub use error::TrainError;
pub use eval::{TextLoss, labeled_tensors, mean_loss, over_eval_batches, text_loss, token_tensors};
pub use loss::{IGNORE_INDEX, cross_entropy, perplexity};
pub use metrics::MetricsLine;
pub use optim::{AdamWSettings, LrSchedule, clip_grad_norm, grad_norm};
pub use pipeline::Run;
pub use pretrain::{PretrainOutcome, evaluate_loss, flops_per_token, pretrain, sample_text};
pub use run_dir::{Report, RunDir, RunMode};
pub use simple::{SimpleTrainingLog, evaluate_model, train_model_simple};
pub use task::{Evaluation, TrainTask};
pub use trainer::{FitOutcome, Parallel, RunOptions, StepOutcome, StopReason, fit, train_step};
