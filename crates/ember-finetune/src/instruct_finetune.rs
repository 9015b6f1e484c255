//! Chapter 7 end to end: instruction fine-tuning through ember-train's loop, then a
//! response for every test entry.
//!
//! A run directory holds what a pretraining run holds (`config.toml`,
//! `metrics.jsonl`, `loss.png`, `samples.txt` with the response to the first
//! validation entry after each epoch, `checkpoints/`, `model/`) plus
//! `instruction-data-with-response.json` (the test entries with `model_response`, the
//! book's file, ready for `ember judge`) and `results.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use ember_model::{GenerationConfig, GptConfig, GptModel, generate, save_checkpoint};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use ember_train::{
    Evaluation, RunConfig, RunOptions, RunPaths, StopReason, TrainConfig, TrainTask, cross_entropy,
    fit,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::instruct::{
    END_OF_TEXT_ID, InstructionEntry, book_split, collate, format_example, format_input,
    read_instruction_data,
};
use crate::spam_finetune::{FinetuneError, base_model};

/// Configuration of an instruction fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructConfig {
    /// JSON list of `{instruction, input, output}` entries, split 85/10/5 in order.
    pub data: PathBuf,
    /// The model to start from (as for `ember finetune-spam`); unset: a randomly
    /// initialised `model`.
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// Architecture of a from-scratch run (and of a `.pth` base).
    pub model: GptConfig,
    /// Dropout while fine-tuning (the book: 0).
    pub drop_rate: f64,
    /// Truncate collated batches to this many tokens (the book: 1024), capped at the
    /// model's context length.
    pub allowed_max_length: usize,
    /// Leave the instruction and input out of the loss (exercise 7.2).
    pub mask_instruction: bool,
    /// Tokens per generated response at most (the book: 256).
    pub max_new_tokens: usize,
    /// Answer only the first N test entries (unset: all 110).
    #[serde(default)]
    pub responses: Option<usize>,
    /// Optimisation (the book: AdamW 5e-5, weight decay 0.1, 2 epochs, batch 8).
    pub train: TrainConfig,
}

impl InstructConfig {
    /// The book's chapter 7 run.
    pub fn book() -> Self {
        Self {
            data: PathBuf::from("datasets/instruction-data.json"),
            base: None,
            model: GptConfig {
                qkv_bias: true,
                ..GptConfig::tiny()
            },
            drop_rate: 0.0,
            allowed_max_length: 1024,
            mask_instruction: false,
            max_new_tokens: 256,
            responses: None,
            train: TrainConfig::finetune(2, 5),
        }
    }
}

impl RunConfig for InstructConfig {
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }

    fn check(&self) -> Result<(), String> {
        self.model.validate().map_err(|e| e.to_string())?;
        self.train.validate()?;
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(format!("drop_rate {} must be in [0, 1)", self.drop_rate));
        }
        if self.allowed_max_length < 2 {
            return Err("allowed_max_length must be at least 2".into());
        }
        Ok(())
    }
}

/// Tokenized training examples: the whole text and the length of its prompt part.
struct Examples {
    ids: Vec<Vec<u32>>,
    prompt_lens: Vec<usize>,
}

