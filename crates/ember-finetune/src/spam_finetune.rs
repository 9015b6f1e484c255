//! Chapter 6 end to end: the spam classifier trained through ember-train's loop,
//! evaluated on the three splits, saved, and used to classify new text.
//!
//! A run directory holds what a pretraining run holds (`config.toml`,
//! `metrics.jsonl` with losses and accuracies, `loss.png`, `accuracy.png`,
//! `samples.txt` with the accuracies after each epoch, `checkpoints/`) plus
//! `results.json` (accuracy on the whole train/validation/test splits, trainable
//! parameters, seconds) and `model/`: the GPT (LoRA merged) as an Ember checkpoint,
//! `classifier.bpk` (the head) and `classifier.json` (labels, padded length), which
//! [`load_classifier`] reads back. A LoRA run also writes `adapters.bpk`, the
//! low-rank factors alone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::softmax;
use ember_model::weights::write_atomic;
use ember_model::{GptConfig, load_model, save_checkpoint};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use ember_train::fit::file_error;
use ember_train::{
    Evaluation, RunConfig, RunOptions, RunPaths, StopReason, TrainConfig, TrainError, TrainTask,
    fit,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::classifier::{GptClassifier, Trainable, accuracy, classification_loss};
use crate::instruct::END_OF_TEXT_ID;
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
    pub fn trainable(&self) -> Result<Trainable, String> {
        parse_trainable(&self.trainable)
    }
}

impl RunConfig for SpamConfig {
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }

    fn check(&self) -> Result<(), String> {
        self.model.validate().map_err(|e| e.to_string())?;
        self.train.validate()?;
        self.trainable()?;
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(format!("drop_rate {} must be in [0, 1)", self.drop_rate));
        }
        if self.max_length == Some(0) || self.lora_rank == Some(0) {
            return Err("max_length and lora_rank must be at least 1".into());
        }
        Ok(())
    }
}

/// Parses `all`, `head` or `last-N`.
pub fn parse_trainable(text: &str) -> Result<Trainable, String> {
    match text {
        "all" => Ok(Trainable::All),
        "head" => Ok(Trainable::HeadOnly),
        other => other
            .strip_prefix("last-")
            .and_then(|n| n.parse().ok())
            .map(Trainable::LastBlocks)
            .ok_or_else(|| {
                format!("trainable \"{other}\" is not one of all, head, last-N (e.g. last-1)")
            }),
    }
}

/// Messages tokenized and padded with `<|endoftext|>` to one length (the book's
/// `SpamDataset`).
#[derive(Debug, Clone)]
pub struct PaddedTexts {
    /// Row-major `[len, max_length]` token ids.
    pub ids: Vec<i64>,
    /// Class of each row.
    pub labels: Vec<i64>,
    /// Tokens per row.
    pub max_length: usize,
}

