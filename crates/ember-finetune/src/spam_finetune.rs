//! Chapter 6 end to end: the spam classifier trained on the shared run layer,
//! evaluated on the three splits, saved, and used to classify new text.
//!
//! A run directory holds what every run holds (`config.toml`, `metrics.jsonl` with
//! losses and accuracies, `loss.png`, `accuracy.png`, `samples.txt` with the accuracies
//! after each epoch, `checkpoints/`) plus `results.json` (accuracy on the whole
//! train/validation/test splits, trainable parameters, seconds) and `model/`: the GPT
//! (LoRA merged) as a Hugging Face directory, `classifier.bpk` (the head) and
//! `classifier.json` (labels, padded length), which [`load_classifier`] reads back. A
//! LoRA run also writes `adapters.bpk`, the low-rank factors alone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::softmax;
use ember_data::collate_labeled;
use ember_data::files::write_atomic;
use ember_model::{CausalLm, GptConfig, load_model, model_tokenizer, save_model};
use ember_tokenizer::ModelTokenizer;
use ember_train::{
    Evaluation, InvalidSetting, Run, RunConfig, RunOptions, TrainConfig, TrainError, TrainTask,
    labeled_tensors, over_eval_batches,
};
use serde::{Deserialize, Serialize};

use crate::base::base_model;
use crate::classifier::{GptClassifier, Trainable, accuracy, classification_loss};
use crate::error::FinetuneError;
use crate::spam::{SmsExample, book_split};

/// The labels, index = class id (the book's mapping: ham 0, spam 1).
pub const SPAM_LABELS: [&str; 2] = ["ham", "spam"];

/// Configuration of a spam fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpamConfig {
    /// The SMS Spam Collection file.
    pub data: PathBuf,
    /// The model to start from: a Hugging Face or Ember model directory, a pretraining
    /// run directory (its `model/`), or a book `.pth` file (with `model` as its
    /// shape). Unset: a randomly initialised `model`.
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// Architecture of a from-scratch run (and of a `.pth` base).
    pub model: GptConfig,
    /// Dropout while fine-tuning (the book: 0).
    pub drop_rate: f64,
    /// Pad or truncate every message to this many tokens; unset: the longest training
    /// message (120 for the book's split), capped at the context length.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// What trains: `all`, `head`, or `last-N` (the head, the final LayerNorm and the
    /// last N blocks; the book: `last-1`). Ignored with LoRA.
    pub trainable: String,
    /// LoRA rank (appendix E); unset: no adapters.
    #[serde(default)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (the book: 16).
    pub lora_alpha: f64,
    /// Optimisation (the book: AdamW 5e-5, weight decay 0.1, 5 epochs, batch 8).
    pub train: TrainConfig,
}

impl SpamConfig {
    /// The book's chapter 6 run (from a model given as `base`, else from scratch on
    /// the tiny architecture).
    pub fn book() -> Self {
        Self {
            data: PathBuf::from("datasets/sms_spam_collection/SMSSpamCollection"),
            base: None,
            model: GptConfig::tiny(),
            drop_rate: 0.0,
            max_length: None,
            trainable: "last-1".into(),
            lora_rank: None,
            lora_alpha: 16.0,
            train: TrainConfig::finetune(5, 50),
        }
    }

    /// The `trainable` setting as a [`Trainable`].
    pub fn trainable(&self) -> Result<Trainable, InvalidSetting> {
        parse_trainable(&self.trainable)
    }
}

impl RunConfig for SpamConfig {
    const OUTPUT_FILES: &'static [&'static str] = &["results.json", "adapters.bpk"];

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }

    fn check(&self) -> Result<(), InvalidSetting> {
        self.model
            .validate()
            .map_err(|e| InvalidSetting::new("model", e.to_string()))?;
        self.train.validate()?;
        self.trainable()?;
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(InvalidSetting::new(
                "drop_rate",
                format!("must be in [0, 1), got {}", self.drop_rate),
            ));
        }
        for (key, value) in [
            ("max_length", self.max_length),
            ("lora_rank", self.lora_rank),
        ] {
            if value == Some(0) {
                return Err(InvalidSetting::new(key, "must be at least 1"));
            }
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return Err(InvalidSetting::new(
                "lora_alpha",
                format!("must be positive and finite, got {}", self.lora_alpha),
            ));
        }
        Ok(())
    }
}

/// Parses `all`, `head` or `last-N`.
pub fn parse_trainable(text: &str) -> Result<Trainable, InvalidSetting> {
    match text {
        "all" => Ok(Trainable::All),
        "head" => Ok(Trainable::HeadOnly),
        other => other
            .strip_prefix("last-")
            .and_then(|n| n.parse().ok())
            .map(Trainable::LastBlocks)
            .ok_or_else(|| {
                InvalidSetting::new(
                    "trainable",
                    format!("\"{other}\" is not one of all, head, last-N (e.g. last-1)"),
                )
            }),
    }
}

