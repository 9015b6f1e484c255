//! The training loop shared by pretraining (chapter 5) and both fine-tunings
//! (chapters 6 and 7): optimizer steps with gradient accumulation, the learning-rate
//! schedule, clipping, periodic evaluation, metrics, plots, checkpoints, Ctrl-C and
//! exact resumption.
//!
//! What differs between the chapters (the model, the batches, the loss, what an
//! evaluation measures, what is printed after an epoch) is a [`TrainTask`]; [`fit`]
//! does the rest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use ember_model::weights::write_atomic;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::optim::clip_grad_norm;
use crate::plot::{LossPoint, plot_losses};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a run file failed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The data cannot feed this configuration.
    #[error("{0}")]
    Data(String),
    /// The configuration cannot run.
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("the loss became {loss} at step {step}; lower train.lr or enable train.grad_clip")]
    Diverged {
        /// The step.
        step: usize,
        /// The value.
        loss: f32,
    },
}

/// A [`TrainError::File`] about `path`.
pub fn file_error(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |message| TrainError::File {
        path: path.to_path_buf(),
        message,
    }
}

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
    /// Mean loss over `eval_iter` training batches (evaluation steps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_train_loss: Option<f64>,
    /// Mean loss over `eval_iter` validation batches (evaluation steps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Accuracy on `eval_iter` training batches (classification, evaluation steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Accuracy on `eval_iter` validation batches (classification, evaluation steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
}

/// What one evaluation measured (each `None` when the task does not measure it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evaluation {
    /// Mean loss on training batches.
    pub train_loss: Option<f64>,
    /// Mean loss on validation batches.
    pub val_loss: Option<f64>,
    /// Accuracy on training batches.
    pub train_accuracy: Option<f64>,
    /// Accuracy on validation batches.
    pub val_accuracy: Option<f64>,
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every epoch ran.
    Finished,
    /// `max_steps` was reached.
    MaxSteps,
    /// The interrupt flag was raised (Ctrl-C); a checkpoint was written.
    Interrupted,
}

/// Options of a run that are not part of its configuration.
pub struct RunOptions<'a> {
    /// Continue the run found in the run directory.
    pub resume: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Raised (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: &'a AtomicBool,
}

/// Paths inside a run directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run directory.
    pub root: PathBuf,
}

impl RunPaths {
    /// The paths of run directory `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    /// `config.toml`
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `metrics.jsonl`
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `samples.txt`
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples.txt")
    }
    /// `loss.png`
    pub fn plot(&self) -> PathBuf {
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

    /// Creates the directory. A new run (not `resume`) refuses a directory that already
    /// holds one, so nothing written before is lost.
    pub fn prepare(&self, resume: bool) -> Result<(), TrainError> {
        std::fs::create_dir_all(&self.root).map_err(|e| file_error(&self.root)(e.to_string()))?;
        if !resume && (self.metrics().exists() || self.checkpoints().exists()) {
            return Err(TrainError::Config(format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// The configuration saved by the run being resumed.
    pub fn saved_config<C: serde::de::DeserializeOwned>(&self) -> Result<C, TrainError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path)(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_error(&path)(e.to_string()))
    }

    /// Refuses to resume with settings that would make a different run: everything in
    /// `config` must equal the saved configuration except what only decides how long
    /// the run goes, how often it reports, and what happens after training.
    pub fn check_resumable<C: Serialize>(&self, config: &C) -> Result<(), TrainError> {
        const FREE: [&str; 10] = [
            "train.epochs",
            "train.max_steps",
            "train.eval_freq",
            "train.eval_iter",
            "train.checkpoint_every",
            "train.peak_flops",
            "train.sample_prompt",
            "train.sample_tokens",
            "responses",
            "max_new_tokens",
        ];
        let path = self.config();
        let saved: toml::Table = self.saved_config()?;
        let current = toml::Table::try_from(config).expect("serialisable");
        let mut differing = Vec::new();
        diff_tables(&saved, &current, "", &mut differing);
        differing.retain(|key| !FREE.contains(&key.as_str()));
        if differing.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "{}: {} differ(s) from the run being resumed",
                path.display(),
                differing.join(", ")
            )))
        }
    }

    /// Writes the resolved configuration (atomically).
    pub fn write_config<C: Serialize>(&self, config: &C) -> Result<(), TrainError> {
        let text = toml::to_string_pretty(config).expect("serialisable");
        write_atomic(&self.config(), text.as_bytes())
            .map_err(|e| file_error(&self.config())(e.to_string()))
    }

    /// Writes `value` as pretty JSON to `name` in the run directory (atomically);
    /// returns the file's path.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<PathBuf, TrainError> {
        let path = self.root.join(name);
        let text = serde_json::to_string_pretty(value).expect("serialisable");
        write_atomic(&path, text.as_bytes()).map_err(|e| file_error(&path)(e.to_string()))?;
        Ok(path)
    }

    /// Appends one line to `samples.txt`.
    pub fn append_sample(&self, line: &str) -> Result<(), TrainError> {
        let path = self.samples();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| file_error(&path)(e.to_string()))?;
        writeln!(file, "{line}").map_err(|e| file_error(&path)(e.to_string()))
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

