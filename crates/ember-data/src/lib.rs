//! Data pipeline for Ember (book chapters 2 and 5): sliding-window next-token datasets, seeded
//! resumable batching, and llm.c-style token shards for corpora bigger than memory.
//!
//! ```
//! use ember_data::SlidingWindowDataset;
//!
//! // The book's GPTDatasetV1: windows of 4 tokens, each target its input shifted by one.
//! let windows = SlidingWindowDataset::new((0..10).collect(), 4, 4)?;
//! assert_eq!(windows.len(), 2);
//! assert_eq!(windows.get(1), Some((&[4, 5, 6, 7][..], &[5, 6, 7, 8][..])));
//! # Ok::<(), ember_data::DataError>(())
//! ```
//!
//! * [`SlidingWindowDataset`]: the book's `GPTDatasetV1` over an in-memory token list.
//! * [`ShardDataset`]: the same windows over memory-mapped `{split}_*.bin` token shards written by
//!   [`prepare_corpus`].
//! * [`WindowSource`]: what both provide; [`Batcher`] turns any of them into [`TokenBatch`]es
//!   (`[batch, seq]` row-major, targets as `i64`).
//! * [`split_text`]: the chapter 5 train/validation split by characters.
//!
//! The data contract every training run shares: a dataset of examples, an [`EpochPlan`]
//! (the seeded shuffle and batching of each epoch, the one place that decides batch
//! order) and a collate function per task ([`collate_windows`] for pretraining,
//! [`collate_labeled`] for classification, [`collate_instructions`] for instruction
//! fine-tuning, [`collate_preferences`] for DPO), plus the Alpaca prompt of chapter 7 ([`format_prompt`]) and atomic,
//! checksummed file writing ([`files`]).
//!
//! # Features
//!
//! * `progress` (on by default): [`progress`] bars drawn with indicatif. Without it a
//!   bar is never drawn (the same calls compile and do nothing).

#![warn(missing_docs)]

mod batch;
mod collate;
mod error;
pub mod files;
mod instruction;
mod plan;
pub mod progress;
mod prompt;
mod shards;
mod window;

pub use batch::{Batcher, EpochIter};
pub use collate::{
    IGNORE_INDEX, LabeledBatch, PreferencePair, TokenBatch, collate_instructions, collate_labeled,
    collate_preferences, collate_windows,
};
pub use error::{DataError, error_chain};
pub use instruction::{
    InstructionEntry, PREAMBLE, PreferenceEntry, RESPONSE_HEADER, book_split, format_example,
    format_input, format_prompt, read_instruction_data, read_json_list,
};
pub use plan::{EpochPlan, evaluation_batches};
pub use prompt::{conversation_prompt, instruction_message, instruction_prompt};
pub use shards::{
    HEADER_BYTES, HEADER_INTS, PrepareOptions, PrepareSummary, SHARD_MAGIC, SHARD_VERSION,
    ShardDataset, prepare_corpus, read_shard, write_shard,
};
pub use window::{SlidingWindowDataset, WindowSource, num_sliding_windows, split_text};
