//! The training loop every chapter shares.
//!
//! [`train_step`] is one optimizer step (forward, backward and gradient accumulation
//! over the micro-batches, global-norm clipping, AdamW); [`fit`] runs steps epoch after
//! epoch and around them the hooks of a run: evaluation, epoch reports, metrics,
//! plots, progress, checkpoints, interruption and exact resumption. What a chapter
//! trains is a [`TrainTask`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ember_data::EpochPlan;

use crate::checkpoint::{Checkpoints, TrainState};
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::{MetricsLine, MetricsLog};
use crate::optim::{clip_grad_norm, grad_norm};
#[cfg(feature = "plot")]
use crate::plot::write_plots;
use crate::run_dir::{Report, RunDir, RunMode};
use crate::task::{Evaluation, TrainTask};

/// Options of a run that are not part of its configuration.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    /// New run, resume, or start over.
    pub mode: RunMode,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Raised (by Ctrl-C or SIGTERM) to stop after the current step with a checkpoint.
    pub interrupt: &'a AtomicBool,
    /// Devices for data-parallel training, the run's own device first: each batch is
    /// split across them (empty or one: the run's device alone).
    pub devices: &'a [Device],
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every epoch ran.
    Finished,
    /// `max_steps` was reached.
    MaxSteps,
    /// The interrupt flag was raised; a checkpoint was written.
    Interrupted,
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
                extra: m.extra.clone(),
            })
            .unwrap_or_default()
    }
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Loss of the step's batch (mean over its micro-batches).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens the step consumed.
    pub tokens: u64,
}

/// One optimizer step: the loss of each micro-batch (`rows` of the task's examples),
/// scaled by the number of micro-batches, backward, gradients summed; then the global
/// gradient norm, clipping to `grad_clip`, and the optimizer at rate `lr`.
///
/// With `replicas` (autodiff devices, `device` first), each micro-batch is split into
/// as many equal parts: the model on `device` and a copy on each other device compute
/// their part's loss, weighted by its share of [`TrainTask::loss_weight`], and its
/// gradients, which are moved to `device` and summed there (as burn-train's
/// multi-device strategy does); the one optimizer step then updates the model, whose
/// next copies carry the new weights to every device.
///
/// `step` (1-based) only names the step when the loss is not finite.
#[allow(clippy::too_many_arguments)]
pub fn train_step<T: TrainTask>(
    task: &T,
    model: T::Model,
    optimizer: &mut ModuleOptimizer,
    micro_batches: &[Vec<usize>],
    lr: f64,
    grad_clip: Option<f64>,
    device: &Device,
    replicas: &[Device],
    step: usize,
) -> Result<(T::Model, StepOutcome), TrainError> {
    let mut accumulator = GradientsAccumulator::<T::Model>::new();
    let mut tokens = 0;
    // Read once every backward pass is queued: reading a loss waits for its device.
    let mut losses = Vec::new();
    for rows in micro_batches {
        tokens += task.batch_tokens(rows);
        if replicas.len() <= 1 {
            let loss = task.batch_loss(&model, rows, device)? / micro_batches.len() as f64;
            losses.push(loss.clone());
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            continue;
        }
        let whole = task.loss_weight(rows);
        let parts = rows.chunks(rows.len().div_ceil(replicas.len()));
        for (i, (part, replica)) in parts.zip(replicas).enumerate() {
            let share = task.loss_weight(part) / whole / micro_batches.len() as f64;
            if i == 0 {
                // The first device holds the model itself. Its forward pass also
                // draws a new model's lazily initialised weights, in the order and
                // from the random state of a one-device run; the copies then take
                // them as drawn.
                let loss = task.batch_loss(&model, part, device)? * share;
                losses.push(loss.clone());
                accumulator
                    .accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
                continue;
            }
            let copy = model.clone().fork(replica);
            let loss = task.batch_loss(&copy, part, replica)? * share;
            losses.push(loss.clone());
            let grads =
                GradientsParams::from_grads(loss.backward(), &copy).to_device(device, &model);
            accumulator.accumulate(&model, grads);
        }
    }
    let mut loss_sum = 0.0;
    for loss in losses {
        let value: f32 = loss.into_scalar();
        if !value.is_finite() {
            return Err(TrainError::Diverged { step, loss: value });
        }
        loss_sum += value as f64;
    }
    let mut grads = accumulator.grads();
    let norm = match grad_clip {
        Some(max_norm) => clip_grad_norm(&model, &mut grads, max_norm),
        None => grad_norm(&model, &mut grads),
    };
    let model = optimizer.step(lr, model, grads);
    Ok((
        model,
        StepOutcome {
            loss: loss_sum,
            grad_norm: norm,
            tokens,
        },
    ))
}

