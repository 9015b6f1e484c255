//! Data pipeline for Ember (book chapters 2 and 5): sliding-window next-token datasets, seeded
//! resumable batching, and llm.c-style token shards for corpora bigger than memory.
//!
//! * [`SlidingWindowDataset`]: the book's `GPTDatasetV1` over an in-memory token list.
//! * [`ShardDataset`]: the same windows over memory-mapped `{split}_*.bin` token shards written by
//!   [`prepare_corpus`].
//! * [`WindowSource`]: what both provide; [`Batcher`] turns any of them into [`TokenBatch`]es
//!   (`[batch, seq]` row-major, targets as `i64`), optionally shuffled with a seeded ChaCha8
//!   permutation per epoch.
//! * [`split_text`]: the chapter 5 train/validation split by characters.

#![warn(missing_docs)]

mod batch;
mod error;
mod shards;
mod window;

pub use batch::{BatchOptions, Batcher, EpochIter, TokenBatch};
pub use error::DataError;
pub use shards::{
    HEADER_BYTES, HEADER_INTS, PrepareOptions, PrepareSummary, SHARD_MAGIC, SHARD_VERSION,
    ShardDataset, prepare_corpus, read_shard, write_shard,
};
pub use window::{SlidingWindowDataset, WindowSource, num_sliding_windows, split_text};
