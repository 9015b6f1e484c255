//! Pretraining, chapter 5 and appendix D of *Build a Large Language Model (From
//! Scratch)*.
//!
//! - [`loss`]: next-token cross-entropy with the `-100` ignore index, perplexity;
//! - [`optim`]: AdamW with PyTorch's semantics, global-norm clipping, warmup + cosine;
//! - [`trainer`]: the training loop, evaluation, samples, metrics, checkpoints, resume;
//! - [`config`]: run configuration (TOML, presets, `key=value` overrides);
//! - [`plot`]: the loss plot of figure 5.12.

pub mod config;
pub mod data;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod trainer;

pub use config::{DataConfig, PretrainConfig, RunConfigError, TrainConfig};
pub use loss::{IGNORE_INDEX, cross_entropy, perplexity};
pub use optim::{AdamWSettings, LrSchedule, clip_grad_norm, grad_norm};
pub use trainer::{
    MetricsLine, PretrainOutcome, RunOptions, RunPaths, StopReason, TrainError, TrainState,
    evaluate_loss, pretrain, sample_text,
};
