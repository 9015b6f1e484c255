//! Pretraining (chapter 5's run, with appendix D's additions) as a [`TrainTask`].
//!
//! Next-token prediction on sliding windows of a text file (split by characters into
//! training and validation text, the book's 90/10) or of token shards written by
//! `ember prepare`, with a greedy text sample after each epoch.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use ember_data::{ShardDataset, SlidingWindowDataset, WindowSource, collate_windows, split_text};
use ember_model::{
    Architecture, GenerationConfig, GptModel, LanguageModel, generate, load_model, save_model,
};
use ember_tokenizer::{Gpt2Tokenizer, ModelTokenizer, Tokenizer};

use crate::checkpoint::TrainState;
use crate::config::PretrainConfig;
use crate::error::TrainError;
use crate::eval::{mean_loss, token_tensors};
use crate::pipeline::Run;
use crate::task::{Evaluation, TrainTask};
use crate::trainer::{RunOptions, StopReason};

/// The result of [`pretrain`].
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// Where the run stopped.
    pub state: TrainState,
    /// Why ([`StopReason::Finished`] or [`StopReason::MaxSteps`]).
    pub stop: StopReason,
    /// Last evaluated training loss.
    pub train_loss: Option<f64>,
    /// Last evaluated validation loss.
    pub val_loss: Option<f64>,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// FLOPs of one training token: 6 per parameter that multiplies (forward and
/// backward) plus the attention scores, 12 · layers · width · context (PaLM's appendix
/// B). The embedding tables are looked up, not multiplied: the position table never
/// counts, the token table only as the tied output head.
pub fn flops_per_token(config: &ember_model::GptConfig) -> f64 {
    let attention = 12 * config.n_layers * config.emb_dim * config.context_length;
    let mut lookups = config.context_length * config.emb_dim;
    if !config.tie_embeddings {
        lookups += config.vocab_size * config.emb_dim;
    }
    (6 * (config.num_params() - lookups) + attention) as f64
}

/// The training and validation windows of a run.
pub struct TrainData {
    /// Training windows.
    pub train: Box<dyn WindowSource>,
    /// Validation windows.
    pub val: Box<dyn WindowSource>,
}

impl TrainData {
    /// A text file is split by characters (`train_ratio`, the book's 90/10) and
    /// tokenized; a directory is read as `ember prepare` shards (`train_*.bin`,
    /// `val_*.bin`) through memory maps.
    pub fn load(config: &PretrainConfig, tokenizer: &Gpt2Tokenizer) -> Result<Self, TrainError> {
        let path = &config.data.path;
        let max_length = config.model.context_length;
        let stride = config.data.stride.unwrap_or(max_length);
        let what = |part: &str| format!("{} ({part})", path.display());
        if path.is_dir() {
            let open = |split: &str, part: &str| {
                ShardDataset::open(path, split, max_length, stride)
                    .map_err(|e| TrainError::data(what(part), e))
            };
            return Ok(Self {
                train: Box::new(open("train", "training shards")?),
                val: Box::new(open("val", "validation shards")?),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| TrainError::Corrupt {
            path: path.clone(),
            message: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        })?;
        if text.trim().is_empty() {
            return Err(TrainError::Corrupt {
                path: path.clone(),
                message: "the file is empty".into(),
            });
        }
        let (train_text, val_text) = split_text(&text, config.data.train_ratio);
        // The whole text may hold "<|endoftext|>" between documents.
        let windows = |part: &str, name: &str| {
            let ids = tokenizer
                .encode(part, true)
                .map_err(|e| TrainError::data(what("tokenizing"), e.into()))?;
            SlidingWindowDataset::new(ids, max_length, stride)
                .map_err(|e| TrainError::data(what(name), e))
        };
        Ok(Self {
            train: Box::new(windows(train_text, "training split")?),
            val: Box::new(windows(val_text, "validation split")?),
        })
    }
}

/// Mean next-token loss over the first `max_batches` batches of `source` in order
/// (the book's `calc_loss_loader`), without the autodiff graph.
pub fn evaluate_loss(
    model: &GptModel,
    source: &dyn WindowSource,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
) -> Result<Option<f64>, TrainError> {
    mean_loss(source.num_windows(), batch_size, max_batches, |rows| {
        window_loss(model, source, rows, device)
    })
}

/// The loss of the windows `rows` of `source` (the book's `calc_loss_batch`).
fn window_loss(
    model: &GptModel,
    source: &dyn WindowSource,
    rows: &[usize],
    device: &Device,
) -> Result<Tensor<1>, TrainError> {
    let batch = collate_windows(source, rows).map_err(|e| TrainError::data("windows", e))?;
    let (inputs, targets) = token_tensors(&batch, device);
    Ok(model.next_token_loss(inputs, targets))
}

/// Next-token prediction on sliding windows (chapter 5).
struct PretrainTask<'a> {
    config: &'a PretrainConfig,
    data: TrainData,
    tokenizer: Gpt2Tokenizer,
}

impl TrainTask for PretrainTask<'_> {
    type Model = GptModel;