/// One training problem for [`fit`]: the batches, the loss, the evaluation.
pub trait TrainTask {
    /// The model being trained.
    type Model: Module;
    /// One micro-batch (window indices, token rows, ...).
    type Batch;

    /// Micro-batches in every epoch.
    fn batches_per_epoch(&self) -> usize;

    /// The micro-batches of epoch `epoch`, in order; a function of the epoch alone, so
    /// that a resumed run rebuilds the same order.
    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Self::Batch>, TrainError>;

    /// Mean loss of one micro-batch, computed on `device` (the autodiff device).
    fn batch_loss(&self, model: &Self::Model, batch: &Self::Batch, device: &Device) -> Tensor<1>;

    /// Tokens in a micro-batch, for throughput.
    fn batch_tokens(&self, batch: &Self::Batch) -> u64;

    /// FLOPs of one training token, for the MFU estimate (0: none reported).
    fn flops_per_token(&self) -> f64 {
        0.0
    }

    /// Evaluates `model` (already `valid()`: no autodiff graph) on `device`.
    fn evaluate(&self, model: &Self::Model, device: &Device) -> Evaluation;

    /// A line for `samples.txt` after each epoch (and when a run stops mid-epoch):
    /// a text sample, accuracies.
    fn epoch_report(&self, _model: &Self::Model, _device: &Device) -> Option<String> {
        None
    }
}

/// The result of [`fit`].
#[derive(Debug)]
pub struct FitOutcome<M> {
    /// The trained model (on the autodiff device).
    pub model: M,
    /// Where the run stopped.
    pub state: TrainState,
    /// Why.
    pub stop: StopReason,
    /// Every metrics line of the run, resumed parts included.
    pub metrics: Vec<MetricsLine>,
}

impl<M> FitOutcome<M> {
    /// The last evaluation of the run.
    pub fn last_evaluation(&self) -> Evaluation {
        self.metrics
            .iter()
            .rev()
            .find(|m| m.val_loss.is_some() || m.eval_train_loss.is_some())
            .map(|m| Evaluation {
                train_loss: m.eval_train_loss,
                val_loss: m.val_loss,
                train_accuracy: m.train_accuracy,
                val_accuracy: m.val_accuracy,
            })
            .unwrap_or_default()
    }
}