impl PaddedTexts {
    /// Tokenizes `examples`, truncating to `max_length` (default: the longest).
    pub fn new(
        examples: &[SmsExample],
        tokenizer: &Gpt2Tokenizer,
        max_length: Option<usize>,
    ) -> Result<Self, String> {
        let encoded: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| tokenizer.encode(&e.text, false).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let max_length =
            max_length.unwrap_or_else(|| encoded.iter().map(Vec::len).max().unwrap_or(1));
        let mut ids = Vec::with_capacity(examples.len() * max_length);
        for row in &encoded {
            let kept = &row[..row.len().min(max_length)];
            ids.extend(kept.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(
                END_OF_TEXT_ID as i64,
                max_length - kept.len(),
            ));
        }
        Ok(Self {
            ids,
            labels: examples.iter().map(|e| e.label as i64).collect(),
            max_length,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Ids `[batch, max_length]` and labels `[batch]` of rows `rows`.
    pub fn batch(&self, rows: &[usize], device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
        let l = self.max_length;
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|&r| self.ids[r * l..(r + 1) * l].iter().copied())
            .collect();
        let labels: Vec<i64> = rows.iter().map(|&r| self.labels[r]).collect();
        (
            Tensor::from_data(TensorData::new(ids, [rows.len(), l]), device),
            Tensor::from_data(TensorData::new(labels, [rows.len()]), device),
        )
    }

    /// Mean loss and accuracy over the first `max_batches` batches in order (all when
    /// `None`), the book's `calc_loss_loader` and `calc_accuracy_loader`.
    pub fn evaluate(
        &self,
        model: &GptClassifier,
        batch_size: usize,
        max_batches: Option<usize>,
        device: &Device,
    ) -> Option<(f64, f64)> {
        let rows: Vec<usize> = (0..self.len()).collect();
        let batches: Vec<&[usize]> = rows
            .chunks(batch_size)
            .take(max_batches.unwrap_or(usize::MAX))
            .collect();
        if batches.is_empty() {
            return None;
        }
        let (mut loss, mut correct, mut seen) = (0.0, 0.0, 0usize);
        for batch in &batches {
            let (ids, labels) = self.batch(batch, device);
            let logits = model.forward(ids);
            loss += classification_loss(logits.clone(), labels.clone()).into_scalar::<f32>() as f64;
            correct += accuracy(logits, labels) * batch.len() as f64;
            seen += batch.len();
        }
        Some((loss / batches.len() as f64, correct / seen as f64))
    }
}

/// Classification on padded texts, for [`fit`].
struct SpamTask<'a> {
    train: &'a PaddedTexts,
    val: &'a PaddedTexts,
    config: &'a TrainConfig,
}

impl TrainTask for SpamTask<'_> {
    type Model = GptClassifier;
    type Batch = Vec<usize>;

