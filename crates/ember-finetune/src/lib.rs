//! Fine-tuning, chapters 6 and 7 of *Build a Large Language Model (From Scratch)*.
//!
//! - [`spam`]: the SMS Spam Collection read as pandas reads it, balanced and split
//!   exactly as the book does, through a port of NumPy's `RandomState` ([`numpy_rng`]);
//! - [`classifier`]: the GPT with a classification head, partial freezing, LoRA;
//! - [`spam_finetune`]: chapter 6's run on ember-train's loop, saving and loading the
//!   classifier, classifying new text;
//! - [`instruct`]: the Alpaca prompt, the 85/10/5 split and the book's collate;
//! - [`instruct_finetune`]: chapter 7's run on the same loop, and the responses to the
//!   test entries for the judge.

pub mod classifier;
pub mod instruct;
pub mod instruct_finetune;
pub mod numpy_rng;
pub mod spam;
pub mod spam_finetune;