/// Messages tokenized (the book's `SpamDataset`), padded with the end-of-text token
/// (`<|endoftext|>` for GPT-2) to one length when batched.
#[derive(Debug, Clone)]
pub struct LabeledTexts {
    /// Token ids of each message.
    pub ids: Vec<Vec<u32>>,
    /// Class of each message.
    pub labels: Vec<i64>,
    /// Tokens per row once padded or truncated.
    pub max_length: usize,
    /// The padding token.
    pub pad_id: u32,
}

impl LabeledTexts {
    /// Tokenizes `examples`, to be truncated to `max_length` (default: the longest).
    pub fn new(
        examples: &[SmsExample],
        tokenizer: &ModelTokenizer,
        max_length: Option<usize>,
    ) -> Result<Self, FinetuneError> {
        let ids: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| tokenizer.encode(&e.text))
            .collect::<Result<_, _>>()?;
        let max_length = max_length.unwrap_or_else(|| ids.iter().map(Vec::len).max().unwrap_or(1));
        Ok(Self {
            ids,
            labels: examples.iter().map(|e| i64::from(e.label)).collect(),
            max_length,
            pad_id: tokenizer.end_of_turn_id(),
        })
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Ids `[batch, max_length]` and labels `[batch]` of rows `rows`.
    pub fn batch(&self, rows: &[usize], device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
        let texts: Vec<&[u32]> = rows.iter().map(|&r| self.ids[r].as_slice()).collect();
        let labels: Vec<i64> = rows.iter().map(|&r| self.labels[r]).collect();
        labeled_tensors(
            &collate_labeled(&texts, &labels, self.pad_id, self.max_length),
            device,
        )
    }

    /// Mean loss (over batches) and accuracy (over messages) on the first `max_batches`
    /// batches in order (all when `None`): the book's `calc_loss_loader` and
    /// `calc_accuracy_loader`, in one pass.
    pub fn evaluate(
        &self,
        model: &GptClassifier,
        batch_size: usize,
        max_batches: Option<usize>,
        device: &Device,
    ) -> Option<(f64, f64)> {
        let scores = over_eval_batches(self.len(), batch_size, max_batches, |rows| {
            let (ids, labels) = self.batch(rows, device);
            let logits = model.forward(ids);
            let loss = classification_loss(logits.clone(), labels.clone()).into_scalar::<f32>();
            Ok((
                loss as f64,
                accuracy(logits, labels) * rows.len() as f64,
                rows.len(),
            ))
        })
        .ok()?;
        if scores.is_empty() {
            return None;
        }
        let loss = scores.iter().map(|s| s.0).sum::<f64>() / scores.len() as f64;
        let seen: usize = scores.iter().map(|s| s.2).sum();
        let correct: f64 = scores.iter().map(|s| s.1).sum();
        Some((loss, correct / seen as f64))
    }
}

/// Classification on padded texts.
struct SpamTask<'a> {
    train: &'a LabeledTexts,
    val: &'a LabeledTexts,
    config: &'a TrainConfig,
}

impl TrainTask for SpamTask<'_> {
    type Model = GptClassifier;

    fn num_examples(&self) -> usize {
        self.train.len()
    }

    fn batch_loss(
        &self,
        model: &GptClassifier,
        rows: &[usize],
        device: &Device,
    ) -> Result<Tensor<1>, TrainError> {
        let (ids, labels) = self.train.batch(rows, device);
        Ok(classification_loss(model.forward(ids), labels))
    }

    fn batch_tokens(&self, rows: &[usize]) -> u64 {
        (rows.len() * self.train.max_length) as u64
    }

    fn evaluate(&self, model: &GptClassifier, device: &Device) -> Result<Evaluation, TrainError> {
        let b = self.config.batch_size;
        let n = Some(self.config.eval_iter);
        let train = self.train.evaluate(model, b, n, device);
        let val = self.val.evaluate(model, b, n, device);
        Ok(Evaluation {
            train_loss: train.map(|t| t.0),
            val_loss: val.map(|v| v.0),
            train_accuracy: train.map(|t| t.1),
            val_accuracy: val.map(|v| v.1),
            ..Default::default()
        })
    }

    fn epoch_report(&self, model: &GptClassifier, device: &Device) -> Option<String> {
        let e = self.evaluate(model, device).ok()?;
        Some(format!(
            "training accuracy {:.2}% | validation accuracy {:.2}%",
            100.0 * e.train_accuracy.unwrap_or(0.0),
            100.0 * e.val_accuracy.unwrap_or(0.0)
        ))
    }
}

