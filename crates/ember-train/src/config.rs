//! The configuration of a pretraining run, readable from TOML and overridable with
//! `key=value` pairs. Unknown keys are errors.

use std::path::{Path, PathBuf};

use ember_kernels::Dtype;
use ember_model::{GptConfig, WeightInit};

#[cfg(test)]
use ember_data::error_chain;
use serde::{Deserialize, Serialize};

use crate::optim::AdamWSettings;

/// A setting whose value cannot make a run, named by its dotted key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} {message}")]
pub struct InvalidSetting {
    /// The dotted key (`train.lr`).
    pub key: String,
    /// What is wrong with the value (`must be positive, got -5`).
    pub message: String,
}

impl InvalidSetting {
    /// `key` `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Errors in a run configuration.
#[derive(Debug, thiserror::Error)]
pub enum RunConfigError {
    /// The file could not be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or keys and types that do not fit the configuration.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the bad value came from (a file or `--set`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value out of range.
    #[error("{origin}")]
    Invalid {
        /// Where the value came from (a file, `--set`, or the configuration as a whole).
        origin: String,
        /// The setting.
        #[source]
        source: InvalidSetting,
    },
    /// An unknown preset.
    #[error("unknown run preset \"{0}\" (known: book, tiny, corpus)")]
    UnknownPreset(String),
}

/// Where the training text comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A UTF-8 text file (split by characters into train/validation), or a directory of
    /// token shards written by `ember prepare`.
    pub path: PathBuf,
    /// Fraction of a text file's characters used for training (the book: 0.9).
    pub train_ratio: f64,
    /// Step between window starts; `None` = the context length (no overlap, as the book).
    #[serde(default)]
    pub stride: Option<usize>,
}

/// Optimisation and bookkeeping of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub grad_accum_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps (0: none).
    pub warmup_steps: usize,
    /// Rate at the start of the warmup (default: `lr`).
    #[serde(default)]
    pub initial_lr: Option<f64>,
    /// Rate reached by cosine decay at the end (default: `lr`, i.e. no decay).
    #[serde(default)]
    pub min_lr: Option<f64>,
    /// AdamW hyper-parameters.
    pub optimizer: AdamWSettings,
    /// Clip the global gradient norm to this (appendix D uses 1.0).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Evaluate every this many optimizer steps (and after the first).
    pub eval_freq: usize,
    /// Batches used for each evaluation of the train and validation loss.
    pub eval_iter: usize,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Whether training windows are shuffled each epoch.
    pub shuffle: bool,
    /// Write a checkpoint every this many optimizer steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Stop after this many optimizer steps in total.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Prompt of the text sample printed after each epoch.
    pub sample_prompt: String,
    /// Tokens generated for each sample.
    pub sample_tokens: usize,
    /// Peak FLOP/s of the machine, for the model-FLOP-utilisation estimate.
    pub peak_flops: f64,
    /// Arithmetic of the matrix products: `f32` (the default) or `bf16` (mixed
    /// precision: bf16 operands with f32 sums; weights, gradients, optimizer state,
    /// normalisations and the loss stay f32). `fp32`, as earlier runs wrote it, reads
    /// as `f32`.
    #[serde(default)]
    pub precision: Dtype,
    /// Under several ranks, each keeps the optimizer's state of its share of the
    /// parameters only (ZeRO stage 1: the same steps, less memory per rank; see
    /// [`crate::shard`]). Nothing changes in one process.
    #[serde(default)]
    pub shard_optimizer: bool,
}