    fn num_examples(&self) -> usize {
        self.data.train.num_windows()
    }

    fn batch_loss(
        &self,
        model: &GptModel,
        rows: &[usize],
        device: &Device,
    ) -> Result<Tensor<1>, TrainError> {
        window_loss(model, &*self.data.train, rows, device)
    }

    fn batch_tokens(&self, rows: &[usize]) -> u64 {
        (rows.len() * self.config.model.context_length) as u64
    }

    fn flops_per_token(&self) -> f64 {
        flops_per_token(&self.config.model)
    }

    fn evaluate(&self, model: &GptModel, device: &Device) -> Result<Evaluation, TrainError> {
        let t = &self.config.train;
        Ok(Evaluation {
            train_loss: evaluate_loss(model, &*self.data.train, t.batch_size, t.eval_iter, device)?,
            val_loss: evaluate_loss(model, &*self.data.val, t.batch_size, t.eval_iter, device)?,
            ..Default::default()
        })
    }

    fn epoch_report(&self, model: &GptModel, device: &Device) -> Option<String> {
        let t = &self.config.train;
        Some(sample_text(
            model,
            &self.tokenizer,
            &t.sample_prompt,
            t.sample_tokens,
            device,
        ))
    }
}

/// The model a pretraining run starts from: `config.init`'s weights (checked against
/// `config.model`'s shape), or new ones drawn as `config.model.weight_init` says.
pub fn initial_model(config: &PretrainConfig, device: &Device) -> Result<GptModel, TrainError> {
    Ok(match &config.init {
        None => config.model.init(device),
        Some(path) => load_model(path, Some(&config.model), device)?.into_gpt2()?,
    })
}

/// Run (or resume) the pretraining described by `config` in `run_dir`.
pub fn pretrain(
    config: &PretrainConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions<'_>,
) -> Result<PretrainOutcome, TrainError> {
    let run = Run::start(config, run_dir, device, options)?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;
    let data = TrainData::load(config, &tokenizer)?;
    let t = &config.train;
    if data.train.num_windows() / t.batch_size / t.grad_accum_steps == 0 {
        return Err(TrainError::TooLittleData(format!(
            "{}: {} training windows of {} tokens make no full step of batch_size {} x grad_accum_steps {}; \
             use more text, a smaller batch or a shorter context",
            config.data.path.display(),
            data.train.num_windows(),
            config.model.context_length,
            t.batch_size,
            t.grad_accum_steps
        )));
    }
    let model = initial_model(config, run.train_device())?;
    let task = PretrainTask {
        config,
        data,
        tokenizer,
    };
    let outcome = run.fit(&task, model)?;
    if run.writes() {
        save_model(
            &LanguageModel::Gpt2(outcome.model.valid()),
            &ModelTokenizer::gpt2()?,
            &run.dir().model(),
        )?;
    }
    let last = outcome.last_evaluation();
    Ok(PretrainOutcome {
        state: outcome.state,
        stop: outcome.stop,
        train_loss: last.train_loss,
        val_loss: last.val_loss,
        run_dir: run.dir().root().to_path_buf(),
    })
}

/// Greedy continuation of `prompt`, as the book prints after each epoch.
pub fn sample_text(
    model: &GptModel,
    tokenizer: &Gpt2Tokenizer,
    prompt: &str,
    tokens: usize,
    device: &Device,
) -> String {
    let Ok(ids) = tokenizer.encode(prompt, true) else {
        return String::new();
    };
    let config = GenerationConfig {
        max_new_tokens: tokens,
        ..Default::default()
    };
    match generate(model, &ids, &config, device, |_| {}) {
        Ok(new) => {
            let all: Vec<u32> = ids.into_iter().chain(new).collect();
            tokenizer.decode(&all).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}
