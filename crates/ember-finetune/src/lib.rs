//! Fine-tuning, chapters 6 and 7 of *Build a Large Language Model (From Scratch)*, on
//! ember-train's run layer: each run is a task (its data, its loss, its evaluation),
//! the rest is shared.
//!
//! ```
//! use ember_finetune::numpy_rng::RandomState;
//!
//! // `np.random.RandomState(123).permutation(10)`: the book's chapter 6 rows come out
//! // exactly as NumPy picks them.
//! assert_eq!(RandomState::new(123).permutation(10), [4, 0, 7, 5, 8, 3, 1, 6, 9, 2]);
//! ```
//!
//! - [`spam`]: the SMS Spam Collection read as pandas reads it, balanced and split
//!   exactly as the book does, through a port of NumPy's `RandomState` ([`numpy_rng`]);
//! - [`classifier`]: the GPT with a classification head, partial freezing, LoRA;
//! - [`spam_finetune`]: chapter 6's run, saving and loading the classifier, classifying
//!   new text;
//! - [`instruct_finetune`]: chapter 7's run and the responses to the test entries for
//!   the judge (the Alpaca prompt, split and collate are `ember_data`'s);
//! - `judge` (feature `judge`, on by default): section 7.8's LLM judge, scoring the
//!   responses through Ollama or an OpenAI-compatible server;
//! - [`dpo`]: the DPO loss and the log-probabilities it compares (the chapter 7
//!   bonus); [`dpo_finetune`]: its run on preference pairs, before/after measures;
//! - [`base`]: the model a run starts from, LoRA, the shared settings checks;
//! - [`error`]: the errors of the runs, [`FinetuneError`].

#![warn(missing_docs)]

pub mod base;
pub mod classifier;
pub mod dpo;
pub mod dpo_finetune;
pub mod error;
pub mod instruct_finetune;
#[cfg(feature = "judge")]
pub mod judge;
pub mod numpy_rng;
pub mod spam;
pub mod spam_finetune;

pub use error::FinetuneError;
