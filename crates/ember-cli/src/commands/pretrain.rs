//! `ember pretrain`: chapter 5's pretraining (and appendix D's), on a text file or
//! prepared shards.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use ember_train::{PretrainConfig, StopReason};

use crate::args::model::resolve_model;
use crate::args::run::{RunArgs, fmt_opt, interrupt_flag};

/// Options of `ember pretrain`.
#[derive(Debug, Clone, clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Run preset: book (chapter 5), tiny (minutes on a CPU), corpus (prepared shards).
    #[arg(long)]
    pub preset: Option<String>,
    /// Training text file or `ember prepare` shard directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Start from these weights (any model Ember loads, of the configured shape, or a
    /// Hub repository id OWNER/NAME[@REVISION] that is no path here) instead of drawing
    /// new ones.
    #[arg(long)]
    pub init: Option<PathBuf>,
}

/// `ember pretrain`
pub fn run(args: PretrainArgs, device: &Device) -> Result<()> {
    if args.run.resume.is_some() && args.preset.is_some() {
        bail!(
            "--resume continues the run with its own config.toml; leave out --preset (change what may change with --set)"
        );
    }
    let base = PretrainConfig::preset(args.preset.as_deref().unwrap_or("book"))?;
    let (mut config, run_dir) = args.run.resolve(base, "runs/pretrain", |c| {
        if let Some(data) = &args.data {
            c.data.path = data.clone();
        }
        if let Some(init) = &args.init {
            c.init = Some(init.clone());
        }
    })?;
    // A Hub repository id becomes its snapshot in the Hugging Face cache, the path the
    // run's config.toml records.
    config.init = config.init.as_deref().map(resolve_model).transpose()?;
    let interrupt = interrupt_flag();
    tracing::info!(
        run_dir = %run_dir.display(),
        params = config.model.num_params(),
        data = %config.data.path.display(),
        "pretraining"
    );
    let devices = args.run.devices()?;
    let device = devices.first().unwrap_or(device);
    let job = args.run.job()?;
    let outcome = job.finish(
        ember_train::pretrain(
            &config,
            &run_dir,
            device,
            args.run.options(&interrupt, &devices, &job),
        )
        .map_err(anyhow::Error::from),
    )?;
    // Rank 0 of a data-parallel job reports for all.
    if !job.reports() {
        return Ok(());
    }
    println!(
        "{} after {} steps ({} tokens): train loss {}, val loss {}",
        match outcome.stop {
            StopReason::Finished => "finished",
            StopReason::MaxSteps | StopReason::Interrupted => "stopped at --max-steps",
        },
        outcome.state.step,
        outcome.state.tokens_seen,
        fmt_opt(outcome.train_loss),
        fmt_opt(outcome.val_loss),
    );
    println!(
        "run directory: {} (metrics.jsonl, loss.png, samples.txt, model/, checkpoints/)",
        outcome.run_dir.display()
    );
    Ok(())
}
