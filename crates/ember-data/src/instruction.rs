//! Instruction data (chapter 7): the entries, the book's split and the Alpaca prompt.
//!
//! Every place that builds a prompt (instruction fine-tuning, its responses, the chat
//! command for GPT-2 models without a chat template, the server) uses these functions,
//! so training and inference see the same text.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// The Alpaca preamble of listing 7.2.
pub const PREAMBLE: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

/// What separates the prompt from the response.
pub const RESPONSE_HEADER: &str = "\n\n### Response:\n";

/// One entry of `instruction-data.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionEntry {
    /// What to do.
    pub instruction: String,
    /// Optional input the instruction refers to (may be empty).
    #[serde(default)]
    pub input: String,
    /// The desired response.
    pub output: String,
    /// A model's response, once generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_response: Option<String>,
}

impl InstructionEntry {
    /// An entry asking `instruction` with no input, no reference answer.
    pub fn question(instruction: impl Into<String>) -> Self {
        Self {
            instruction: instruction.into(),
            input: String::new(),
            output: String::new(),
            model_response: None,
        }
    }
}

/// One entry of `instruction-data-with-preference.json` (the DPO bonus of chapter 7):
/// an instruction with a preferred and a dispreferred response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceEntry {
    /// What to do.
    pub instruction: String,
    /// Optional input the instruction refers to (may be empty).
    #[serde(default)]
    pub input: String,
    /// The instruction data's reference response (what a judge compares with).
    #[serde(default)]
    pub output: String,
    /// The response to prefer.
    pub chosen: String,
    /// The response to avoid.
    pub rejected: String,
}

impl PreferenceEntry {
    /// The instruction part, as chapter 7 asks and judges it.
    pub fn instruction_entry(&self) -> InstructionEntry {
        InstructionEntry {
            instruction: self.instruction.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            model_response: None,
        }
    }
}

/// Reads a JSON list of entries (instructions, or preference pairs with `T` =
/// [`PreferenceEntry`]).
pub fn read_json_list<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| DataError::InvalidJson {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a JSON list of instruction entries.
pub fn read_instruction_data(path: &Path) -> Result<Vec<InstructionEntry>, DataError> {
    read_json_list(path)
}

/// The Alpaca-style prompt of listing 7.2, up to and excluding the response header.
pub fn format_input(entry: &InstructionEntry) -> String {
    let mut text = format!("{PREAMBLE}\n\n### Instruction:\n{}", entry.instruction);
    if !entry.input.is_empty() {
        text.push_str("\n\n### Input:\n");
        text.push_str(&entry.input);
    }
    text
}

/// The prompt a model continues to answer `entry`: [`format_input`] and the response
/// header.
pub fn format_prompt(entry: &InstructionEntry) -> String {
    format!("{}{RESPONSE_HEADER}", format_input(entry))
}

/// The full training text: the prompt, the response header and `response`.
pub fn format_example(entry: &InstructionEntry, response: &str) -> String {
    format!("{}{response}", format_prompt(entry))
}

/// The book's split, in file order: 85% train, 10% test, the rest (5%) validation.
/// Returns `(train, test, validation)`, 935/110/55 for the book's 1100 entries.
pub fn book_split<T: Clone>(data: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    let train_end = (data.len() as f64 * 0.85) as usize;
    let test_end = train_end + (data.len() as f64 * 0.1) as usize;
    (
        data[..train_end].to_vec(),
        data[train_end..test_end].to_vec(),
        data[test_end..].to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn prompt_and_split_follow_the_book() {
        let data = read_instruction_data(&root().join("datasets/instruction-data.json")).unwrap();
        assert_eq!(data.len(), 1100);
        let (train, test, val) = book_split(&data);
        assert_eq!((train.len(), test.len(), val.len()), (935, 110, 55));
        assert_eq!(
            format_example(&data[50], &data[50].output),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nIdentify the correct spelling of the following word.\n\n### Input:\nOcassion\n\n### Response:\nThe correct spelling is 'Occasion.'"
        );
        assert!(!format_input(&InstructionEntry::question("Say hi.")).contains("### Input"));
        let err = read_instruction_data(Path::new("/nonexistent.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.json"), "{err}");
    }
}
