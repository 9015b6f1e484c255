//! Fine-tuning, chapters 6 and 7 of *Build a Large Language Model (From Scratch)*.
//!
//! So far: the data side of chapter 6 ([`spam`]: the SMS Spam Collection read as
//! pandas reads it, balanced and split exactly as the book does, through a port of
//! NumPy's `RandomState` in [`numpy_rng`]) and of chapter 7 ([`instruct`]: the Alpaca
//! prompt, the 85/10/5 split and the book's collate).

pub mod classifier;
pub mod instruct;
pub mod numpy_rng;
pub mod spam;
