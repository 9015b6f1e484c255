//! Pretraining, chapter 5 and appendix D of *Build a Large Language Model (From
//! Scratch)*.
//!
//! - [`loss`]: next-token cross-entropy with the `-100` ignore index, perplexity;
//! - [`optim`]: AdamW with PyTorch's semantics, global-norm clipping, warmup + cosine;
//! - [`fit`]: the training loop every chapter shares (accumulation, clipping, evaluation,
//!   metrics, plots, checkpoints, Ctrl-C, exact resume), driven by a [`TrainTask`];
//! - [`trainer`]: pretraining as such a task (sliding windows, text samples);
//! - [`config`]: run configuration (TOML, presets, `key=value` overrides);
//! - [`plot`]: the loss plot of figure 5.12.

pub mod config;
pub mod data;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod trainer;

pub use config::{DataConfig, PretrainConfig, RunConfig, RunConfigError, TrainConfig};
pub use fit::{
    Evaluation, FitOutcome, MetricsLine, RunOptions, RunPaths, StopReason, TrainError, TrainState,
    TrainTask, fit,
};
pub use loss::{IGNORE_INDEX, cross_entropy, perplexity};
pub use optim::{AdamWSettings, LrSchedule, clip_grad_norm, grad_norm};
pub use trainer::{PretrainOutcome, evaluate_loss, flops_per_token, pretrain, sample_text};