/// Checks that a run on `device` can compute its products in `precision`
/// (`train.precision`): f32 anywhere; bf16 on Ember's CPU kernels, or on a device whose
/// backend computes in bf16 (a GPU: the products' operands are cast,
/// [`ember_kernels::autocast::supports`]), and refused elsewhere rather than silently
/// left f32; warns when the CPU kernels run on a CPU without bf16 instructions, where
/// bf16 is rounded alike but no faster.
pub fn check_precision(
    precision: Dtype,
    device: &burn::prelude::Device,
) -> Result<(), InvalidSetting> {
    check_trainable(precision)?;
    if precision == Dtype::F32 {
        return Ok(());
    }
    if !ember_kernels::autocast::supports(device, precision) {
        return Err(InvalidSetting::new(
            "train.precision",
            format!(
                "{precision} needs a CPU backend with Ember's kernels (ndarray or flex) or a \
                 device that computes in {precision}, and {device:?} does not"
            ),
        ));
    }
    if ember_kernels::autocast::covers(device) && !ember_kernels::autocast::has_bf16_instructions()
    {
        tracing::warn!(
            "this CPU has no bf16 instructions (AVX512_BF16): bf16 products are rounded as \
             on one that has, but computed no faster than f32"
        );
    }
    Ok(())
}

/// f16 is refused for training: its gradients underflow without loss scaling, which
/// Ember does not do (PyTorch pairs f16 autocast with a `GradScaler`); bf16 has f32's
/// range and needs none.
fn check_trainable(precision: Dtype) -> Result<(), InvalidSetting> {
    match precision {
        Dtype::F32 | Dtype::Bf16 => Ok(()),
        Dtype::F16 => Err(InvalidSetting::new(
            "train.precision",
            "f16 needs loss scaling to train, which Ember does not do; use bf16 (or f32)",
        )),
        Dtype::Q8_0 | Dtype::Q4_0 | Dtype::Q4_K => Err(InvalidSetting::new(
            "train.precision",
            format!("{precision} is a weight format for inference; use bf16 (or f32)"),
        )),
    }
}

/// A whole pretraining run: model, data, training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Architecture.
    pub model: GptConfig,
    /// Start from these weights instead of drawing new ones: any model Ember loads (a
    /// Hugging Face or Ember directory, a run directory, the book's `.pth`), which must
    /// have the shape of `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Data.
    pub data: DataConfig,
    /// Training.
    pub train: TrainConfig,
}

impl PretrainConfig {
    /// The book's chapter 5 run: GPT-2 small with context 256 and dropout 0.1, no QKV
    /// bias, AdamW (lr 4e-4, weight decay 0.1), batch 2, 10 epochs, seed 123, evaluation
    /// every 5 steps on 5 batches, the-verdict split 90/10.
    pub fn book() -> Self {
        Self {
            model: GptConfig::book(),
            init: None,
            data: DataConfig {
                path: PathBuf::from("datasets/the-verdict.txt"),
                train_ratio: 0.9,
                stride: None,
            },
            train: TrainConfig {
                epochs: 10,
                batch_size: 2,
                grad_accum_steps: 1,
                lr: 4e-4,
                warmup_steps: 0,
                initial_lr: None,
                min_lr: None,
                optimizer: AdamWSettings {
                    weight_decay: 0.1,
                    ..AdamWSettings::default()
                },
                grad_clip: None,
                eval_freq: 5,
                eval_iter: 5,
                seed: 123,
                shuffle: true,
                checkpoint_every: 0,
                max_steps: None,
                sample_prompt: "Every effort moves you".into(),
                sample_tokens: 50,
                // PyTorch's fp32 matmul on this class of 2-core machine (docs/benchmarks.md).
                peak_flops: 3.2e11,
                precision: Dtype::F32,
                shard_optimizer: false,
            },
        }
    }

    /// A run that finishes in a few minutes on two CPU cores: the tiny model with a
    /// context of 64 on the-verdict.
    pub fn tiny() -> Self {
        let mut config = Self::book();
        config.model = GptConfig {
            context_length: 64,
            weight_init: WeightInit::Torch,
            ..GptConfig::tiny()
        };
        config.train.batch_size = 8;
        config.train.lr = 1e-3;
        config.train.epochs = 10;
        config.train.eval_freq = 10;
        config.train.eval_iter = 4;
        config
    }

