//! Evaluation over the first batches of a dataset in order (the book's
//! `calc_loss_loader` with `num_batches`), and the one place where a collated batch
//! becomes tensors.

use burn::prelude::*;
use ember_data::{LabeledBatch, TokenBatch, evaluation_batches};

use crate::error::TrainError;

/// `score` of each of the first `max_batches` batches of `len` examples in order (all
/// batches when `None`; the last may be short).
pub fn over_eval_batches<T>(
    len: usize,
    batch_size: usize,
    max_batches: Option<usize>,
    mut score: impl FnMut(&[usize]) -> Result<T, TrainError>,
) -> Result<Vec<T>, TrainError> {
    evaluation_batches(len, batch_size, max_batches)
        .into_iter()
        .map(|range| score(&range.collect::<Vec<_>>()))
        .collect()
}

/// The mean of `loss` over the first `max_batches` batches in order: the book's
/// `calc_loss_loader`. `None` without a batch.
pub fn mean_loss(
    len: usize,
    batch_size: usize,
    max_batches: usize,
    mut loss: impl FnMut(&[usize]) -> Result<Tensor<1>, TrainError>,
) -> Result<Option<f64>, TrainError> {
    let losses = over_eval_batches(len, batch_size, Some(max_batches), |rows| {
        Ok(loss(rows)?.into_scalar::<f32>() as f64)
    })?;
    Ok((!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64))
}

/// Inputs `[batch, seq]` and targets `[batch, seq]` of a next-token batch.
pub fn token_tensors(batch: &TokenBatch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch_size, batch.seq_len];
    let inputs: Vec<i64> = batch.inputs.iter().map(|&t| i64::from(t)).collect();
    (
        Tensor::from_data(TensorData::new(inputs, shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

/// Inputs `[batch, seq]` and labels `[batch]` of a classification batch.
pub fn labeled_tensors(batch: &LabeledBatch, device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let inputs: Vec<i64> = batch.inputs.iter().map(|&t| i64::from(t)).collect();
    (
        Tensor::from_data(
            TensorData::new(inputs, [batch.batch_size, batch.seq_len]),
            device,
        ),
        Tensor::from_data(
            TensorData::new(batch.labels.clone(), [batch.batch_size]),
            device,
        ),
    )
}