impl Examples {
    fn new(entries: &[InstructionEntry], tokenizer: &Gpt2Tokenizer) -> Result<Self, String> {
        let mut ids = Vec::with_capacity(entries.len());
        let mut prompt_lens = Vec::with_capacity(entries.len());
        for entry in entries {
            let full = tokenizer
                .encode(&format_example(entry), false)
                .map_err(|e| e.to_string())?;
            let prompt = tokenizer
                .encode(
                    &format!("{}\n\n### Response:\n", format_input(entry)),
                    false,
                )
                .map_err(|e| e.to_string())?;
            prompt_lens.push(prompt.len().min(full.len()));
            ids.push(full);
        }
        Ok(Self { ids, prompt_lens })
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Inputs and targets of `rows`, collated as the book does.
    fn batch(
        &self,
        rows: &[usize],
        max_length: usize,
        mask: bool,
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let seqs: Vec<Vec<u32>> = rows.iter().map(|&r| self.ids[r].clone()).collect();
        let lens: Vec<usize> = rows.iter().map(|&r| self.prompt_lens[r]).collect();
        let batch = collate(&seqs, Some(max_length), mask.then_some(&lens[..]));
        let shape = [batch.batch_size, batch.seq_len];
        (
            Tensor::from_data(TensorData::new(batch.inputs, shape), device),
            Tensor::from_data(TensorData::new(batch.targets, shape), device),
        )
    }

    /// Mean loss over the first `max_batches` batches in order.
    fn loss(
        &self,
        model: &GptModel,
        batch_size: usize,
        max_batches: usize,
        max_length: usize,
        mask: bool,
        device: &Device,
    ) -> Option<f64> {
        let rows: Vec<usize> = (0..self.len()).collect();
        let batches: Vec<&[usize]> = rows.chunks(batch_size).take(max_batches).collect();
        if batches.is_empty() {
            return None;
        }
        let total: f64 = batches
            .iter()
            .map(|rows| {
                let (inputs, targets) = self.batch(rows, max_length, mask, device);
                cross_entropy(model.forward(inputs), targets).into_scalar::<f32>() as f64
            })
            .sum();
        Some(total / batches.len() as f64)
    }
}

struct InstructTask<'a> {
    train: Examples,
    val: Examples,
    sample_entry: InstructionEntry,
    tokenizer: &'a Gpt2Tokenizer,
    config: &'a InstructConfig,
    max_length: usize,
}

impl TrainTask for InstructTask<'_> {
    type Model = GptModel;
    type Batch = Vec<usize>;

    fn batches_per_epoch(&self) -> usize {
        self.train.len() / self.config.train.batch_size
    }

    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>, ember_train::TrainError> {
        let t = &self.config.train;
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        if t.shuffle {
            let seed = t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Ok(order
            .chunks_exact(t.batch_size)
            .map(<[usize]>::to_vec)
            .collect())
    }

    fn batch_loss(&self, model: &GptModel, batch: &Vec<usize>, device: &Device) -> Tensor<1> {
        let (inputs, targets) =
            self.train
                .batch(batch, self.max_length, self.config.mask_instruction, device);
        cross_entropy(model.forward(inputs), targets)
    }

    fn batch_tokens(&self, batch: &Vec<usize>) -> u64 {
        let longest = batch
            .iter()
            .map(|&r| self.train.ids[r].len())
            .max()
            .unwrap_or(0);
        (batch.len() * longest.min(self.max_length)) as u64
    }

    fn evaluate(&self, model: &GptModel, device: &Device) -> Evaluation {
        let t = &self.config.train;
        let mask = self.config.mask_instruction;
        Evaluation {
            train_loss: self.train.loss(
                model,
                t.batch_size,
                t.eval_iter,
                self.max_length,
                mask,
                device,
            ),
            val_loss: self.val.loss(
                model,
                t.batch_size,
                t.eval_iter,
                self.max_length,
                mask,
                device,
            ),
            ..Default::default()
        }
    }

    fn epoch_report(&self, model: &GptModel, device: &Device) -> Option<String> {
        respond(
            model,
            self.tokenizer,
            &self.sample_entry,
            self.config.train.sample_tokens,
            device,
        )
        .ok()
    }
}

/// The model's answer to `entry` (the book's listing 7.x): greedy decoding of the
/// Alpaca prompt until `<|endoftext|>` or `max_new_tokens`, the prompt and the
/// response header stripped.
pub fn respond(
    model: &GptModel,
    tokenizer: &Gpt2Tokenizer,
    entry: &InstructionEntry,
    max_new_tokens: usize,
    device: &Device,
) -> Result<String, FinetuneError> {
    let prompt = format_input(entry);
    // A prompt longer than the context is cut to its last `context` tokens by
    // `generate`, as the book's `generate` does.
    let ids = tokenizer
        .encode(&prompt, false)
        .map_err(|e| FinetuneError::Input(e.to_string()))?;
    let config = GenerationConfig {
        max_new_tokens,
        stop_token: Some(END_OF_TEXT_ID),
        ..Default::default()
    };
    let mut new = generate(model, &ids, &config, device, |_| {})
        .map_err(|e| FinetuneError::Input(e.to_string()))?;
    if new.last() == Some(&END_OF_TEXT_ID) {
        new.pop();
    }
    let text = tokenizer
        .decode(&new)
        .map_err(|e| FinetuneError::Input(e.to_string()))?;
    Ok(text.replace("### Response:", "").trim().to_string())
}