/// Trains `model` (on `train_device`, an autodiff device) on `task` as `train`
/// describes, writing metrics, samples, plots and checkpoints under `paths`.
///
/// With `options.resume` the model, optimizer and position come from the newest
/// checkpoint, and the metrics after it are rewritten: dropout is re-seeded from the
/// step number and batch orders are functions of the epoch, so the resumed run writes
/// what an uninterrupted one would.
pub fn fit<T: TrainTask>(
    task: &T,
    mut model: T::Model,
    train: &TrainConfig,
    paths: &RunPaths,
    train_device: &Device,
    options: RunOptions<'_>,
) -> Result<FitOutcome<T::Model>, TrainError> {
    let eval_device = train_device.clone().inner();
    let micro_batches = task.batches_per_epoch();
    let steps_per_epoch = micro_batches / train.grad_accum_steps;
    if steps_per_epoch == 0 {
        return Err(TrainError::Data(format!(
            "{micro_batches} training batches make no full step of grad_accum_steps {}",
            train.grad_accum_steps
        )));
    }
    let total_steps = train.max_steps.map_or(steps_per_epoch * train.epochs, |m| {
        m.min(steps_per_epoch * train.epochs)
    });
    let schedule = train.schedule(steps_per_epoch * train.epochs);
    let mut optim = train.optimizer.init();
    let checkpoint = Checkpoint { paths };
    let mut state = TrainState::default();
    let mut metrics = Vec::new();
    if options.resume {
        (model, optim, state) = checkpoint.load(model, optim)?;
        metrics = read_metrics(&paths.metrics(), state.step)?;
        rewind_samples(&paths.samples(), state.step)?;
        tracing::info!(step = state.step, epoch = state.epoch, "resuming");
    } else {
        // A fresh run starts with a fresh samples file.
        let _ = std::fs::remove_file(paths.samples());
    }
    let mut metrics_file = rewrite_metrics(&paths.metrics(), &metrics)?;

    let flops = task.flops_per_token();
    let mut stop = StopReason::Finished;
    let mut last_tick = Instant::now();
    let mut tokens_since_tick = 0u64;
    'epochs: while state.epoch < train.epochs {
        let batches = task.epoch_batches(state.epoch)?;
        let bar = progress_bar(options.progress, steps_per_epoch, state.epoch, train.epochs);
        bar.set_position((state.batch_in_epoch / train.grad_accum_steps) as u64);
        while state.batch_in_epoch + train.grad_accum_steps <= batches.len() {
            if state.step >= total_steps {
                stop = StopReason::MaxSteps;
                break 'epochs;
            }
            // Dropout masks depend only on the step, so a resumed run draws the same ones.
            train_device.seed(
                train
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(state.step as u64),
            );
            let lr = schedule.lr(state.step);
            let mut accumulator = GradientsAccumulator::<T::Model>::new();
            let mut step_loss = 0.0;
            let mut step_tokens = 0;
            for micro in 0..train.grad_accum_steps {
                let batch = &batches[state.batch_in_epoch + micro];
                step_tokens += task.batch_tokens(batch);
                let loss =
                    task.batch_loss(&model, batch, train_device) / train.grad_accum_steps as f64;
                let value: f32 = loss.clone().into_scalar();
                if !value.is_finite() {
                    return Err(TrainError::Diverged {
                        step: state.step + 1,
                        loss: value,
                    });
                }
                step_loss += value as f64;
                accumulator
                    .accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            let mut grads = accumulator.grads();
            let grad_norm = match train.grad_clip {
                Some(max_norm) => clip_grad_norm(&model, &mut grads, max_norm),
                None => crate::optim::grad_norm(&model, &mut grads),
            };
            model = optim.step(lr, model, grads);
            state.step += 1;
            state.batch_in_epoch += train.grad_accum_steps;
            state.tokens_seen += step_tokens;
            tokens_since_tick += step_tokens;

            let elapsed = last_tick.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_sec = tokens_since_tick as f64 / elapsed;
            last_tick = Instant::now();
            tokens_since_tick = 0;
            let mut line = MetricsLine {
                step: state.step,
                epoch: state.epoch as f64
                    + state.batch_in_epoch as f64
                        / (steps_per_epoch * train.grad_accum_steps) as f64,
                tokens_seen: state.tokens_seen,
                lr,
                train_loss: step_loss,
                grad_norm,
                tokens_per_sec,
                mfu: tokens_per_sec * flops / train.peak_flops,
                eval_train_loss: None,
                val_loss: None,
                train_accuracy: None,
                val_accuracy: None,
            };
            // The book evaluates after its first step and then every eval_freq steps.
            if (state.step - 1).is_multiple_of(train.eval_freq) {
                let eval = task.evaluate(&model.valid(), &eval_device);
                line.eval_train_loss = eval.train_loss;
                line.val_loss = eval.val_loss;
                line.train_accuracy = eval.train_accuracy;
                line.val_accuracy = eval.val_accuracy;
                tracing::info!(
                    step = state.step,
                    train_loss = eval.train_loss,
                    val_loss = eval.val_loss,
                    train_accuracy = eval.train_accuracy,
                    val_accuracy = eval.val_accuracy,
                    tokens_seen = state.tokens_seen,
                    "evaluation"
                );
                last_tick = Instant::now();
            }
            bar.set_message(format!(
                "loss {step_loss:.3}  lr {lr:.2e}  {tokens_per_sec:.0} tok/s"
            ));
            bar.inc(1);
            writeln!(
                metrics_file,
                "{}",
                serde_json::to_string(&line).expect("serialisable")
            )
            .and_then(|_| metrics_file.flush())
            .map_err(|e| file_error(&paths.metrics())(e.to_string()))?;
            metrics.push(line);
            if train.checkpoint_every > 0 && state.step.is_multiple_of(train.checkpoint_every) {
                checkpoint.save(&model, &optim, &state)?;
            }
            if options.interrupt.load(Ordering::SeqCst) {
                stop = StopReason::Interrupted;
                break 'epochs;
            }
        }
        bar.finish_and_clear();
        write_report(task, &model, paths, &state, &eval_device, false)?;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        write_plots(paths, &metrics);
    }
    // A run that ends mid-epoch shows where it got to (unless it stopped right after
    // an epoch's report).
    if stop == StopReason::Interrupted || (stop == StopReason::MaxSteps && state.batch_in_epoch > 0)
    {
        write_report(task, &model, paths, &state, &eval_device, true)?;
    }
    checkpoint.save(&model, &optim, &state)?;
    write_plots(paths, &metrics);
    Ok(FitOutcome {
        model,
        state,
        stop,
        metrics,
    })
}