    fn batches_per_epoch(&self) -> usize {
        // The book's training loader drops the last partial batch.
        self.train.len() / self.config.batch_size
    }

    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>, TrainError> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        if self.config.shuffle {
            let seed = self.config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Ok(order
            .chunks_exact(self.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect())
    }

    fn batch_loss(&self, model: &GptClassifier, batch: &Vec<usize>, device: &Device) -> Tensor<1> {
        let (ids, labels) = self.train.batch(batch, device);
        classification_loss(model.forward(ids), labels)
    }

    fn batch_tokens(&self, batch: &Vec<usize>) -> u64 {
        (batch.len() * self.train.max_length) as u64
    }

    fn evaluate(&self, model: &GptClassifier, device: &Device) -> Evaluation {
        let b = self.config.batch_size;
        let n = Some(self.config.eval_iter);
        let train = self.train.evaluate(model, b, n, device);
        let val = self.val.evaluate(model, b, n, device);
        Evaluation {
            train_loss: train.map(|t| t.0),
            val_loss: val.map(|v| v.0),
            train_accuracy: train.map(|t| t.1),
            val_accuracy: val.map(|v| v.1),
        }
    }

    fn epoch_report(&self, model: &GptClassifier, device: &Device) -> Option<String> {
        let e = self.evaluate(model, device);
        Some(format!(
            "training accuracy {:.2}% | validation accuracy {:.2}%",
            100.0 * e.train_accuracy.unwrap_or(0.0),
            100.0 * e.val_accuracy.unwrap_or(0.0)
        ))
    }
}

/// Errors of a fine-tuning run.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// The loop or the run directory failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Data, model or configuration problem, with the thing named.
    #[error("{0}")]
    Input(String),
    /// Ctrl-C: a checkpoint was written at `step`.
    #[error("interrupted at step {step}; a checkpoint is written, continue with --resume {}", run_dir.display())]
    Interrupted {
        /// Steps done.
        step: usize,
        /// The run to resume.
        run_dir: PathBuf,
    },
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

/// Resolves a base model path: a pretraining run directory stands for its `model/`.
pub fn resolve_base(path: &Path) -> PathBuf {
    let model = path.join("model");
    if path.join("metrics.jsonl").exists() && model.join("config.json").exists() {
        model
    } else {
        path.to_path_buf()
    }
}

/// The model a fine-tuning run starts from: `base` loaded (a `.pth` needs `model` for
/// its shape), or a new `model` drawn on `device` when there is no base.
pub fn base_model(
    base: Option<&Path>,
    model: &GptConfig,
    device: &Device,
) -> Result<ember_model::GptModel, FinetuneError> {
    let Some(base) = base else {
        return Ok(model.init(device));
    };
    let base = resolve_base(base);
    let pth = base.extension().is_some_and(|e| e == "pth" || e == "pt");
    Ok(load_model(&base, pth.then_some(model), device)
        .map_err(|e| FinetuneError::Input(e.to_string()))?
        .model)
}

/// Fine-tunes the spam classifier of chapter 6 in `run_dir`.
pub fn finetune_spam(
    config: &SpamConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions<'_>,
) -> Result<SpamResults, FinetuneError> {
    config.check().map_err(FinetuneError::Input)?;
    let started = Instant::now();
    let paths = RunPaths::new(run_dir);
    paths.prepare(options.resume)?;
    let split = book_split(&config.data).map_err(|e| FinetuneError::Input(e.to_string()))?;
    let tokenizer = Gpt2Tokenizer::gpt2().map_err(|e| FinetuneError::Input(e.to_string()))?;
    let train_device = device.clone().autodiff();
    train_device.seed(config.train.seed);
    let gpt = base_model(config.base.as_deref(), &config.model, &train_device)?
        .with_dropout(config.drop_rate);
    let context = gpt.context_length;
    let max_length = match config.max_length {
        Some(n) => n,
        None => PaddedTexts::new(&split.train, &tokenizer, None)
            .map_err(FinetuneError::Input)?
            .max_length
            .min(context),
    };
    if max_length > context {
        return Err(FinetuneError::Input(format!(
            "max_length {max_length} exceeds the model's context length {context}"
        )));
    }
    let pad = |part: &[SmsExample], name: &str| {
        if part.is_empty() {
            return Err(FinetuneError::Input(format!(
                "{}: the {name} split is empty",
                config.data.display()
            )));
        }
        PaddedTexts::new(part, &tokenizer, Some(max_length)).map_err(FinetuneError::Input)
    };
    let (train, val, test) = (
        pad(&split.train, "training")?,
        pad(&split.validation, "validation")?,
        pad(&split.test, "test")?,
    );
    let classifier = GptClassifier::new(gpt, SPAM_LABELS.len(), &train_device);
    let classifier = match config.lora_rank {
        Some(rank) => classifier.with_lora(rank, config.lora_alpha),
        None => classifier.with_trainable(config.trainable().map_err(FinetuneError::Input)?),
    };
    let trainable_params = classifier.num_trainable_params();
    tracing::info!(
        trainable_params,
        max_length,
        train = train.len(),
        val = val.len(),
        test = test.len(),
        "spam fine-tuning"
    );
    if options.resume {
        paths.check_resumable(config)?;
    }
    paths.write_config(config)?;
    let task = SpamTask {
        train: &train,
        val: &val,
        config: &config.train,
    };
    let outcome = fit(
        &task,
        classifier,
        &config.train,
        &paths,
        &train_device,
        options,
    )?;
    if outcome.stop == StopReason::Interrupted {
        // The checkpoint is written; the evaluation waits for the resumed run.
        return Err(FinetuneError::Interrupted {
            step: outcome.state.step,
            run_dir: paths.root.clone(),
        });
    }

    let trained = outcome.model.valid();
    let model = if config.lora_rank.is_some() {
        let adapters_path = paths.root.join("adapters.bpk");
        save_adapters(&trained, &adapters_path)?;
        trained.merge_lora()
    } else {
        trained
    };
    let accuracy_of = |part: &PaddedTexts| {
        part.evaluate(&model, config.train.batch_size, None, device)
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
    save_classifier(
        &model,
        &ClassifierInfo {
            labels: SPAM_LABELS.iter().map(|s| s.to_string()).collect(),
            max_length,
        },
        &paths.model(),
    )?;
    paths.write_json("results.json", &results)?;
    Ok(results)
}

/// What a LoRA run trains and the base model lacks: the low-rank factors, and the new
/// classification head (appendix E's "save the adapters alone").
fn adapter_group() -> ParamGroup {
    ParamGroup::from_any_predicates(vec!["lora", "head"])
}

/// Writes the low-rank factors and the head alone: a few MB instead of the model.
pub fn save_adapters(model: &GptClassifier, path: &Path) -> Result<(), FinetuneError> {
    let record = model.clone().into_record_group(adapter_group());
    if record.is_empty() {
        return Err(FinetuneError::Input(
            "the model has no LoRA adapters to save".into(),
        ));
    }
    let bytes = record
        .into_bytes()
        .map_err(|e| FinetuneError::Input(e.to_string()))?;
    write_atomic(path, &bytes).map_err(|e| file_error(path)(e.to_string()))?;
    Ok(())
}

/// Loads adapters written by [`save_adapters`] into `model`, which must carry
/// adapters of the same rank on the same layers ([`GptClassifier::with_lora`]).
pub fn load_adapters(model: GptClassifier, path: &Path) -> Result<GptClassifier, FinetuneError> {
    let bytes = std::fs::read(path)
        .map_err(|e| FinetuneError::Input(format!("{}: {e}", path.display())))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| FinetuneError::Input(format!("{}: {e}", path.display())))?
        .allow_partial(true);
    model
        .try_load_record(record)
        .map_err(|e| FinetuneError::Input(format!("{}: {e}", path.display())))
}

/// Saves a classifier: the GPT as an Ember checkpoint, the head as `classifier.bpk`,
/// the labels and padded length as `classifier.json`.
pub fn save_classifier(
    model: &GptClassifier,
    info: &ClassifierInfo,
    dir: &Path,
) -> Result<(), FinetuneError> {
    save_checkpoint(&model.gpt, dir).map_err(|e| FinetuneError::Input(e.to_string()))?;
    let head = model
        .head
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| FinetuneError::Input(e.to_string()))?;
    let head_path = dir.join("classifier.bpk");
    write_atomic(&head_path, &head).map_err(|e| file_error(&head_path)(e.to_string()))?;
    let info_path = dir.join("classifier.json");
    write_atomic(
        &info_path,
        serde_json::to_string_pretty(info)
            .expect("serialisable")
            .as_bytes(),
    )
    .map_err(|e| file_error(&info_path)(e.to_string()))?;
    Ok(())
}

