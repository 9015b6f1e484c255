//! Pretraining (chapter 5's `train_model_simple`, with appendix D's additions) as a
//! [`TrainTask`] for the shared loop [`fit`].
//!
//! A run directory holds:
//! - `config.toml`: the resolved configuration;
//! - `metrics.jsonl`: one line per optimizer step (`step`, `epoch`, `tokens_seen`,
//!   `lr`, `train_loss`, `tokens_per_sec`, `mfu`; on evaluation steps also
//!   `eval_train_loss` and `val_loss`);
//! - `samples.txt`: the text sample after each epoch;
//! - `loss.png`: training and validation loss against epochs and tokens seen;
//! - `checkpoints/step-N/` (model, optimizer and trainer state) and
//!   `checkpoints/latest` naming the newest complete one;
//! - `model/`: the final model as an Ember checkpoint (a Hugging Face GPT-2 directory).
//!
//! Resumption is exact: dropout is re-seeded from the step number, the shuffling order
//! is a function of the seed and the epoch, and checkpoints hold the optimizer's
//! moments and the parameter ids they are keyed by. A resumed run writes the same
//! metrics as an uninterrupted one.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use ember_data::WindowSource;
use ember_model::{GenerationConfig, GptModel, generate, save_checkpoint};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};

use crate::config::PretrainConfig;
use crate::data::{TrainData, epoch_batches, make_batch};
use crate::fit::{
    Evaluation, RunOptions, RunPaths, StopReason, TrainError, TrainState, TrainTask, file_error,
    fit,
};
use crate::loss::cross_entropy;

/// The result of [`pretrain`].
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// Where the run stopped.
    pub state: TrainState,
    /// Why.
    pub stop: StopReason,
    /// Last evaluated training loss.
    pub train_loss: Option<f64>,
    /// Last evaluated validation loss.
    pub val_loss: Option<f64>,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// FLOPs of one training token: 6 per parameter (forward and backward) plus the
/// attention scores, 12 · layers · width · context (PaLM's appendix B).
pub fn flops_per_token(config: &ember_model::GptConfig) -> f64 {
    let attention = 12 * config.n_layers * config.emb_dim * config.context_length;
    (6 * config.num_params() + attention) as f64
}

/// Mean loss over the first `max_batches` batches of `source` in order (the book's
/// `calc_loss_loader`), without the autodiff graph.
pub fn evaluate_loss(
    model: &GptModel,
    source: &dyn WindowSource,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
) -> Option<f64> {
    let indices: Vec<usize> = (0..source.num_windows()).collect();
    let batches: Vec<&[usize]> = indices.chunks(batch_size).take(max_batches).collect();
    if batches.is_empty() {
        return None;
    }
    let total: f64 = batches
        .iter()
        .map(|batch| {
            let (inputs, targets) = make_batch(source, batch, device);
            cross_entropy(model.forward(inputs), targets).into_scalar::<f32>() as f64
        })
        .sum();
    Some(total / batches.len() as f64)
}

/// Next-token prediction on sliding windows (chapter 5).
struct PretrainTask<'a> {
    config: &'a PretrainConfig,
    data: TrainData,
    tokenizer: Gpt2Tokenizer,
}

impl TrainTask for PretrainTask<'_> {
    type Model = GptModel;
    type Batch = Vec<usize>;

    fn batches_per_epoch(&self) -> usize {
        self.data.train.num_windows() / self.config.train.batch_size
    }

    fn epoch_batches(&self, epoch: usize) -> Result<Vec<Vec<usize>>, TrainError> {
        let t = &self.config.train;
        epoch_batches(&*self.data.train, t.batch_size, t.shuffle, t.seed, epoch)
    }

    fn batch_loss(&self, model: &GptModel, batch: &Vec<usize>, device: &Device) -> Tensor<1> {
        let (inputs, targets) = make_batch(&*self.data.train, batch, device);
        cross_entropy(model.forward(inputs), targets)
    }

    fn batch_tokens(&self, batch: &Vec<usize>) -> u64 {
        (batch.len() * self.config.model.context_length) as u64
    }

    fn flops_per_token(&self) -> f64 {
        flops_per_token(&self.config.model)
    }

    fn evaluate(&self, model: &GptModel, device: &Device) -> Evaluation {
        let t = &self.config.train;
        Evaluation {
            train_loss: evaluate_loss(model, &*self.data.train, t.batch_size, t.eval_iter, device),
            val_loss: evaluate_loss(model, &*self.data.val, t.batch_size, t.eval_iter, device),
            ..Default::default()
        }
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

/// Run (or resume) the pretraining described by `config` in `run_dir`.
pub fn pretrain(
    config: &PretrainConfig,
    run_dir: &Path,
    device: &Device,
    options: RunOptions<'_>,
) -> Result<PretrainOutcome, TrainError> {
    config.validate().map_err(TrainError::Config)?;
    let paths = RunPaths::new(run_dir);
    paths.prepare(options.resume)?;
    let tokenizer = Gpt2Tokenizer::gpt2().map_err(|e| TrainError::Config(e.to_string()))?;
    let data = TrainData::load(config, &tokenizer)?;
    let t = &config.train;
    if data.train.num_windows() / t.batch_size / t.grad_accum_steps == 0 {
        return Err(TrainError::Data(format!(
            "{}: {} training windows of {} tokens make no full step of batch_size {} x grad_accum_steps {}; \
             use more text, a smaller batch or a shorter context",
            config.data.path.display(),
            data.train.num_windows(),
            config.model.context_length,
            t.batch_size,
            t.grad_accum_steps
        )));
    }
    if options.resume {
        paths.check_resumable(config)?;
    }
    paths.write_config(config)?;

    let train_device = device.clone().autodiff();
    train_device.seed(t.seed);
    let model = config.model.init(&train_device);
    let task = PretrainTask {
        config,
        data,
        tokenizer,
    };
    let outcome = fit(&task, model, t, &paths, &train_device, options)?;
    save_checkpoint(&outcome.model.valid(), &paths.model())
        .map_err(|e| file_error(&paths.model())(e.to_string()))?;
    let last = outcome.last_evaluation();
    Ok(PretrainOutcome {
        state: outcome.state,
        stop: outcome.stop,
        train_loss: last.train_loss,
        val_loss: last.val_loss,
        run_dir: paths.root.clone(),
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
