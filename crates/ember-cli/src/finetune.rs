//! `ember finetune-spam`, `ember classify`, `ember finetune-instruct`, `ember finetune-dpo`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use ember_finetune::spam_finetune::{SpamConfig, classify_text, finetune_spam, load_classifier};

use crate::model_arg::resolve_model;
use crate::runs::{RunArgs, interrupt_flag};

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

/// A new run says where it starts: a base model (flag, `--config` or `--set base=...`)
/// or `--from-scratch`.
fn require_base(has_base: bool, run: &RunArgs, from_scratch: bool) -> Result<()> {
    if run.resume.is_none() && !has_base && !from_scratch {
        bail!(
            "pass --base MODEL (a GPT-2 directory, a checkpoint or a pretraining run) or --from-scratch"
        );
    }
    Ok(())
}

/// The base model's local path: a Hub repository id (from `--base`, `--config` or
/// `--set base=...`) becomes its snapshot in the Hugging Face cache before the run
/// starts, so the run's config.toml names the files it started from.
fn resolve_base(base: Option<&std::path::Path>) -> Result<Option<PathBuf>> {
    base.map(resolve_model).transpose()
}

/// `ember finetune-spam`
pub fn spam(args: SpamArgs, device: &Device) -> Result<()> {
    let (mut config, run_dir) = args.run.resolve(SpamConfig::book(), "runs/spam", |c| {
        if let Some(base) = &args.base {
            c.base = Some(base.clone());
        }
        if args.from_scratch {
            c.base = None;
        }
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
    require_base(config.base.is_some(), &args.run, args.from_scratch)?;
    config.base = resolve_base(config.base.as_deref())?;
    let interrupt = interrupt_flag();
    let devices = args.run.devices()?;
    let device = devices.first().unwrap_or(device);
    let results = finetune_spam(
        &config,
        &run_dir,
        device,
        args.run.options(&interrupt, &devices),
    )?;
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

/// `ember classify`: the label and the class probabilities of `text`.
pub fn classify(model: &std::path::Path, text: &str, json: bool, device: &Device) -> Result<()> {
    if text.trim().is_empty() {
        bail!("the text to classify is empty");
    }
    let (classifier, info, tokenizer) = load_classifier(model, device)?;
    let probs = classify_text(&classifier, &info, &tokenizer, text, device)?;
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    if json {
        let map: serde_json::Map<String, serde_json::Value> = info
            .labels
            .iter()
            .zip(&probs)
            .map(|(l, p)| (l.clone(), serde_json::json!(p)))
            .collect();
        println!(
            "{}",
            serde_json::json!({"label": info.labels[best], "probabilities": map})
        );
    } else {
        let detail: Vec<String> = info
            .labels
            .iter()
            .zip(&probs)
            .map(|(l, p)| format!("{l} {p:.4}"))
            .collect();
        println!("{} ({})", info.labels[best], detail.join(", "));
    }
    Ok(())
}

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
pub fn instruct(args: InstructArgs, device: &Device) -> Result<()> {
    use ember_finetune::instruct_finetune::{InstructConfig, finetune_instruct};
    let (mut config, run_dir) = args
        .run
        .resolve(InstructConfig::book(), "runs/instruct", |c| {
            if let Some(base) = &args.base {
                c.base = Some(base.clone());
            }
            if args.from_scratch {
                c.base = None;
            }
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
    require_base(config.base.is_some(), &args.run, args.from_scratch)?;
    config.base = resolve_base(config.base.as_deref())?;
    let interrupt = interrupt_flag();
    let devices = args.run.devices()?;
    let device = devices.first().unwrap_or(device);
    let results = finetune_instruct(
        &config,
        &run_dir,
        device,
        args.run.options(&interrupt, &devices),
    )?;
    println!(
        "after {} steps ({:.0} s): train loss {}, val loss {}; {} responses in {:.0} s",
        results.steps,
        results.train_seconds,
        crate::runs::fmt_opt(results.train_loss),
        crate::runs::fmt_opt(results.val_loss),
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
pub fn dpo(args: DpoArgs, device: &Device) -> Result<()> {
    use ember_finetune::dpo::PreferenceStats;
    use ember_finetune::dpo_finetune::{DpoConfig, finetune_dpo};
    let (mut config, run_dir) = args.run.resolve(DpoConfig::notebook(), "runs/dpo", |c| {
        if let Some(base) = &args.base {
            c.base = Some(base.clone());
        }
        if args.from_scratch {
            c.base = None;
        }
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
    require_base(config.base.is_some(), &args.run, args.from_scratch)?;
    config.base = resolve_base(config.base.as_deref())?;
    let interrupt = interrupt_flag();
    let devices = args.run.devices()?;
    let device = devices.first().unwrap_or(device);
    let results = finetune_dpo(
        &config,
        &run_dir,
        device,
        args.run.options(&interrupt, &devices),
    )?;
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
