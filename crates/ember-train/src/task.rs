//! What differs between the chapters' training runs, stated once: a [`TrainTask`].
//!
//! Pretraining, spam classification, instruction fine-tuning and DPO differ in the
//! model, how a batch of examples becomes a loss, and what an evaluation measures.
//! Everything else (batching epochs, accumulation, clipping, schedules, metrics, plots,
//! checkpoints, interruption, exact resume) is the trainer's.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::prelude::*;

use crate::error::TrainError;

/// One training problem for the trainer. `Sync`: the replicas of a data-parallel step
/// compute their parts' losses on threads of their own.
pub trait TrainTask: Sync {
    /// The model being trained.
    type Model: Module;

    /// Number of training examples (windows, messages, entries, pairs); the trainer
    /// batches them with the run's [`ember_data::EpochPlan`].
    fn num_examples(&self) -> usize;

    /// Mean loss of the training examples `rows`, computed on `device` (the autodiff
    /// device).
    fn batch_loss(
        &self,
        model: &Self::Model,
        rows: &[usize],
        device: &Device,
    ) -> Result<Tensor<1>, TrainError>;

    /// How many terms the mean of [`TrainTask::batch_loss`] over `rows` averages: one
    /// per example by default; the counted target tokens for a loss averaged over
    /// tokens. Data-parallel training weighs each replica's share of a batch by it, so
    /// that a batch split across devices has the loss (and gradients) of the whole.
    fn loss_weight(&self, rows: &[usize]) -> f64 {
        rows.len() as f64
    }

    /// Tokens the examples `rows` feed the model, for throughput.
    fn batch_tokens(&self, rows: &[usize]) -> u64;

    /// FLOPs of one training token, for the MFU estimate (0: none reported).
    fn flops_per_token(&self) -> f64 {
        0.0
    }

    /// Evaluates `model` (already `valid()`: no autodiff graph) on `device`.
    fn evaluate(&self, model: &Self::Model, device: &Device) -> Result<Evaluation, TrainError>;

    /// One line for `samples.txt` after each epoch (and when a run stops inside one):
    /// a text sample, accuracies.
    fn epoch_report(&self, _model: &Self::Model, _device: &Device) -> Option<String> {
        None
    }
}

/// What one evaluation measured (each `None` when the task does not measure it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Mean loss on training batches.
    pub train_loss: Option<f64>,
    /// Mean loss on validation batches.
    pub val_loss: Option<f64>,
    /// Accuracy on training batches.
    pub train_accuracy: Option<f64>,
    /// Accuracy on validation batches.
    pub val_accuracy: Option<f64>,
    /// Anything else, by name (written into the metrics line).
    pub extra: BTreeMap<String, f64>,
}
