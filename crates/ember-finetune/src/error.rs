//! The errors of the fine-tuning runs and of the files they write.

use std::path::PathBuf;

use ember_data::DataError;
use ember_model::{GenerateError, WeightsError};
use ember_tokenizer::TokenizerError;
use ember_train::TrainError;

use crate::spam::SpamDataError;

/// Errors of a fine-tuning run, of saving or loading its results, or of using them.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// The run itself (configuration, run directory, loop, checkpoints).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The SMS Spam Collection could not be read.
    #[error(transparent)]
    SpamData(#[from] SpamDataError),
    /// Instruction or preference data could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A model could not be read or written.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Tokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Generating a response failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A data set too small for the run.
    #[error("{}: {message}", path.display())]
    TooLittleData {
        /// The data file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// A setting that does not fit the model or the data.
    #[error("{0}")]
    Setting(String),
    /// A file of a saved classifier or adapters that is missing or wrong.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