/// Appends the task's report to `samples.txt`: `epoch E step S: ...` at the end of an
/// epoch, `stopped at step S (epoch E): ...` when the run stops inside one.
fn write_report<T: TrainTask>(
    task: &T,
    model: &T::Model,
    paths: &RunPaths,
    state: &TrainState,
    device: &Device,
    stopped: bool,
) -> Result<(), TrainError> {
    if let Some(report) = task.epoch_report(&model.valid(), device) {
        tracing::info!(epoch = state.epoch + 1, step = state.step, report = %report, "epoch");
        let report = report.replace('\n', " ");
        let line = if stopped {
            format!(
                "stopped at step {} (epoch {}): {report}",
                state.step,
                state.epoch + 1
            )
        } else {
            format!("epoch {} step {}: {report}", state.epoch + 1, state.step)
        };
        paths.append_sample(&line)?;
    }
    Ok(())
}

/// On resume, keeps the epoch reports written before checkpoint `step` (every report
/// of that step or later is written again by the resumed run) and drops the reports
/// of earlier stops, so the file equals an uninterrupted run's.
fn rewind_samples(path: &Path, step: usize) -> Result<(), TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_error(path)(e.to_string())),
    };
    let line_step = |line: &str| -> Option<usize> {
        let rest = line.strip_prefix("epoch ")?;
        let rest = &rest[rest.find(" step ")? + 6..];
        rest[..rest.find(':')?].parse().ok()
    };
    let kept: String = text
        .lines()
        .filter(|l| line_step(l).is_some_and(|s| s < step))
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes()).map_err(|e| file_error(path)(e.to_string()))
}

struct Checkpoint<'a> {
    paths: &'a RunPaths,
}