/// What an instruction fine-tuning run reached (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructResults {
    /// Last evaluated training loss.
    pub train_loss: Option<f64>,
    /// Last evaluated validation loss.
    pub val_loss: Option<f64>,
    /// Entries in the train/test/validation parts.
    pub split_sizes: [usize; 3],
    /// Responses written.
    pub responses: usize,
    /// Entries whose prompt could not be answered (written with an empty response).
    pub failures: usize,
    /// The responses file.
    pub responses_file: PathBuf,
    /// Optimizer steps done.
    pub steps: usize,
    /// Seconds of training.
    pub train_seconds: f64,
    /// Seconds of response generation.
    pub respond_seconds: f64,
}

/// Fine-tunes a GPT on instruction data in `run_dir`, then answers the test entries.
pub fn finetune_instruct(
    config: &InstructConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions<'_>,
) -> Result<InstructResults, FinetuneError> {
    config.check().map_err(FinetuneError::Input)?;
    let paths = RunPaths::new(run_dir);
    paths.prepare(options.resume)?;
    let data =
        read_instruction_data(&config.data).map_err(|e| FinetuneError::Input(e.to_string()))?;
    let (train, test, val) = book_split(&data);
    if train.len() < config.train.batch_size || val.is_empty() || test.is_empty() {
        return Err(FinetuneError::Input(format!(
            "{}: {} entries make {} training, {} test and {} validation entries; need at least one batch ({}) of training entries and one of each other",
            config.data.display(),
            data.len(),
            train.len(),
            test.len(),
            val.len(),
            config.train.batch_size
        )));
    }
    let tokenizer = Gpt2Tokenizer::gpt2().map_err(|e| FinetuneError::Input(e.to_string()))?;
    let train_device = device.clone().autodiff();
    train_device.seed(config.train.seed);
    let model = base_model(config.base.as_deref(), &config.model, &train_device)?
        .with_dropout(config.drop_rate);
    let max_length = config.allowed_max_length.min(model.context_length);
    if options.resume {
        paths.check_resumable(config)?;
    }
    paths.write_config(config)?;
    let task = InstructTask {
        train: Examples::new(&train, &tokenizer).map_err(FinetuneError::Input)?,
        val: Examples::new(&val, &tokenizer).map_err(FinetuneError::Input)?,
        sample_entry: val[0].clone(),
        tokenizer: &tokenizer,
        config,
        max_length,
    };
    let progress = options.progress;
    let started = Instant::now();
    let interrupt = options.interrupt;
    let outcome = fit(&task, model, &config.train, &paths, &train_device, options)?;
    if outcome.stop == StopReason::Interrupted {
        return Err(FinetuneError::Interrupted {
            step: outcome.state.step,
            run_dir: paths.root.clone(),
        });
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let model = outcome.model.valid();
    save_checkpoint(&model, &paths.model()).map_err(|e| FinetuneError::Input(e.to_string()))?;

    let started = Instant::now();
    let count = config.responses.unwrap_or(test.len()).min(test.len());
    let bar = if progress {
        indicatif::ProgressBar::new(count as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "responses [{bar:30.cyan/blue}] {pos}/{len}  {per_sec}  ETA {eta}",
            )
            .expect("valid template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut answered = Vec::with_capacity(count);
    let mut failures = 0;
    for entry in test.iter().take(count) {
        // Ctrl-C here keeps the trained model and writes the responses so far.
        if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let response = match respond(&model, &tokenizer, entry, config.max_new_tokens, device) {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(instruction = %entry.instruction, error = %e, "no response");
                failures += 1;
                String::new()
            }
        };
        answered.push(InstructionEntry {
            model_response: Some(response),
            ..entry.clone()
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let responses_file = paths.write_json("instruction-data-with-response.json", &answered)?;
    let last = outcome.last_evaluation();
    let results = InstructResults {
        train_loss: last.train_loss,
        val_loss: last.val_loss,
        split_sizes: [train.len(), test.len(), val.len()],
        responses: answered.len(),
        failures,
        responses_file,
        steps: outcome.state.step,
        train_seconds,
        respond_seconds: started.elapsed().as_secs_f64(),
    };
    paths.write_json("results.json", &results)?;
    Ok(results)
}
