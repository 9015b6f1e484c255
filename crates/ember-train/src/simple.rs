//! Listing 5.3, `train_model_simple`, as the book writes it: the whole training loop of
//! chapter 5 in one readable function, for reading next to the book.
//!
//! [`crate::fit`] runs the same steps (and is tested to give the same losses) with what
//! a real run needs around them: accumulation, clipping, schedules, metrics, plots,
//! checkpoints, resumption.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ember_data::{Batcher, WindowSource};
use ember_model::{Architecture, GptModel};
use ember_tokenizer::Gpt2Tokenizer;

use crate::error::TrainError;
use crate::eval::token_tensors;
use crate::pretrain::{evaluate_loss, sample_text};

/// What `train_model_simple` returns (`train_losses`, `val_losses`,
/// `track_tokens_seen`), and what it prints: the loss of every step and a text
/// sample after every epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimpleTrainingLog {
    /// The training loss at each evaluation.
    pub train_losses: Vec<f64>,
    /// The validation loss at each evaluation.
    pub val_losses: Vec<f64>,
    /// Tokens seen at each evaluation.
    pub track_tokens_seen: Vec<u64>,
    /// The loss of every optimizer step's batch, in order.
    pub step_losses: Vec<f64>,
    /// The sample printed after each epoch.
    pub samples: Vec<String>,
}

/// The book's `evaluate_model`: the mean loss over the first `eval_iter` batches of
/// the training and of the validation windows (in order: Ember evaluates fixed
/// batches, where a shuffled PyTorch loader would draw new ones each time).
pub fn evaluate_model(
    model: &GptModel,
    train: &dyn WindowSource,
    val: &dyn WindowSource,
    batch_size: usize,
    eval_iter: usize,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let loss = |source| evaluate_loss(model, source, batch_size, eval_iter, device);
    Ok((
        loss(train)?.unwrap_or(f64::NAN),
        loss(val)?.unwrap_or(f64::NAN),
    ))
}

/// Listing 5.3: for each epoch, for each batch: loss, backward, optimizer step; every
/// `eval_freq` steps an evaluation; after each epoch a sample. `device` is the
/// autodiff device the model is on.
#[allow(clippy::too_many_arguments)]
pub fn train_model_simple(
    mut model: GptModel,
    train_loader: &Batcher<'_>,
    val_loader: &Batcher<'_>,
    optimizer: &mut ModuleOptimizer,
    lr: f64,
    device: &Device,
    num_epochs: usize,
    eval_freq: usize,
    eval_iter: usize,
    start_context: &str,
    tokenizer: &Gpt2Tokenizer,
) -> Result<(GptModel, SimpleTrainingLog), TrainError> {
    let mut log = SimpleTrainingLog::default();
    let mut tokens_seen = 0u64;
    let mut global_step = 0usize;
    let eval_device = device.clone().inner();
    let batch_size = train_loader.plan().batch_size;
    for epoch in 0..num_epochs {
        for batch in train_loader.epoch(epoch as u64, 0) {
            // Gradients are new every step: PyTorch's `optimizer.zero_grad()`.
            let (inputs, targets) = token_tensors(&batch, device);
            let loss = model.next_token_loss(inputs, targets); // calc_loss_batch
            log.step_losses
                .push(loss.clone().into_scalar::<f32>() as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            tokens_seen += batch.inputs.len() as u64;
            global_step += 1;
            // The book counts steps from 0 and evaluates when `global_step % eval_freq == 0`.
            if (global_step - 1).is_multiple_of(eval_freq) {
                let (train_loss, val_loss) = evaluate_model(
                    &model.valid(),
                    train_loader.source(),
                    val_loader.source(),
                    batch_size,
                    eval_iter,
                    &eval_device,
                )?;
                log.train_losses.push(train_loss);
                log.val_losses.push(val_loss);
                log.track_tokens_seen.push(tokens_seen);
                tracing::info!(
                    epoch = epoch + 1,
                    step = global_step,
                    train_loss,
                    val_loss,
                    "evaluation"
                );
            }
        }
        // generate_and_print_sample
        let sample = sample_text(&model.valid(), tokenizer, start_context, 50, &eval_device);
        tracing::info!(epoch = epoch + 1, sample = %sample, "sample");
        log.samples.push(sample);
    }
    Ok((model, log))
}
