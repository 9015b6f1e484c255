//! `ember finetune-dpo`: the chapter 7 bonus, DPO on preference pairs against a frozen
//! copy of the base model.

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::*;

use crate::args::run::{RunArgs, checked_base, interrupt_flag, override_base};

/// Options of `ember finetune-dpo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DpoArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Start from this model, ideally instruction-tuned (an `ember finetune-instruct`
    /// run directory, a Hugging Face directory, a Hub repository id
    /// OWNER/NAME[@REVISION] that is no path here); it is also the frozen reference.
    #[arg(long, conflicts_with = "from_scratch")]
    pub base: Option<PathBuf>,
    /// Start from random weights (the `model` section: tiny by default).
    #[arg(long)]
    pub from_scratch: bool,
    /// How far the policy may move from the reference (default 0.1).
    #[arg(long)]
    pub beta: Option<f64>,
    /// Answer only the first N test entries, before and after (default: all).
    #[arg(long)]
    pub responses: Option<usize>,
    /// Train LoRA adapters of this rank instead of the whole model (merged into the
    /// saved model).
    #[arg(long)]
    pub lora: Option<usize>,
    /// The preference data (JSON list of instruction/input/output/chosen/rejected).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `ember finetune-dpo`
pub fn run(args: DpoArgs, device: &Device) -> Result<()> {
    use ember_finetune::dpo::PreferenceStats;
    use ember_finetune::dpo_finetune::{DpoConfig, finetune_dpo};
    let (mut config, run_dir) = args.run.resolve(DpoConfig::notebook(), "runs/dpo", |c| {
        override_base(&mut c.base, args.base.as_ref(), args.from_scratch);
        if let Some(beta) = args.beta {
            c.beta = beta;
        }
        if let Some(n) = args.responses {
            c.responses = Some(n);
        }
        if let Some(rank) = args.lora {
            c.lora_rank = Some(rank);
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
        finetune_dpo(
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
    let line = |name: &str, before: &PreferenceStats, after: &PreferenceStats| {
        println!(
            "{name}: preference accuracy {:.1}% -> {:.1}%, reward accuracy {:.1}%, reward margin {:.4}, DPO loss {:.4} -> {:.4}",
            100.0 * before.logprob_accuracy,
            100.0 * after.logprob_accuracy,
            100.0 * after.reward_accuracy,
            after.reward_margin,
            before.loss,
            after.loss
        );
    };
    println!(
        "after {} steps ({:.0} s):",
        results.steps, results.train_seconds
    );
    line(
        "validation",
        &results.before.validation,
        &results.after.validation,
    );
    line("test", &results.before.test, &results.after.test);
    println!(
        "responses before and after: {} and {} (score each with ember judge --responses FILE)",
        results.responses_before.display(),
        results.responses_after.display()
    );
    println!(
        "run directory: {} (metrics.jsonl, loss.png, accuracy.png, samples.txt, results.json, model/)",
        run_dir.display()
    );
    Ok(())
}
