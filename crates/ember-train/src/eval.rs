//! Evaluation over the first batches of a dataset in order (the book's
//! `calc_loss_loader` with `num_batches`), the loss of a whole text (perplexity), and
//! the one place where a collated batch becomes tensors.

use burn::prelude::*;
use ember_data::{LabeledBatch, TokenBatch, evaluation_batches};
use ember_model::CausalLm;

use crate::error::TrainError;
use crate::loss::{cross_entropy, perplexity};

/// The mean next-token loss of a text ([`text_loss`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextLoss {
    /// Mean cross-entropy over the predicted tokens (nats).
    pub loss: f64,
    /// Tokens predicted: every token of the text but the first.
    pub predicted: usize,
}

impl TextLoss {
    /// `exp(loss)`.
    pub fn perplexity(&self) -> f64 {
        perplexity(self.loss)
    }
}

/// The mean next-token loss of the token ids `ids` under `model`, in windows of the
/// model's context length where the text does not fit in one: each window predicts
/// `context` tokens from the ones before them within the window (so a token's history
/// restarts at each window, as in the book's data loader without overlap). `None` for
/// fewer than 2 tokens. `on_window` sees each window's first token's position and its
/// logits `[1, tokens, vocab]` (to keep them, or stop with an error).
pub fn text_loss<M: CausalLm, E>(
    model: &M,
    ids: &[u32],
    device: &Device,
    mut on_window: impl FnMut(usize, &Tensor<3>) -> Result<(), E>,
) -> Result<Option<TextLoss>, E> {
    if ids.len() < 2 {
        return Ok(None);
    }
    let context = model.context_length();
    let to_tensor = |s: &[u32]| {
        let data: Vec<i64> = s.iter().map(|&i| i64::from(i)).collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [1, s.len()]), device)
    };
    let (mut total, mut predicted, mut start) = (0.0f64, 0usize, 0usize);
    while start + 1 < ids.len() {
        let end = (start + context + 1).min(ids.len());
        let window = &ids[start..end];
        let n = window.len() - 1;
        let logits = model.logits(to_tensor(&window[..n]));
        on_window(start, &logits)?;
        let loss: f32 = cross_entropy(logits, to_tensor(&window[1..])).into_scalar();
        total += f64::from(loss) * n as f64;
        predicted += n;
        start += context;
    }
    Ok(Some(TextLoss {
        loss: total / predicted as f64,
        predicted,
    }))
}

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

#[cfg(test)]
mod tests {
    // The tests run on ndarray, deprecated in Burn 0.22.
    #![allow(deprecated)]

    use ember_model::GptConfig;

    use super::*;

    /// A text three times the context is read in windows that each start afresh, and
    /// the loss is the mean over every predicted token.
    #[test]
    fn a_long_text_is_read_in_windows_of_the_context() {
        let device = Device::ndarray();
        let model = GptConfig {
            context_length: 4,
            drop_rate: 0.0,
            ..GptConfig::tiny()
        }
        .init(&device);
        let ids: Vec<u32> = (0..10).map(|i| (i * 37 % 50) as u32).collect();
        let mut starts = Vec::new();
        let got = text_loss(&model, &ids, &device, |start, logits| {
            starts.push((start, logits.dims()[1]));
            Ok::<_, TrainError>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(starts, [(0, 4), (4, 4), (8, 1)]);
        assert_eq!(got.predicted, 9);
        // Each window on its own, weighted by the tokens it predicts.
        let window_loss = |window: &[u32]| {
            let n = window.len() - 1;
            let t = |s: &[u32]| {
                let data: Vec<i64> = s.iter().map(|&i| i64::from(i)).collect();
                Tensor::<2, Int>::from_data(TensorData::new(data, [1, s.len()]), &device)
            };
            let loss: f32 =
                cross_entropy(model.logits(t(&window[..n])), t(&window[1..])).into_scalar();
            f64::from(loss) * n as f64
        };
        let want =
            (window_loss(&ids[0..5]) + window_loss(&ids[4..9]) + window_loss(&ids[8..10])) / 9.0;
        assert!((got.loss - want).abs() < 1e-6, "{} vs {want}", got.loss);
        assert!((got.perplexity() - want.exp()).abs() < 1e-4);
        let none = text_loss(&model, &ids[..1], &device, |_, _| Ok::<_, TrainError>(()));
        assert_eq!(none.unwrap(), None);
    }
}