/// Trains `model` (on `train_device`, an autodiff device) on `task` as `train`
/// describes, writing metrics, reports, plots and checkpoints into `dir`; with
/// `options.devices`, data-parallel across them (see [`train_step`]).
///
/// Resumption is exact: the batches of an epoch are a function of the seed and the
/// epoch ([`EpochPlan`]), dropout is re-seeded from the step, and checkpoints hold the
/// optimizer's moments and the parameter ids they are keyed by; with
/// [`RunMode::Resume`] the model, optimizer and position come from the newest good
/// checkpoint and the metrics and reports after it are written again.
pub fn fit<T: TrainTask>(
    task: &T,
    mut model: T::Model,
    train: &TrainConfig,
    dir: &RunDir,
    train_device: &Device,
    options: &RunOptions<'_>,
) -> Result<FitOutcome<T::Model>, TrainError> {
    let eval_device = train_device.clone().inner();
    let replicas: Vec<Device> = match options.devices {
        [] | [_] => Vec::new(),
        devices => devices.iter().map(|d| d.clone().autodiff()).collect(),
    };
    let plan = EpochPlan::new(train.batch_size, train.shuffle, train.seed, true)
        .map_err(|e| TrainError::data("train.batch_size", e))?;
    let examples = task.num_examples();
    let micro_batches = plan.num_batches(examples);
    let steps_per_epoch = micro_batches / train.grad_accum_steps;
    if steps_per_epoch == 0 {
        return Err(TrainError::TooLittleData(format!(
            "{examples} training examples make no full step of batch_size {} x grad_accum_steps {}",
            train.batch_size, train.grad_accum_steps
        )));
    }
    let total_steps = train.max_steps.map_or(steps_per_epoch * train.epochs, |m| {
        m.min(steps_per_epoch * train.epochs)
    });
    let schedule = train.schedule(steps_per_epoch * train.epochs);
    let mut optimizer = train.optimizer.init();
    let checkpoints = Checkpoints::new(dir.checkpoints());
    let (mut state, mut metrics, mut log) = if options.mode == RunMode::Resume {
        let restored = checkpoints.load(model, optimizer, dir.root())?;
        (model, optimizer) = (restored.model, restored.optimizer);
        let (log, metrics) = MetricsLog::resume(&dir.metrics(), restored.state.step)?;
        dir.rewind_reports(restored.state.step)?;
        tracing::info!(
            step = restored.state.step,
            epoch = restored.state.epoch,
            "resuming"
        );
        (restored.state, metrics, log)
    } else {
        dir.write_reports(&[])?;
        (
            TrainState::default(),
            Vec::new(),
            MetricsLog::create(&dir.metrics())?,
        )
    };

    let flops = task.flops_per_token();
    let mut stop = StopReason::Finished;
    let mut last_tick = Instant::now();
    'epochs: while state.epoch < train.epochs {
        let batches = plan.batches(examples, state.epoch as u64);
        let bar = ember_data::progress::bar(
            options.progress,
            Some(steps_per_epoch as u64),
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} steps  {msg}  {per_sec}  ETA {eta}",
        );
        bar.set_prefix(format!("epoch {}/{}", state.epoch + 1, train.epochs));
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
            let micro =
                &batches[state.batch_in_epoch..state.batch_in_epoch + train.grad_accum_steps];
            let outcome;
            let autocast = ember_kernels::autocast(train.precision);
            (model, outcome) = train_step(
                task,
                model,
                &mut optimizer,
                micro,
                lr,
                train.grad_clip,
                train_device,
                &replicas,
                state.step + 1,
            )?;
            drop(autocast);
            state.step += 1;
            state.batch_in_epoch += train.grad_accum_steps;
            state.tokens_seen = state.tokens_seen.saturating_add(outcome.tokens);

            let tokens_per_sec =
                outcome.tokens as f64 / last_tick.elapsed().as_secs_f64().max(1e-9);
            let mut line = MetricsLine {
                step: state.step,
                epoch: state.epoch as f64
                    + state.batch_in_epoch as f64
                        / (steps_per_epoch * train.grad_accum_steps) as f64,
                tokens_seen: state.tokens_seen,
                lr,
                train_loss: outcome.loss,
                grad_norm: outcome.grad_norm,
                tokens_per_sec,
                mfu: tokens_per_sec * flops / train.peak_flops,
                eval_train_loss: None,
                val_loss: None,
                train_accuracy: None,
                val_accuracy: None,
                extra: Default::default(),
            };
            // The book evaluates after its first step and then every eval_freq steps.
            if (state.step - 1).is_multiple_of(train.eval_freq) {
                let eval = {
                    let _autocast = ember_kernels::autocast(train.precision);
                    task.evaluate(&model.valid(), &eval_device)?
                };
                tracing::info!(
                    step = state.step,
                    train_loss = eval.train_loss,
                    val_loss = eval.val_loss,
                    train_accuracy = eval.train_accuracy,
                    val_accuracy = eval.val_accuracy,
                    tokens_seen = state.tokens_seen,
                    "evaluation"
                );
                line.eval_train_loss = eval.train_loss;
                line.val_loss = eval.val_loss;
                line.train_accuracy = eval.train_accuracy;
                line.val_accuracy = eval.val_accuracy;
                line.extra = eval.extra;
            }
            bar.set_message(format!(
                "loss {:.3}  lr {lr:.2e}  {tokens_per_sec:.0} tok/s",
                outcome.loss
            ));
            bar.inc(1);
            log.append(&line)?;
            metrics.push(line);
            if train.checkpoint_every > 0 && state.step.is_multiple_of(train.checkpoint_every) {
                checkpoints.save(&model, &optimizer, &state)?;
            }
            if options.interrupt.load(Ordering::SeqCst) {
                stop = StopReason::Interrupted;
                break 'epochs;
            }
            // Evaluation and checkpoints do not count against the throughput.
            last_tick = Instant::now();
        }
        bar.finish_and_clear();
        report(task, &model, dir, &state, &eval_device, false)?;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        #[cfg(feature = "plot")]
        write_plots(dir, &metrics);
    }
    // A run that ends mid-epoch shows where it got to (unless it stopped right after
    // an epoch's report).
    if stop == StopReason::Interrupted || (stop == StopReason::MaxSteps && state.batch_in_epoch > 0)
    {
        report(task, &model, dir, &state, &eval_device, true)?;
    }
    checkpoints.save(&model, &optimizer, &state)?;
    #[cfg(feature = "plot")]
    write_plots(dir, &metrics);
    Ok(FitOutcome {
        model,
        state,
        stop,
        metrics,
    })
}

/// Adds the task's report for the current position to the run's reports.
fn report<T: TrainTask>(
    task: &T,
    model: &T::Model,
    dir: &RunDir,
    state: &TrainState,
    device: &Device,
    stopped: bool,
) -> Result<(), TrainError> {
    if let Some(text) = task.epoch_report(&model.valid(), device) {
        tracing::info!(epoch = state.epoch + 1, step = state.step, report = %text, "epoch");
        dir.append_report(Report {
            step: state.step,
            epoch: state.epoch + 1,
            stopped,
            text: text.replace('\n', " "),
        })?;
    }
    Ok(())
}