    /// Appendix D's recipe for a prepared corpus (`ember prepare`): warmup, cosine
    /// decay, clipping at 1.0, on the tiny model with context 128.
    pub fn corpus() -> Self {
        let mut config = Self::tiny();
        config.model.context_length = 128;
        config.model.weight_init = WeightInit::Gpt2;
        config.data.path = PathBuf::from("data/shards");
        config.train.epochs = 1;
        config.train.warmup_steps = 100;
        config.train.initial_lr = Some(1e-5);
        config.train.min_lr = Some(1e-4);
        config.train.grad_clip = Some(1.0);
        config.train.eval_freq = 100;
        config.train.checkpoint_every = 500;
        config
    }

    /// A run preset by name: `book`, `tiny` or `corpus`.
    pub fn preset(name: &str) -> Result<Self, RunConfigError> {
        match name {
            "book" => Ok(Self::book()),
            "tiny" => Ok(Self::tiny()),
            "corpus" => Ok(Self::corpus()),
            other => Err(RunConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// Checks the values that would otherwise fail mid-run.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.model
            .validate()
            .map_err(|e| InvalidSetting::new("model", e.to_string()))?;
        self.train.validate()?;
        if !(self.data.train_ratio > 0.0 && self.data.train_ratio < 1.0) {
            return Err(InvalidSetting::new(
                "data.train_ratio",
                format!("must be between 0 and 1, got {}", self.data.train_ratio),
            ));
        }
        if self.data.stride == Some(0) {
            return Err(InvalidSetting::new("data.stride", "must be at least 1"));
        }
        Ok(())
    }

    /// The learning-rate schedule for a run of `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: usize) -> crate::optim::LrSchedule {
        self.train.schedule(total_steps)
    }
}

impl TrainConfig {
    /// The fine-tuning chapters' optimisation: AdamW lr 5e-5 with weight decay 0.1,
    /// batch 8, shuffled, evaluation on 5 batches every `eval_freq` steps, seed 123.
    pub fn finetune(epochs: usize, eval_freq: usize) -> Self {
        Self {
            epochs,
            batch_size: 8,
            lr: 5e-5,
            eval_freq,
            sample_prompt: String::new(),
            sample_tokens: 50,
            ..PretrainConfig::book().train
        }
    }

    /// The settings a resumed run may change: they decide how long the run goes, how
    /// often it reports, not what it computes.
    pub const RESUMABLE: [&'static str; 9] = [
        "train.shard_optimizer",
        "train.epochs",
        "train.max_steps",
        "train.eval_freq",
        "train.eval_iter",
        "train.checkpoint_every",
        "train.peak_flops",
        "train.sample_prompt",
        "train.sample_tokens",
    ];

    /// Checks every value, so that nonsense fails before a run starts rather than
    /// changing its losses silently or failing mid-run.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (name, value) in [
            ("train.epochs", self.epochs),
            ("train.batch_size", self.batch_size),
            ("train.grad_accum_steps", self.grad_accum_steps),
            ("train.eval_freq", self.eval_freq),
            ("train.eval_iter", self.eval_iter),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(name, "must be at least 1"));
            }
        }
        let positive = |key: &str, value: f64| {
            if value > 0.0 && value.is_finite() {
                Ok(())
            } else {
                Err(InvalidSetting::new(
                    key,
                    format!("must be positive and finite, got {value}"),
                ))
            }
        };
        let not_negative = |key: &str, value: f64| {
            if value >= 0.0 && value.is_finite() {
                Ok(())
            } else {
                Err(InvalidSetting::new(
                    key,
                    format!("must be zero or positive and finite, got {value}"),
                ))
            }
        };
        positive("train.lr", self.lr)?;
        positive("train.peak_flops", self.peak_flops)?;
        if let Some(initial) = self.initial_lr {
            not_negative("train.initial_lr", initial)?;
        }
        if let Some(min) = self.min_lr {
            not_negative("train.min_lr", min)?;
        }
        if let Some(clip) = self.grad_clip {
            positive("train.grad_clip", clip)?;
        }
        if self.max_steps == Some(0) {
            return Err(InvalidSetting::new("train.max_steps", "must be at least 1"));
        }
        check_trainable(self.precision)?;
        self.optimizer.validate()
    }

    /// The learning-rate schedule for a run of `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: usize) -> crate::optim::LrSchedule {
        crate::optim::LrSchedule {
            initial_lr: self.initial_lr.unwrap_or(self.lr),
            peak_lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr),
            warmup_steps: self.warmup_steps,
            total_steps,
        }
    }
}