/// Accuracy on the whole splits after training (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpamResults {
    /// Training split accuracy.
    pub train_accuracy: f64,
    /// Validation split accuracy.
    pub val_accuracy: f64,
    /// Test split accuracy.
    pub test_accuracy: f64,
    /// Rows in each split.
    pub split_sizes: [usize; 3],
    /// Padded length of every message.
    pub max_length: usize,
    /// Parameters that were trained.
    pub trainable_params: usize,
    /// Optimizer steps done.
    pub steps: usize,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
}

/// What `model/classifier.json` records next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// Class names, index = class id.
    pub labels: Vec<String>,
    /// Messages are padded or truncated to this many tokens.
    pub max_length: usize,
}

/// Fine-tunes the spam classifier of chapter 6 in `run_dir`.
pub fn finetune_spam(
    config: &SpamConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions<'_>,
) -> Result<SpamResults, FinetuneError> {
    let started = Instant::now();
    let run = Run::start(config, run_dir, device, options)?;
    let split = book_split(&config.data)?;
    let (gpt, tokenizer) = base_model(config.base.as_deref(), &config.model, run.train_device())?;
    let gpt = gpt.with_dropout(config.drop_rate);
    let context = gpt.context_length();
    let max_length = match config.max_length {
        Some(n) => n,
        None => LabeledTexts::new(&split.train, &tokenizer, None)?
            .max_length
            .min(context),
    };
    if max_length > context {
        return Err(FinetuneError::Setting(format!(
            "max_length {max_length} exceeds the model's context length {context}"
        )));
    }
    let texts = |part: &[SmsExample], name: &str| {
        if part.is_empty() {
            return Err(FinetuneError::TooLittleData {
                path: config.data.clone(),
                message: format!("the {name} split is empty"),
            });
        }
        LabeledTexts::new(part, &tokenizer, Some(max_length))
    };
    let (train, val, test) = (
        texts(&split.train, "training")?,
        texts(&split.validation, "validation")?,
        texts(&split.test, "test")?,
    );
    let classifier = GptClassifier::new(gpt, SPAM_LABELS.len(), run.train_device());
    let classifier = match config.lora_rank {
        Some(rank) => classifier.with_lora(rank, config.lora_alpha),
        None => classifier.with_trainable(config.trainable().map_err(TrainError::from)?),
    };
    check_trainable(&classifier, config)?;
    let trainable_params = classifier.num_trainable_params();
    tracing::info!(
        trainable_params,
        max_length,
        train = train.len(),
        val = val.len(),
        test = test.len(),
        "spam fine-tuning"
    );
    let task = SpamTask {
        train: &train,
        val: &val,
        config: &config.train,
    };
    let outcome = run.fit(&task, classifier)?;

    let trained = outcome.model.valid();
    let model = if config.lora_rank.is_some() {
        if run.writes() {
            save_adapters(&trained, &run.dir().output("adapters.bpk"))?;
        }
        trained.merge_lora()
    } else {
        trained
    };
    let accuracy_of = |part: &LabeledTexts| {
        // The other ranks of a data-parallel job measure nothing: rank 0 reports.
        if !run.writes() {
            return 0.0;
        }
        part.evaluate(&model, config.train.batch_size, None, run.device())
            .map_or(0.0, |(_, acc)| acc)
    };
    let results = SpamResults {
        train_accuracy: accuracy_of(&train),
        val_accuracy: accuracy_of(&val),
        test_accuracy: accuracy_of(&test),
        split_sizes: [train.len(), val.len(), test.len()],
        max_length,
        trainable_params,
        steps: outcome.state.step,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !run.writes() {
        return Ok(results);
    }
    save_classifier(
        &model,
        &ClassifierInfo {
            labels: SPAM_LABELS.iter().map(|s| s.to_string()).collect(),
            max_length,
        },
        &tokenizer,
        &run.dir().model(),
    )?;
    run.dir().write_json("results.json", &results)?;
    Ok(results)
}

/// Refuses settings the model cannot honour: `last-N` beyond its blocks, a LoRA rank
/// beyond the smallest adapted dimension.
fn check_trainable(model: &GptClassifier, config: &SpamConfig) -> Result<(), FinetuneError> {
    let blocks = model.gpt.num_blocks();
    if let (None, Ok(Trainable::LastBlocks(n))) = (config.lora_rank, config.trainable())
        && n > blocks
    {
        return Err(FinetuneError::Setting(format!(
            "trainable last-{n}: the model has {blocks} blocks"
        )));
    }
    let width = model.gpt.hidden_size();
    if let Some(rank) = config.lora_rank
        && rank > width
    {
        return Err(FinetuneError::Setting(format!(
            "lora_rank {rank} exceeds the model width {width}"
        )));
    }
    Ok(())
}

/// What a LoRA run trains and the base model lacks: the low-rank factors, and the new
/// classification head (appendix E's "save the adapters alone").
fn adapter_group() -> ParamGroup {
    ParamGroup::from_any_predicates(vec!["lora", "head"])
}

/// Writes the low-rank factors and the head alone: a few MB instead of the model.
pub fn save_adapters(model: &GptClassifier, path: &Path) -> Result<(), FinetuneError> {
    let record = model.clone().into_record_group(adapter_group());
    let bad = |message: String| FinetuneError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    if record.is_empty() {
        return Err(bad("the model has no LoRA adapters to save".into()));
    }
    let bytes = record.into_bytes().map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))?;
    Ok(())
}

