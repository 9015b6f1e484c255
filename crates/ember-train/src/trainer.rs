//! The pretraining loop of chapter 5 (`train_model_simple`) with appendix D's
//! additions, run-directory bookkeeping and exact resumption.
//!
//! A run directory holds:
//! - `config.toml`: the resolved configuration;
//! - `metrics.jsonl`: one line per optimizer step (`step`, `epoch`, `tokens_seen`,
//!   `lr`, `train_loss`, `tokens_per_sec`, `mfu`; on evaluation steps also
//!   `eval_train_loss` and `val_loss`);
//! - `samples.txt`: the text sample after each epoch;
//! - `loss.png`: training and validation loss against epochs and tokens seen;
//! - `checkpoints/step-N/` (model, optimizer and trainer state) and
//!   `checkpoints/latest` naming the newest complete one;
//! - `model/`: the final model as an Ember checkpoint (a Hugging Face GPT-2 directory).
//!
//! Resumption is exact: dropout is re-seeded from the step number, the shuffling order
//! is a function of the seed and the epoch, and checkpoints hold the optimizer's
//! moments and the parameter ids they are keyed by. A resumed run writes the same
//! metrics as an uninterrupted one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use ember_data::WindowSource;
use ember_model::weights::write_atomic;
use ember_model::{GenerationConfig, GptModel, generate, save_checkpoint};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::PretrainConfig;
use crate::data::{TrainData, epoch_batches, make_batch};
use crate::loss::cross_entropy;
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

fn file_error(path: &Path) -> impl Fn(String) -> TrainError + '_ {
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

/// The result of [`pretrain`].
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// Where the run stopped.
    pub state: TrainState,
    /// Why.
    pub stop: StopReason,
    /// Last evaluated training loss.
    pub train_loss: Option<f64>,
    /// Last evaluated validation loss.
    pub val_loss: Option<f64>,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// Options of [`pretrain`] that are not part of the run's configuration.
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
    /// `checkpoints/`
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// `model/`
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }
}

/// FLOPs of one training token: 6 per parameter (forward and backward) plus the
/// attention scores, 12 · layers · width · context (PaLM's appendix B).
pub fn flops_per_token(config: &ember_model::GptConfig) -> f64 {
    let attention = 12 * config.n_layers * config.emb_dim * config.context_length;
    (6 * config.num_params() + attention) as f64
}

/// Mean loss over the first `max_batches` batches of `source` in order (the book's
/// `calc_loss_loader`), without the autodiff graph.
pub fn evaluate_loss(
    model: &GptModel,
    source: &dyn WindowSource,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
) -> Option<f64> {
    let indices: Vec<usize> = (0..source.num_windows()).collect();
    let batches: Vec<&[usize]> = indices.chunks(batch_size).take(max_batches).collect();
    if batches.is_empty() {
        return None;
    }
    let total: f64 = batches
        .iter()
        .map(|batch| {
            let (inputs, targets) = make_batch(source, batch, device);
            cross_entropy(model.forward(inputs), targets).into_scalar::<f32>() as f64
        })
        .sum();
    Some(total / batches.len() as f64)
}

struct Checkpoint<'a> {
    paths: &'a RunPaths,
}

impl Checkpoint<'_> {
    fn save(
        &self,
        model: &GptModel,
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

    fn load(
        &self,
        model: GptModel,
        optim: ModuleOptimizer,
    ) -> Result<(GptModel, ModuleOptimizer, TrainState), TrainError> {
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
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<MetricsLine>(l).map_err(|e| file_error(path)(e.to_string()))
        })
        .filter(|m| m.as_ref().map_or(true, |m| m.step <= up_to_step))
        .collect()
}

