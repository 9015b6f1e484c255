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
use ember_kernels::with_dropout_keys;

use crate::checkpoint::{Checkpoints, TrainState};
use crate::collective::{Collective, any_rank, rank_rows, reduce_gradients};
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::{MetricsLine, MetricsLog};
use crate::optim::{clip_grad_norm, grad_norm};
#[cfg(feature = "plot")]
use crate::plot::write_plots;
use crate::run_dir::{Report, RunDir, RunMode};
use crate::shard::{Owners, merge_states, state_by_position};
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
    /// The processes of a data-parallel job, when there are several: each batch is
    /// split across them too (see [`train_step`]), and rank 0 alone writes the run.
    pub collective: Option<&'a dyn Collective>,
}

impl RunOptions<'_> {
    /// Whether this process writes the run directory: a run of one process, or rank 0
    /// of several.
    pub fn writes(&self) -> bool {
        self.collective.is_none_or(|c| c.rank() == 0)
    }
}

/// How a step is spread beyond one device: over devices of this process, over the ranks
/// of a job, with the optimizer's state sharded over the ranks.
#[derive(Clone, Copy, Default)]
pub struct Parallel<'a> {
    /// Autodiff devices, the step's own first (none or one: that device alone).
    pub replicas: &'a [Device],
    /// The ranks of a data-parallel job.
    pub collective: Option<&'a dyn Collective>,
    /// Each rank keeps the optimizer's state of its parameters only.
    pub shard_optimizer: bool,
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
    /// Seconds spent summing the gradients over the ranks (none without ranks).
    pub exchange_seconds: Option<f64>,
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
/// next copies carry the new weights to every device. The copies' forward and backward
/// passes run on threads of their own, beside the first device's backward pass, in the
/// caller's product precision; their gradients are summed in device order, so the
/// result does not depend on which thread finishes first.
///
/// With a `collective` of several processes, this process takes its rank's part of
/// each micro-batch first ([`rank_rows`]; its replicas then split that part), weighted
/// by its share of the whole micro-batch, and the gradients and the loss are summed
/// over the ranks ([`reduce_gradients`]) before clipping and the optimizer, so every
/// rank takes the same step.
///
/// Dropout masks come from `seed`, one sequence per micro-batch, keyed by each
/// example's row in its micro-batch ([`ember_kernels::with_dropout_keys`]): a
/// micro-batch split across devices or ranks draws the masks of the whole, so data
/// parallelism with dropout on is one device's training too.
///
/// With `parallel.shard_optimizer` and several ranks, each rank steps the optimizer on
/// the parameters it owns and the new weights are shared ([`crate::shard`]).
///
/// `step` (1-based) names the step in errors and exchanges.
#[allow(clippy::too_many_arguments)]
pub fn train_step<T: TrainTask>(
    task: &T,
    model: T::Model,
    optimizer: &mut ModuleOptimizer,
    micro_batches: &[Vec<usize>],
    lr: f64,
    grad_clip: Option<f64>,
    device: &Device,
    parallel: &Parallel<'_>,
    seed: u64,
    step: usize,
) -> Result<(T::Model, StepOutcome), TrainError> {
    let replicas = parallel.replicas;
    let collective = parallel.collective.filter(|c| c.size() > 1);
    let mut accumulator = GradientsAccumulator::<T::Model>::new();
    let mut tokens = 0;
    // Read once every backward pass is queued: reading a loss waits for its device.
    let mut losses = Vec::new();
    for (index, rows) in micro_batches.iter().enumerate() {
        tokens += task.batch_tokens(rows);
        let masks = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // The loss of `part`, rows `first..` of the micro-batch, on `device`.
        let part_loss = |model: &T::Model, part: &[usize], first: usize, device: &Device| {
            with_dropout_keys(masks, first, || task.batch_loss(model, part, device))
        };
        if replicas.len() <= 1 && collective.is_none() {
            let loss = part_loss(&model, rows, 0, device)? / micro_batches.len() as f64;
            losses.push(loss.clone());
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            continue;
        }
        let whole = task.loss_weight(rows);
        let (mine, first) = rank_rows(rows, collective);
        let size = mine.len().div_ceil(replicas.len().max(1)).max(1);
        // Each part with its first row in the whole micro-batch and its loss's share.
        let parts: Vec<(&[usize], usize, f64)> = mine
            .chunks(size)
            .enumerate()
            .map(|(i, part)| {
                let share = task.loss_weight(part) / whole / micro_batches.len() as f64;
                (part, first + i * size, share)
            })
            .collect();
        // The first device holds the model itself. Its forward pass also draws a new
        // model's lazily initialised weights, in the order and from the random state
        // of a one-device run; the copies, made after it, take them as drawn.
        let (part, at, share) = parts[0];
        let loss = part_loss(&model, part, at, device)? * share;
        losses.push(loss.clone());
        // (Under ranks without `--devices` there is one part and no replica list.)
        let others_at = replicas.iter().skip(1).take(parts.len() - 1);
        let copies: Vec<(T::Model, &Device)> = others_at
            .map(|replica| (model.clone().fork(replica), replica))
            .collect();
        // The other replicas' forward and backward passes run on threads of their
        // own while this one runs the first device's backward pass; the thread-local
        // precision of the products goes with them (dropout keys are set inside
        // `part_loss`). Their gradients are then moved and summed in device order, so
        // the sums are those of one replica after another.
        let precision = ember_kernels::autocast::current_precision();
        let others = std::thread::scope(|scope| {
            let workers: Vec<_> = copies
                .into_iter()
                .zip(&parts[1..])
                .map(|((copy, replica), &(part, at, share))| {
                    let part_loss = &part_loss;
                    scope.spawn(move || {
                        let _precision = ember_kernels::autocast(precision);
                        let loss = part_loss(&copy, part, at, replica)? * share;
                        let grads = GradientsParams::from_grads(loss.backward(), &copy);
                        Ok::<_, TrainError>((loss, grads))
                    })
                })
                .collect();
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Vec<_>>()
        });
        for other in others {
            let (loss, grads) = other?;
            losses.push(loss);
            accumulator.accumulate(&model, grads.to_device(device, &model));
        }
    }
    let mut loss_sum = 0.0;
    for loss in losses {
        let value: f32 = loss.into_scalar();
        loss_sum += value as f64;
    }
    let mut grads = accumulator.grads();
    let mut exchange_seconds = None;
    if let Some(collective) = collective {
        let started = Instant::now();
        let mut loss = [loss_sum as f32];
        let what = format!("the gradients of step {step}");
        reduce_gradients(&model, &mut grads, &mut loss, collective, &what)?;
        loss_sum = loss[0] as f64;
        exchange_seconds = Some(started.elapsed().as_secs_f64());
    }
    if !loss_sum.is_finite() {
        return Err(TrainError::Diverged {
            step,
            loss: loss_sum as f32,
        });
    }
    let norm = match grad_clip {
        Some(max_norm) => clip_grad_norm(&model, &mut grads, max_norm),
        None => grad_norm(&model, &mut grads),
    };
    let owners = collective
        .filter(|_| parallel.shard_optimizer)
        .map(|c| (Owners::new(&model, c), c));
    if let Some((owners, _)) = &owners {
        owners.keep_own(&model, &mut grads);
    }
    let mut model = optimizer.step(lr, model, grads);
    if let Some((owners, collective)) = &owners {
        let what = format!("the weights of step {step}");
        model = owners.share_weights(model, *collective, &what)?;
    }
    Ok((
        model,
        StepOutcome {
            loss: loss_sum,
            grad_norm: norm,
            tokens,
            exchange_seconds,
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
    // Every rank of a data-parallel job trains; rank 0 alone evaluates and writes.
    let collective = options.collective.filter(|c| c.size() > 1);
    let writes = options.writes();
    let parallel = Parallel {
        replicas: &replicas,
        collective,
        shard_optimizer: train.shard_optimizer,
    };
    let sharded = collective.filter(|_| train.shard_optimizer);
    let (mut state, mut metrics, mut log) = if options.mode == RunMode::Resume {
        // Every rank reads the same newest good checkpoint; none is written before
        // every rank has read it (the first one comes after a step's exchange).
        let restored = checkpoints.load(model, optimizer, dir.root())?;
        (model, optimizer) = (restored.model, restored.optimizer);
        if let Some(collective) = sharded {
            // The checkpoint holds every parameter's state; this rank keeps its own.
            optimizer = Owners::new(&model, collective).retain_own(optimizer)?;
        }
        let (log, metrics) = if writes {
            let (log, metrics) = MetricsLog::resume(&dir.metrics(), restored.state.step)?;
            dir.rewind_reports(restored.state.step)?;
            (Some(log), metrics)
        } else {
            (None, Vec::new())
        };
        tracing::info!(
            step = restored.state.step,
            epoch = restored.state.epoch,
            "resuming"
        );
        (restored.state, metrics, log)
    } else if writes {
        dir.write_reports(&[])?;
        (
            TrainState::default(),
            Vec::new(),
            Some(MetricsLog::create(&dir.metrics())?),
        )
    } else {
        (TrainState::default(), Vec::new(), None)
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
            // Random draws depend only on the step, so a resumed run draws the same ones
            // (a new model's lazily drawn weights from the device's generator, the
            // dropout masks from the step's seed).
            let step_seed = train
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(state.step as u64);
            train_device.seed(step_seed);
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
                &parallel,
                step_seed,
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
                exchange_s: outcome.exchange_seconds,
                eval_train_loss: None,
                val_loss: None,
                train_accuracy: None,
                val_accuracy: None,
                extra: Default::default(),
            };
            // The book evaluates after its first step and then every eval_freq steps.
            if writes && (state.step - 1).is_multiple_of(train.eval_freq) {
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
            if let Some(log) = &mut log {
                log.append(&line)?;
                metrics.push(line);
            }
            if train.checkpoint_every > 0 && state.step.is_multiple_of(train.checkpoint_every) {
                save(&checkpoints, &model, &optimizer, &state, writes, sharded)?;
            }
            let mut interrupted = options.interrupt.load(Ordering::SeqCst);
            if let Some(collective) = collective {
                // Ranks see a signal at different moments; all stop after the same step.
                let what = format!("the interrupt check of step {}", state.step);
                interrupted = any_rank(interrupted, collective, &what)?;
            }
            if interrupted {
                stop = StopReason::Interrupted;
                break 'epochs;
            }
            // Evaluation and checkpoints do not count against the throughput.
            last_tick = Instant::now();
        }
        bar.finish_and_clear();
        if writes {
            report(task, &model, dir, &state, &eval_device, false)?;
            #[cfg(feature = "plot")]
            write_plots(dir, &metrics);
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
    }
    // A run that ends mid-epoch shows where it got to (unless it stopped right after
    // an epoch's report).
    if writes
        && (stop == StopReason::Interrupted
            || (stop == StopReason::MaxSteps && state.batch_in_epoch > 0))
    {
        report(task, &model, dir, &state, &eval_device, true)?;
    }
    save(&checkpoints, &model, &optimizer, &state, writes, sharded)?;
    if !writes {
        return Ok(FitOutcome {
            model,
            state,
            stop,
            metrics,
        });
    }
    #[cfg(feature = "plot")]
    write_plots(dir, &metrics);
    Ok(FitOutcome {
        model,
        state,
        stop,
        metrics,
    })
}

/// Writes a checkpoint (if this process `writes`); with the optimizer `sharded` over
/// ranks, every rank sends its state to rank 0 first, which writes the whole.
fn save<M: Module>(
    checkpoints: &Checkpoints,
    model: &M,
    optimizer: &ModuleOptimizer,
    state: &TrainState,
    writes: bool,
    sharded: Option<&dyn Collective>,
) -> Result<(), TrainError> {
    let Some(collective) = sharded else {
        return match writes {
            true => checkpoints.save(model, optimizer, state),
            false => Ok(()),
        };
    };
    let mine = state_by_position(model, optimizer)?;
    let what = format!("the optimizer state of step {}", state.step);
    let parts = collective.gather_to_root(&mine, &what)?;
    if writes {
        checkpoints.save_serialized(model, &merge_states(model, parts)?, state)?;
    }
    Ok(())
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
