//! Chapter 7 end to end: instruction fine-tuning on the shared run layer, then a
//! response for every test entry.
//!
//! A run directory holds what every run holds (`config.toml`, `metrics.jsonl`,
//! `loss.png`, `samples.txt` with the response to the first validation entry after each
//! epoch, `checkpoints/`, `model/`) plus `instruction-data-with-response.json` (the test
//! entries with `model_response`, the book's file, ready for `ember judge`) and
//! `results.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use ember_data::{
    IGNORE_INDEX, InstructionEntry, TokenBatch, book_split, collate_instructions, format_input,
    instruction_prompt, read_instruction_data,
};
use ember_model::{CausalLm, GenerationConfig, GptConfig, LanguageModel, generate, save_model};
use ember_tokenizer::ModelTokenizer;
use ember_train::{
    Evaluation, InvalidSetting, Run, RunConfig, RunOptions, TrainConfig, TrainError, TrainTask,
    mean_loss, token_tensors,
};
use serde::{Deserialize, Serialize};

use crate::base::{base_model, check_generative, default_lora_alpha, with_lora};
use crate::error::FinetuneError;

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
    /// Train LoRA adapters of this rank on every projection of every block instead of
    /// the whole model (appendix E); they are merged into the saved model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (the book: 16).
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
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
            lora_rank: None,
            lora_alpha: default_lora_alpha(),
            train: TrainConfig::finetune(2, 5),
        }
    }
}

impl RunConfig for InstructConfig {
    /// The responses are written after training: how many, and how long, may change.
    const RESUMABLE: &'static [&'static str] = &["responses", "max_new_tokens"];
    const OUTPUT_FILES: &'static [&'static str] =
        &["results.json", "instruction-data-with-response.json"];

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        check_generative(
            &self.model,
            &self.train,
            self.drop_rate,
            self.allowed_max_length,
        )
    }
}

/// Tokenized entries: the whole text and the length of its prompt part.
struct Examples {
    ids: Vec<Vec<u32>>,
    prompt_lens: Vec<usize>,
    /// Tokens per row at most (the allowed length, capped by the context).
    max_length: usize,
    /// Leave the prompt out of the loss.
    mask_prompt: bool,
    /// Appended to each answer, and padding: the token that ends an answer.
    end_id: u32,
}

impl Examples {
    /// Each entry as the model is asked (its chat template, or the Alpaca prompt)
    /// followed by the answer; the collate appends the end-of-answer token.
    fn new(
        entries: &[InstructionEntry],
        tokenizer: &ModelTokenizer,
        max_length: usize,
        mask_prompt: bool,
    ) -> Result<Self, FinetuneError> {
        let mut ids = Vec::with_capacity(entries.len());
        let mut prompt_lens = Vec::with_capacity(entries.len());
        for entry in entries {
            let prompt_text = instruction_prompt(tokenizer, entry)?;
            let full = tokenizer.encode_rendered(&format!("{prompt_text}{}", entry.output))?;
            let prompt = tokenizer.encode_rendered(&prompt_text)?;
            prompt_lens.push(prompt.len().min(full.len()));
            ids.push(full);
        }
        Ok(Self {
            ids,
            prompt_lens,
            max_length,
            mask_prompt,
            end_id: tokenizer.end_of_turn_id(),
        })
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// `rows` collated as the book does.
    fn batch(&self, rows: &[usize]) -> TokenBatch {
        let seqs: Vec<&[u32]> = rows.iter().map(|&r| self.ids[r].as_slice()).collect();
        let lens: Vec<usize> = rows.iter().map(|&r| self.prompt_lens[r]).collect();
        collate_instructions(
            &seqs,
            self.end_id,
            Some(self.max_length),
            self.mask_prompt.then_some(&lens[..]),
        )
    }

    /// The next-token loss of `rows`: the mean over their counted targets.
    fn loss(&self, model: &LanguageModel, rows: &[usize], device: &Device) -> Tensor<1> {
        let (inputs, targets) = token_tensors(&self.batch(rows), device);
        model.next_token_loss(inputs, targets)
    }

    /// How many targets of `rows` the loss counts.
    fn counted_targets(&self, rows: &[usize]) -> f64 {
        let batch = self.batch(rows);
        batch.targets.iter().filter(|&&t| t != IGNORE_INDEX).count() as f64
    }
}

struct InstructTask<'a> {
    train: Examples,
    val: Examples,
    sample_entry: InstructionEntry,
    tokenizer: &'a ModelTokenizer,
    config: &'a InstructConfig,
}