/// A run configuration read from TOML and `--set key=value` overrides, every key
/// checked (the pretraining and every fine-tuning configuration).
pub trait RunConfig: Serialize + serde::de::DeserializeOwned + Clone {
    /// Settings beyond [`TrainConfig::RESUMABLE`] that a resumed run may change (those
    /// that only act after training, such as how many responses to write).
    const RESUMABLE: &'static [&'static str] = &[];

    /// The files and folders the pipeline writes into its run directory beyond the
    /// run layer's own ([`crate::run_dir::RUN_LAYER_FILES`]): what
    /// `--overwrite` removes, and all [`crate::RunDir::output`] accepts.
    const OUTPUT_FILES: &'static [&'static str] = &[];

    /// Checks the values that would otherwise fail mid-run.
    fn check(&self) -> Result<(), InvalidSetting>;

    /// The optimisation settings.
    fn train(&self) -> &TrainConfig;

    /// The optimisation settings, to edit.
    fn train_mut(&mut self) -> &mut TrainConfig;

    /// Read a TOML file. Sections may be partial: what they leave out comes from
    /// `base` (a preset).
    fn from_toml_file(path: &Path, base: &Self) -> Result<Self, RunConfigError>
    where
        Self: Sized,
    {
        let text = std::fs::read_to_string(path).map_err(|source| RunConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let overrides: toml::Table = toml::from_str(&text).map_err(|e| RunConfigError::Parse {
            origin: path.display().to_string(),
            message: e.message().to_string(),
        })?;
        base.merged(overrides, &path.display().to_string())
    }

    /// Apply `key=value` overrides (`train.lr=1e-3`, `model.n_layers=2`, `data.path=...`).
    /// Values are TOML literals; anything that does not parse as one is a string. Each
    /// pair must name a field and fit its type; the values are validated together once
    /// all are applied, so their order does not matter.
    fn with_overrides(&self, pairs: &[String]) -> Result<Self, RunConfigError>
    where
        Self: Sized,
    {
        let mut config = self.clone();
        for pair in pairs {
            let invalid = |message: String| RunConfigError::Parse {
                origin: format!("--set {pair}"),
                message,
            };
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid("expected key=value".into()))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut parts: Vec<&str> = key.trim().split('.').collect();
            let last = parts
                .pop()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("empty key".into()))?;
            let mut leaf = toml::Table::new();
            leaf.insert(last.to_string(), value);
            let table = parts.iter().rev().fold(leaf, |inner, part| {
                let mut outer = toml::Table::new();
                outer.insert(part.to_string(), toml::Value::Table(inner));
                outer
            });
            config = config.merged_unchecked(table, &format!("--set {pair}"))?;
        }
        if !pairs.is_empty() {
            config.check().map_err(|source| RunConfigError::Invalid {
                origin: format!("--set {}", pairs.join(" --set ")),
                source,
            })?;
        }
        Ok(config)
    }

    /// `overrides` laid over this configuration, validated.
    fn merged(&self, overrides: toml::Table, origin: &str) -> Result<Self, RunConfigError>
    where
        Self: Sized,
    {
        let config = self.merged_unchecked(overrides, origin)?;
        config.check().map_err(|source| RunConfigError::Invalid {
            origin: origin.to_string(),
            source,
        })?;
        Ok(config)
    }

    /// `overrides` laid over this configuration: every key a field, every value of its
    /// type (not yet range-checked).
    fn merged_unchecked(&self, overrides: toml::Table, origin: &str) -> Result<Self, RunConfigError>
    where
        Self: Sized,
    {
        let parse = |message: String| RunConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        let mut base = toml::Table::try_from(self).map_err(|e| parse(e.to_string()))?;
        merge(&mut base, overrides);
        base.try_into()
            .map_err(|e: toml::de::Error| parse(e.message().to_string()))
    }
}