/// Reads a Burn record file.
fn read_record(path: &Path) -> Result<ModuleRecord, FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| FinetuneError::BadFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Loads adapters written by [`save_adapters`] into `model`, which must carry
/// adapters of the same rank on the same layers ([`GptClassifier::with_lora`]).
pub fn load_adapters(model: GptClassifier, path: &Path) -> Result<GptClassifier, FinetuneError> {
    let record = read_record(path)?.allow_partial(true);
    model
        .try_load_record(record)
        .map_err(|e| FinetuneError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Saves a classifier: the GPT and its tokenizer as a model directory, the head as
/// `classifier.bpk`, the labels and padded length as `classifier.json`.
pub fn save_classifier(
    model: &GptClassifier,
    info: &ClassifierInfo,
    tokenizer: &ModelTokenizer,
    dir: &Path,
) -> Result<(), FinetuneError> {
    save_model(&model.gpt, tokenizer, dir)?;
    let head_path = dir.join("classifier.bpk");
    let head =
        model
            .head
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| FinetuneError::BadFile {
                path: head_path.clone(),
                message: e.to_string(),
            })?;
    write_atomic(&head_path, &head).map_err(|e| TrainError::io(&head_path, e))?;
    let info_path = dir.join("classifier.json");
    let text = serde_json::to_string_pretty(info).expect("classifier info serialises");
    write_atomic(&info_path, text.as_bytes()).map_err(|e| TrainError::io(&info_path, e))?;
    Ok(())
}

/// Loads what [`save_classifier`] wrote (a fine-tuning run directory stands for its
/// `model/`), checking `classifier.json` against the model before using it.
pub fn load_classifier(
    path: &Path,
    device: &Device,
) -> Result<(GptClassifier, ClassifierInfo, ModelTokenizer), FinetuneError> {
    let dir = ember_model::resolve_model_path(path);
    let info_path = dir.join("classifier.json");
    let bad = |message: String| FinetuneError::BadFile {
        path: info_path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&info_path).map_err(|e| {
        bad(format!(
            "{e} (not a classifier made by `ember finetune-spam`)"
        ))
    })?;
    let info: ClassifierInfo = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let loaded = load_model(&dir, None, device)?;
    let tokenizer = model_tokenizer(&loaded)?;
    let gpt = loaded.model;
    if info.labels.len() < 2 {
        return Err(bad(format!(
            "{} label(s); a classifier needs at least 2",
            info.labels.len()
        )));
    }
    if info.max_length == 0 || info.max_length > gpt.context_length() {
        return Err(bad(format!(
            "max_length {} must be between 1 and the model's context length {}",
            info.max_length,
            gpt.context_length()
        )));
    }
    let mut model = GptClassifier::new(gpt, info.labels.len(), device);
    let head_path = dir.join("classifier.bpk");
    model.head = model
        .head
        .try_load_record(read_record(&head_path)?)
        .map_err(|e| FinetuneError::BadFile {
            path: head_path.clone(),
            message: e.to_string(),
        })?;
    Ok((model, info, tokenizer))
}

/// Class probabilities of `text` (the book's `classify_review`): tokenized, truncated
/// and padded to the classifier's length, read at the last position.
pub fn classify_text(
    model: &GptClassifier,
    info: &ClassifierInfo,
    tokenizer: &ModelTokenizer,
    text: &str,
    device: &Device,
) -> Result<Vec<f64>, FinetuneError> {
    let example = SmsExample {
        label: 0,
        text: text.to_string(),
    };
    let texts = LabeledTexts::new(&[example], tokenizer, Some(info.max_length))?;
    let (ids, _) = texts.batch(&[0], device);
    let probs = softmax(model.forward(ids), 1);
    Ok(probs
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 probabilities")
        .into_iter()
        .map(f64::from)
        .collect())
}