impl TrainTask for InstructTask<'_> {
    type Model = LanguageModel;

    fn num_examples(&self) -> usize {
        self.train.len()
    }

    fn batch_loss(
        &self,
        model: &LanguageModel,
        rows: &[usize],
        device: &Device,
    ) -> Result<Tensor<1>, TrainError> {
        Ok(self.train.loss(model, rows, device))
    }

    /// The loss is a mean over tokens: a part of a batch weighs its counted targets.
    fn loss_weight(&self, rows: &[usize]) -> f64 {
        self.train.counted_targets(rows)
    }

    fn batch_tokens(&self, rows: &[usize]) -> u64 {
        let longest = rows
            .iter()
            .map(|&r| self.train.ids[r].len())
            .max()
            .unwrap_or(0);
        (rows.len() * longest.min(self.train.max_length)) as u64
    }

    fn evaluate(&self, model: &LanguageModel, device: &Device) -> Result<Evaluation, TrainError> {
        let t = &self.config.train;
        let loss = |examples: &Examples| {
            mean_loss(examples.len(), t.batch_size, t.eval_iter, |rows| {
                Ok(examples.loss(model, rows, device))
            })
        };
        Ok(Evaluation {
            train_loss: loss(&self.train)?,
            val_loss: loss(&self.val)?,
            ..Default::default()
        })
    }

    fn epoch_report(&self, model: &LanguageModel, device: &Device) -> Option<String> {
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

/// The model's answer to `entry` (the book's section 7.7): greedy decoding until an
/// end-of-text token or `max_new_tokens`. A model with a chat template is asked through
/// it; a GPT-2 model as the book asks, with the Alpaca prompt (the response header, if
/// the model writes one, removed).
pub fn respond(
    model: &LanguageModel,
    tokenizer: &ModelTokenizer,
    entry: &InstructionEntry,
    max_new_tokens: usize,
    device: &Device,
) -> Result<String, FinetuneError> {
    // A prompt longer than the context is cut to its last `context` tokens by
    // `generate`, as the book's `generate` does.
    let chat = tokenizer.chat_template().is_some();
    let prompt = if chat {
        instruction_prompt(tokenizer, entry)?
    } else {
        format_input(entry)
    };
    let ids = tokenizer.encode_rendered(&prompt)?;
    let config = GenerationConfig {
        max_new_tokens,
        stop_tokens: tokenizer.eos_ids().to_vec(),
        ..Default::default()
    };
    let mut new = generate(model, &ids, &config, device, |_| {})?;
    if new
        .last()
        .is_some_and(|id| tokenizer.eos_ids().contains(id))
    {
        new.pop();
    }
    let text = tokenizer.decode(&new)?;
    Ok(if chat {
        text.trim().to_string()
    } else {
        text.replace("### Response:", "").trim().to_string()
    })
}

/// Fails unless the book's split of the data at `path` (`[train, test, validation]`
/// sizes) gives at least one training batch and one test and validation entry.
pub fn check_split(path: &Path, sizes: [usize; 3], batch_size: usize) -> Result<(), FinetuneError> {
    let [train, test, val] = sizes;
    if train >= batch_size && test > 0 && val > 0 {
        return Ok(());
    }
    Err(FinetuneError::TooLittleData {
        path: path.to_path_buf(),
        message: format!(
            "{} entries make {train} training, {test} test and {val} validation entries; need at least one batch ({batch_size}) of training entries and one of each other",
            train + test + val
        ),
    })
}

/// The entries with the model's response to each (chapter 7's
/// `instruction-data-with-response.json`), and how many could not be answered (they
/// keep an empty response). Ctrl-C stops early and keeps the responses so far.
pub fn answer_entries(
    model: &LanguageModel,
    tokenizer: &ModelTokenizer,
    entries: &[InstructionEntry],
    max_new_tokens: usize,
    device: &Device,
    options: &RunOptions<'_>,
) -> (Vec<InstructionEntry>, usize) {
    let bar = ember_data::progress::bar(
        options.progress,
        Some(entries.len() as u64),
        "responses [{bar:30.cyan/blue}] {pos}/{len}  {per_sec}  ETA {eta}",
    );
    let mut answered = Vec::with_capacity(entries.len());
    let mut failures = 0;
    for entry in entries {
        if options.interrupt.load(Ordering::SeqCst) {
            break;
        }
        let response = match respond(model, tokenizer, entry, max_new_tokens, device) {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(instruction = %entry.instruction, error = %ember_data::error_chain(&e), "no response");
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
    (answered, failures)
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
    let run = Run::start(config, run_dir, device, options)?;
    let data = read_instruction_data(&config.data)?;
    let (train, test, val) = book_split(&data);
    check_split(
        &config.data,
        [train.len(), test.len(), val.len()],
        config.train.batch_size,
    )?;
    let (model, tokenizer) = base_model(config.base.as_deref(), &config.model, run.train_device())?;
    let model = model.with_dropout(config.drop_rate);
    let max_length = config.allowed_max_length.min(model.context_length());
    let model = with_lora(model, config.lora_rank, config.lora_alpha);
    let examples =
        |entries| Examples::new(entries, &tokenizer, max_length, config.mask_instruction);
    let task = InstructTask {
        train: examples(&train)?,
        val: examples(&val)?,
        sample_entry: val[0].clone(),
        tokenizer: &tokenizer,
        config,
    };
    let started = Instant::now();
    let outcome = run.fit(&task, model)?;
    let train_seconds = started.elapsed().as_secs_f64();
    // Adapters are folded into the weights: the saved model is an ordinary one.
    let model = outcome.model.valid().materialize();
    if run.writes() {
        save_model(&model, &tokenizer, &run.dir().model())?;
    }

    let started = Instant::now();
    // The other ranks of a data-parallel job answer nothing: rank 0 writes the answers.
    let count = match run.writes() {
        true => config.responses.unwrap_or(test.len()).min(test.len()),
        false => 0,
    };
    let (answered, failures) = answer_entries(
        &model,
        &tokenizer,
        &test[..count],
        config.max_new_tokens,
        run.device(),
        run.options(),
    );
    let responses_file = run
        .dir()
        .write_json("instruction-data-with-response.json", &answered)?;
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
    run.dir().write_json("results.json", &results)?;
    Ok(results)
}