impl RunConfig for PretrainConfig {
    fn check(&self) -> Result<(), InvalidSetting> {
        self.validate()
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }
}

/// Recursively overlays `overrides` on `base`. Keys `base` does not have are added:
/// optional fields are absent from the serialised base when unset, and serde's
/// `deny_unknown_fields` still rejects keys that are not fields at all.
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => merge(inner, over),
            (Some(slot), value) => *slot = value,
            (None, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_unknown_keys_are_named() {
        let base = PretrainConfig::book();
        let c = base
            .with_overrides(&[
                "train.lr=1e-3".into(),
                "model.n_layers=2".into(),
                "data.path=x.txt".into(),
            ])
            .unwrap();
        assert_eq!(c.train.lr, 1e-3);
        assert_eq!(c.model.n_layers, 2);
        assert_eq!(c.data.path, PathBuf::from("x.txt"));
        assert_eq!(c.train.grad_clip, None);
        let c = base
            .with_overrides(&["train.grad_clip=1.0".into()])
            .unwrap();
        assert_eq!(c.train.grad_clip, Some(1.0));
        let err = base
            .with_overrides(&["train.learning_rate=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
        // Values are validated together: the order of the pairs does not matter.
        let c = base
            .with_overrides(&["model.emb_dim=64".into(), "model.n_heads=4".into()])
            .unwrap();
        assert_eq!((c.model.emb_dim, c.model.n_heads), (64, 4));
        let err = error_chain(&base.with_overrides(&["train.epochs=0".into()]).unwrap_err());
        assert!(err.contains("train.epochs must be at least 1"), "{err}");
        for (pair, key) in [
            ("train.grad_clip=-1", "train.grad_clip must be positive"),
            ("train.grad_clip=nan", "train.grad_clip must be positive"),
            (
                "train.optimizer.beta1=2",
                "train.optimizer.beta1 must be in [0, 1)",
            ),
            (
                "train.initial_lr=-5",
                "train.initial_lr must be zero or positive",
            ),
            (
                "train.optimizer.eps=0",
                "train.optimizer.eps must be positive",
            ),
            (
                "train.precision=f16",
                "train.precision f16 needs loss scaling to train",
            ),
        ] {
            let err = error_chain(&base.with_overrides(&[pair.into()]).unwrap_err());
            assert!(err.starts_with(&format!("--set {pair}: {key}")), "{err}");
        }
        // The dtype names of every other flag, and the run configurations' older "fp32".
        for (value, precision) in [
            ("bf16", Dtype::Bf16),
            ("fp32", Dtype::F32),
            ("f32", Dtype::F32),
        ] {
            let c = base
                .with_overrides(&[format!("train.precision={value}")])
                .unwrap();
            assert_eq!(c.train.precision, precision);
        }
        let err = base
            .with_overrides(&["train.epochs".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected key=value"), "{err}");
    }

    #[test]
    fn toml_files_override_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "[train]\nepochs = 3\n[model]\nemb_dim = 64\nn_heads = 2\n",
        )
        .unwrap();
        let c = PretrainConfig::from_toml_file(&path, &PretrainConfig::tiny()).unwrap();
        assert_eq!(
            (c.train.epochs, c.model.emb_dim, c.model.n_heads),
            (3, 64, 2)
        );
        std::fs::write(&path, "[train]\nepoch = 3\n").unwrap();
        let err = PretrainConfig::from_toml_file(&path, &PretrainConfig::tiny())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run.toml") && err.contains("unknown field `epoch`"),
            "{err}"
        );
    }
}
