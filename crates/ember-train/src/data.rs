//! Feeding the trainer: text files or token shards into batches of tensors.

use burn::prelude::*;
use ember_data::{
    BatchOptions, Batcher, ShardDataset, SlidingWindowDataset, WindowSource, split_text,
};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};

use crate::config::PretrainConfig;
use crate::fit::TrainError;

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
        let data_error = |what: &str, e: &dyn std::fmt::Display| {
            TrainError::Data(format!("{} ({what}): {e}", path.display()))
        };
        if path.is_dir() {
            let train = ShardDataset::open(path, "train", max_length, stride)
                .map_err(|e| data_error("training shards", &e))?;
            let val = ShardDataset::open(path, "val", max_length, stride)
                .map_err(|e| data_error("validation shards", &e))?;
            return Ok(Self {
                train: Box::new(train),
                val: Box::new(val),
            });
        }
        let bytes = std::fs::read(path)
            .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            TrainError::Data(format!(
                "{}: not valid UTF-8 (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        if text.trim().is_empty() {
            return Err(TrainError::Data(format!(
                "{}: the file is empty",
                path.display()
            )));
        }
        let (train_text, val_text) = split_text(&text, config.data.train_ratio);
        // The whole text may hold "<|endoftext|>" between documents.
        let encode = |part: &str| {
            tokenizer
                .encode(part, true)
                .map_err(|e| data_error("tokenizing", &e))
        };
        let train = SlidingWindowDataset::new(encode(train_text)?, max_length, stride)
            .map_err(|e| data_error("training split", &e))?;
        let val = SlidingWindowDataset::new(encode(val_text)?, max_length, stride)
            .map_err(|e| data_error("validation split", &e))?;
        Ok(Self {
            train: Box::new(train),
            val: Box::new(val),
        })
    }
}

/// The micro-batches of one epoch: window indices, shuffled by a generator seeded from
/// `seed` and `epoch` (so any epoch can be rebuilt on resume), the last partial batch
/// dropped (the book's `drop_last=True` for training).
pub fn epoch_batches(
    source: &dyn WindowSource,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    epoch: usize,
) -> Result<Vec<Vec<usize>>, TrainError> {
    let options = BatchOptions {
        batch_size,
        shuffle,
        seed,
        drop_last: true,
    };
    let batcher = Batcher::new(source, options).map_err(|e| TrainError::Data(e.to_string()))?;
    let order = batcher.epoch_order(epoch as u64);
    Ok(order
        .chunks_exact(batch_size)
        .map(<[usize]>::to_vec)
        .collect())
}

/// Input and target tensors for the windows `indices` of `source`.
///
/// # Shapes
/// - returns `([batch, max_length], [batch, max_length])`
pub fn make_batch(
    source: &dyn WindowSource,
    indices: &[usize],
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for &i in indices {
        let (x, y) = source.window(i);
        inputs.extend(x.iter().map(|&t| t as i64));
        targets.extend(y.iter().map(|&t| t as i64));
    }
    let seq_len = inputs.len() / indices.len().max(1);
    let shape = [indices.len(), seq_len];
    (
        Tensor::from_data(TensorData::new(inputs, shape), device),
        Tensor::from_data(TensorData::new(targets, shape), device),
    )
}