impl Checkpoint<'_> {
    fn save<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        let dir = self
            .paths
            .checkpoints()
            .join(format!("step-{}", state.step));
        std::fs::create_dir_all(&dir).map_err(|e| file_error(&dir)(e.to_string()))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            write_atomic(&path, bytes).map_err(|e| file_error(&path)(e.to_string()))
        };
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| file_error(&dir)(e.to_string()))?;
        write("model.bpk", &model_bytes)?;
        let optim_bytes = optim
            .into_bytes()
            .map_err(|e| file_error(&dir)(e.to_string()))?;
        write("optimizer.bpk", &optim_bytes)?;
        write(
            "state.json",
            serde_json::to_string_pretty(state)
                .expect("serialisable")
                .as_bytes(),
        )?;
        // The pointer moves only once the whole checkpoint is on disk.
        let latest = self.paths.checkpoints().join("latest");
        write_atomic(&latest, format!("step-{}\n", state.step).as_bytes())
            .map_err(|e| file_error(&latest)(e.to_string()))?;
        // Older checkpoints are superseded.
        if let Ok(entries) = std::fs::read_dir(self.paths.checkpoints()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with("step-") && name != format!("step-{}", state.step) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        tracing::info!(step = state.step, dir = %dir.display(), "checkpoint written");
        Ok(())
    }

    fn load<M: Module>(
        &self,
        model: M,
        optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer, TrainState), TrainError> {
        let latest = self.paths.checkpoints().join("latest");
        let name = std::fs::read_to_string(&latest)
            .map_err(|e| file_error(&latest)(format!("no checkpoint to resume from ({e})")))?;
        let dir = self.paths.checkpoints().join(name.trim());
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|e| file_error(&path)(e.to_string()))
        };
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(read("model.bpk")?))
            .map_err(|e| file_error(&dir.join("model.bpk"))(e.to_string()))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| file_error(&dir.join("model.bpk"))(e.to_string()))?;
        let optim = optim
            .from_bytes(Bytes::from_bytes_vec(read("optimizer.bpk")?))
            .map_err(|e| file_error(&dir.join("optimizer.bpk"))(e.to_string()))?;
        let state_path = dir.join("state.json");
        let state: TrainState = serde_json::from_slice(&read("state.json")?)
            .map_err(|e| file_error(&state_path)(e.to_string()))?;
        Ok((model, optim, state))
    }
}

/// Keeps the metrics lines of steps up to `step` (a resumed run rewrites the rest).
fn read_metrics(path: &Path, up_to_step: usize) -> Result<Vec<MetricsLine>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(path)(e.to_string())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut kept = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<MetricsLine>(line) {
            Ok(m) if m.step <= up_to_step => kept.push(m),
            Ok(_) => {}
            // A crash can tear the last line; the resumed run writes it again.
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => return Err(file_error(path)(format!("line {}: {e}", i + 1))),
        }
    }
    Ok(kept)
}

fn rewrite_metrics(path: &Path, lines: &[MetricsLine]) -> Result<std::fs::File, TrainError> {
    let text: String = lines
        .iter()
        .map(|l| serde_json::to_string(l).expect("serialisable") + "\n")
        .collect();
    write_atomic(path, text.as_bytes()).map_err(|e| file_error(path)(e.to_string()))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| file_error(path)(e.to_string()))
}

/// Draws `loss.png` (and `accuracy.png` when the run measured accuracies).
fn write_plots(paths: &RunPaths, metrics: &[MetricsLine]) {
    let points = |pick: fn(&MetricsLine) -> (Option<f64>, Option<f64>)| -> Vec<LossPoint> {
        metrics
            .iter()
            .filter_map(|m| {
                let (train, val) = pick(m);
                train.map(|train| LossPoint {
                    epoch: m.epoch,
                    tokens_seen: m.tokens_seen,
                    train,
                    val,
                })
            })
            .collect()
    };
    let losses = points(|m| (m.eval_train_loss, m.val_loss));
    if let Err(e) = plot_losses(&paths.plot(), "Loss", &losses, "Loss") {
        tracing::warn!(error = %e, "could not draw the loss plot");
    }
    let accuracies = points(|m| (m.train_accuracy, m.val_accuracy));
    if !accuracies.is_empty()
        && let Err(e) = plot_losses(&paths.accuracy_plot(), "Accuracy", &accuracies, "Accuracy")
    {
        tracing::warn!(error = %e, "could not draw the accuracy plot");
    }
}

fn progress_bar(show: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(steps as u64),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} steps  {msg}  {per_sec}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}