/// Loads what [`save_classifier`] wrote (a fine-tuning run directory stands for its
/// `model/`).
pub fn load_classifier(
    path: &Path,
    device: &Device,
) -> Result<(GptClassifier, ClassifierInfo), FinetuneError> {
    let dir = if path.join("model").join("classifier.json").exists() {
        path.join("model")
    } else {
        path.to_path_buf()
    };
    let info_path = dir.join("classifier.json");
    let info: ClassifierInfo = std::fs::read_to_string(&info_path)
        .map_err(|e| {
            format!(
                "{}: {e} (not a classifier made by `ember finetune-spam`)",
                info_path.display()
            )
        })
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{}: {e}", info_path.display())))
        .map_err(FinetuneError::Input)?;
    let gpt = load_model(&dir, None, device)
        .map_err(|e| FinetuneError::Input(e.to_string()))?
        .model;
    let mut model = GptClassifier::new(gpt, info.labels.len(), device);
    let head_path = dir.join("classifier.bpk");
    let bytes = std::fs::read(&head_path)
        .map_err(|e| FinetuneError::Input(format!("{}: {e}", head_path.display())))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| FinetuneError::Input(format!("{}: {e}", head_path.display())))?;
    model.head = model
        .head
        .try_load_record(record)
        .map_err(|e| FinetuneError::Input(format!("{}: {e}", head_path.display())))?;
    Ok((model, info))
}

/// Class probabilities of `text` (the book's `classify_review`): tokenized, truncated
/// and padded to the classifier's length, read at the last position.
pub fn classify_text(
    model: &GptClassifier,
    info: &ClassifierInfo,
    tokenizer: &Gpt2Tokenizer,
    text: &str,
    device: &Device,
) -> Result<Vec<f64>, FinetuneError> {
    let example = SmsExample {
        label: 0,
        text: text.to_string(),
    };
    let padded = PaddedTexts::new(&[example], tokenizer, Some(info.max_length))
        .map_err(FinetuneError::Input)?;
    let (ids, _) = padded.batch(&[0], device);
    let probs = softmax(model.forward(ids), 1);
    Ok(probs
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| FinetuneError::Input(format!("{e:?}")))?
        .into_iter()
        .map(f64::from)
        .collect())
}
