//! `ember finetune-spam`: chapter 6's spam classifier (appendix E's LoRA).

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::*;
use ember_finetune::spam_finetune::{SpamConfig, finetune_spam};

use crate::args::run::{RunArgs, checked_base, interrupt_flag, override_base};

/// Options of `ember finetune-spam`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpamArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Start from this model: a Hugging Face GPT-2 directory, an Ember checkpoint, a
    /// pretraining run directory, a book .pth file, or a Hub repository id
    /// OWNER/NAME[@REVISION] that is no path here (from the Hugging Face cache).
    #[arg(long, conflicts_with = "from_scratch")]
    pub base: Option<PathBuf>,
    /// Start from random weights (the `model` section: tiny by default).
    #[arg(long)]
    pub from_scratch: bool,
    /// Train LoRA adapters of this rank instead of the last block (appendix E).
    #[arg(long)]
    pub lora: Option<usize>,
    /// What trains without LoRA: all, head, last-N (default last-1, the book's).
    #[arg(long)]
    pub trainable: Option<String>,
    /// The SMS Spam Collection file.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `ember finetune-spam`
pub fn run(args: SpamArgs, device: &Device) -> Result<()> {
    let (mut config, run_dir) = args.run.resolve(SpamConfig::book(), "runs/spam", |c| {
        override_base(&mut c.base, args.base.as_ref(), args.from_scratch);
        if let Some(rank) = args.lora {
            c.lora_rank = Some(rank);
        }
        if let Some(trainable) = &args.trainable {
            c.trainable = trainable.clone();
        }
        if let Some(data) = &args.data {
            c.data = data.clone();
        }
    })?;
    config.base = checked_base(config.base.take(), &args.run, args.from_scratch)?;
    let interrupt = interrupt_flag();
    let devices = args.run.devices()?;
    let device = devices.first().unwrap_or(device);
    let job = args.run.job()?;
    let results = job.finish(
        finetune_spam(
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
        "accuracy after {} steps ({:.0} s): train {:.2}%, validation {:.2}%, test {:.2}% ({} trainable parameters)",
        results.steps,
        results.seconds,
        100.0 * results.train_accuracy,
        100.0 * results.val_accuracy,
        100.0 * results.test_accuracy,
        results.trainable_params
    );
    println!(
        "run directory: {} (metrics.jsonl, loss.png, accuracy.png, results.json, model/)",
        run_dir.display()
    );
    Ok(())
}