/// Run (or resume) the pretraining described by `config` in `run_dir`.
pub fn pretrain(
    config: &PretrainConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions<'_>,
) -> Result<PretrainOutcome, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let paths = RunPaths {
        root: run_dir.to_path_buf(),
    };
    std::fs::create_dir_all(&paths.root).map_err(|e| file_error(&paths.root)(e.to_string()))?;
    let tokenizer = Gpt2Tokenizer::gpt2().map_err(|e| TrainError::Config(e.to_string()))?;
    let data = TrainData::load(config, &tokenizer)?;
    let t = &config.train;
    let micro_batches = data.train.num_windows() / t.batch_size;
    let steps_per_epoch = micro_batches / t.grad_accum_steps;
    if steps_per_epoch == 0 {
        return Err(TrainError::Data(format!(
            "{}: {} training windows of {} tokens make no full step of batch_size {} x grad_accum_steps {}; \
             use more text, a smaller batch or a shorter context",
            config.data.path.display(),
            data.train.num_windows(),
            config.model.context_length,
            t.batch_size,
            t.grad_accum_steps
        )));
    }
    let total_steps = t.max_steps.map_or(steps_per_epoch * t.epochs, |m| {
        m.min(steps_per_epoch * t.epochs)
    });
    let schedule = config.schedule(steps_per_epoch * t.epochs);

    let train_device = device.clone().autodiff();
    train_device.seed(t.seed);
    let mut model = config.model.init(&train_device);
    let mut optim = t.optimizer.init();
    let checkpoint = Checkpoint { paths: &paths };
    let mut state = TrainState::default();
    let mut metrics = Vec::new();
    if options.resume {
        let saved = std::fs::read_to_string(paths.config())
            .map_err(|e| file_error(&paths.config())(e.to_string()))?;
        let saved: PretrainConfig =
            toml::from_str(&saved).map_err(|e| file_error(&paths.config())(e.to_string()))?;
        if saved.model != config.model || saved.data != config.data {
            return Err(TrainError::Config(format!(
                "{}: the model or data settings differ from the run being resumed",
                paths.config().display()
            )));
        }
        (model, optim, state) = checkpoint.load(model, optim)?;
        metrics = read_metrics(&paths.metrics(), state.step)?;
        tracing::info!(step = state.step, epoch = state.epoch, "resuming");
    } else if paths.metrics().exists() || paths.checkpoints().exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            paths.root.display()
        )));
    }
    let config_text = toml::to_string_pretty(config).expect("serialisable");
    write_atomic(&paths.config(), config_text.as_bytes())
        .map_err(|e| file_error(&paths.config())(e.to_string()))?;
    let mut metrics_file = rewrite_metrics(&paths.metrics(), &metrics)?;

    let flops = flops_per_token(&config.model);
    let tokens_per_step = (t.batch_size * t.grad_accum_steps * config.model.context_length) as u64;
    let mut stop = StopReason::Finished;
    let mut last_tick = Instant::now();
    let mut tokens_since_tick = 0u64;
    'epochs: while state.epoch < t.epochs {
        let batches = epoch_batches(&*data.train, t.batch_size, t.shuffle, t.seed, state.epoch)?;
        let bar = progress_bar(options.progress, steps_per_epoch, state.epoch, t.epochs);
        bar.set_position((state.batch_in_epoch / t.grad_accum_steps) as u64);
        while state.batch_in_epoch + t.grad_accum_steps <= batches.len() {
            if state.step >= total_steps {
                stop = StopReason::MaxSteps;
                break 'epochs;
            }
            // Dropout masks depend only on the step, so a resumed run draws the same ones.
            train_device.seed(
                t.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(state.step as u64),
            );
            let lr = schedule.lr(state.step);
            let mut accumulator = GradientsAccumulator::<GptModel>::new();
            let mut step_loss = 0.0;
            for micro in 0..t.grad_accum_steps {
                let batch = &batches[state.batch_in_epoch + micro];
                let (inputs, targets) = make_batch(&*data.train, batch, &train_device);
                let loss =
                    cross_entropy(model.forward(inputs), targets) / t.grad_accum_steps as f64;
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
            let grad_norm = match t.grad_clip {
                Some(max_norm) => clip_grad_norm(&model, &mut grads, max_norm),
                None => crate::optim::grad_norm(&model, &mut grads),
            };
            model = optim.step(lr, model, grads);
            state.step += 1;
            state.batch_in_epoch += t.grad_accum_steps;
            state.tokens_seen += tokens_per_step;
            tokens_since_tick += tokens_per_step;

            let elapsed = last_tick.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_sec = tokens_since_tick as f64 / elapsed;
            last_tick = Instant::now();
            tokens_since_tick = 0;
            let mut line = MetricsLine {
                step: state.step,
                epoch: state.epoch as f64
                    + state.batch_in_epoch as f64 / (steps_per_epoch * t.grad_accum_steps) as f64,
                tokens_seen: state.tokens_seen,
                lr,
                train_loss: step_loss,
                grad_norm,
                tokens_per_sec,
                mfu: tokens_per_sec * flops / t.peak_flops,
                eval_train_loss: None,
                val_loss: None,
            };
            // The book evaluates after its first step and then every eval_freq steps.
            if (state.step - 1).is_multiple_of(t.eval_freq) {
                let valid = model.valid();
                line.eval_train_loss =
                    evaluate_loss(&valid, &*data.train, t.batch_size, t.eval_iter, device);
                line.val_loss =
                    evaluate_loss(&valid, &*data.val, t.batch_size, t.eval_iter, device);
                tracing::info!(
                    step = state.step,
                    train_loss = line.eval_train_loss,
                    val_loss = line.val_loss,
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
            if t.checkpoint_every > 0 && state.step.is_multiple_of(t.checkpoint_every) {
                checkpoint.save(&model, &optim, &state)?;
            }
            if options.interrupt.load(Ordering::SeqCst) {
                stop = StopReason::Interrupted;
                break 'epochs;
            }
        }
        bar.finish_and_clear();
        write_sample(&model, &tokenizer, config, &paths, &state, device)?;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        write_plot(&paths, &metrics);
    }
    if stop != StopReason::Finished {
        // The run ends mid-epoch: show where it got to.
        write_sample(&model, &tokenizer, config, &paths, &state, device)?;
    }
    checkpoint.save(&model, &optim, &state)?;
    let valid = model.valid();
    save_checkpoint(&valid, &paths.model())
        .map_err(|e| file_error(&paths.model())(e.to_string()))?;
    write_plot(&paths, &metrics);
    let last_eval = metrics
        .iter()
        .rev()
        .find(|m| m.val_loss.is_some() || m.eval_train_loss.is_some());
    Ok(PretrainOutcome {
        state,
        stop,
        train_loss: last_eval.and_then(|m| m.eval_train_loss),
        val_loss: last_eval.and_then(|m| m.val_loss),
        run_dir: paths.root.clone(),
    })
}

/// Appends the greedy continuation of the sample prompt to `samples.txt`.
fn write_sample(
    model: &GptModel,
    tokenizer: &Gpt2Tokenizer,
    config: &PretrainConfig,
    paths: &RunPaths,
    state: &TrainState,
    device: &Device,
) -> Result<(), TrainError> {
    let t = &config.train;
    let sample = sample_text(
        &model.valid(),
        tokenizer,
        &t.sample_prompt,
        t.sample_tokens,
        device,
    );
    tracing::info!(epoch = state.epoch + 1, step = state.step, sample = %sample, "sample");
    let line = format!(
        "epoch {} step {}: {}",
        state.epoch + 1,
        state.step,
        sample.replace('\n', " ")
    );
    append_line(&paths.samples(), &line)
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

fn append_line(path: &Path, line: &str) -> Result<(), TrainError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| file_error(path)(e.to_string()))?;
    writeln!(file, "{line}").map_err(|e| file_error(path)(e.to_string()))
}

fn write_plot(paths: &RunPaths, metrics: &[MetricsLine]) {
    let points: Vec<LossPoint> = metrics
        .iter()
        .filter_map(|m| {
            m.eval_train_loss.map(|train| LossPoint {
                epoch: m.epoch,
                tokens_seen: m.tokens_seen,
                train,
                val: m.val_loss,
            })
        })
        .collect();
    if let Err(e) = plot_losses(&paths.plot(), "Pretraining loss", &points, "Loss") {
        tracing::warn!(error = %e, "could not draw the loss plot");
    }
}

/// Greedy continuation of `prompt`, as the book prints after each epoch.
pub fn sample_text(
    model: &GptModel,
    tokenizer: &Gpt2Tokenizer,
    prompt: &str,
    tokens: usize,
    device: &Device,
) -> String {
    let Ok(ids) = tokenizer.encode(prompt, true) else {
        return String::new();
    };
    let config = GenerationConfig {
        max_new_tokens: tokens,
        ..Default::default()
    };
    match generate(model, &ids, &config, device, |_| {}) {
        Ok(new) => {
            let all: Vec<u32> = ids.into_iter().chain(new).collect();
            tokenizer.decode(&all).unwrap_or_default()
        }
        Err(_) => String::new(),
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
