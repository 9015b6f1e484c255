//! `ember finetune-instruct`: chapter 7's instruction fine-tuning, then the responses
//! to the test entries for the judge.

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::*;

use crate::args::run::{RunArgs, checked_base, interrupt_flag, override_base};

/// Options of `ember finetune-instruct`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstructArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Start from this model: a Hugging Face directory (GPT-2, Llama 3.x, Qwen3,
    /// Gemma 3), an Ember model, a pretraining run directory, a book .pth file, or a Hub
    /// repository id OWNER/NAME[@REVISION] that is no path here (from the Hugging Face
    /// cache).
    #[arg(long, conflicts_with = "from_scratch")]
    pub base: Option<PathBuf>,
    /// Start from random weights (the `model` section: tiny by default).
    #[arg(long)]
    pub from_scratch: bool,
    /// Leave the instruction and input out of the loss (exercise 7.2).
    #[arg(long)]
    pub mask_instruction: bool,
    /// Answer only the first N test entries (default: all).
    #[arg(long)]
    pub responses: Option<usize>,
    /// Train LoRA adapters of this rank instead of the whole model (merged into the
    /// saved model).
    #[arg(long)]
    pub lora: Option<usize>,
    /// The instruction data (JSON list of instruction/input/output).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `ember finetune-instruct`
pub fn run(args: InstructArgs, device: &Device) -> Result<()> {
    use ember_finetune::instruct_finetune::{InstructConfig, finetune_instruct};
    let (mut config, run_dir) = args
        .run
        .resolve(InstructConfig::book(), "runs/instruct", |c| {
            override_base(&mut c.base, args.base.as_ref(), args.from_scratch);
            if args.mask_instruction {
                c.mask_instruction = true;
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
        finetune_instruct(
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
        "after {} steps ({:.0} s): train loss {}, val loss {}; {} responses in {:.0} s",
        results.steps,
        results.train_seconds,
        crate::args::run::fmt_opt(results.train_loss),
        crate::args::run::fmt_opt(results.val_loss),
        results.responses,
        results.respond_seconds
    );
    println!(
        "responses: {} (score them with: ember judge --responses {})",
        results.responses_file.display(),
        results.responses_file.display()
    );
    println!(
        "run directory: {} (metrics.jsonl, loss.png, samples.txt, results.json, model/)",
        run_dir.display()
    );
    Ok(())
}
