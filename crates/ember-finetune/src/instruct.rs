//! Instruction data of chapter 7: the Alpaca prompt, the book's split and collate.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Targets with this value are left out of the loss.
pub const IGNORE_INDEX: i64 = -100;
/// `<|endoftext|>`, the padding and end-of-response token.
pub const END_OF_TEXT_ID: u32 = 50256;

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

/// Errors reading instruction data.
#[derive(Debug, thiserror::Error)]
pub enum InstructionDataError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Reads a JSON list of entries.
pub fn read_instruction_data(path: &Path) -> Result<Vec<InstructionEntry>, InstructionDataError> {
    let error = |message: String| InstructionDataError::Read {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(format!("invalid instruction data: {e}")))
}

/// The Alpaca-style prompt of listing 7.2, up to and excluding the response header.
pub fn format_input(entry: &InstructionEntry) -> String {
    let mut text = format!(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{}",
        entry.instruction
    );
    if !entry.input.is_empty() {
        text.push_str("\n\n### Input:\n");
        text.push_str(&entry.input);
    }
    text
}

/// The full training text: the prompt, the response header and the response.
pub fn format_example(entry: &InstructionEntry) -> String {
    format!("{}\n\n### Response:\n{}", format_input(entry), entry.output)
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

/// A collated batch: row-major `[batch, seq_len]` inputs and targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollatedBatch {
    /// Input ids.
    pub inputs: Vec<i64>,
    /// Target ids, [`IGNORE_INDEX`] where the loss must not look.
    pub targets: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
}

impl CollatedBatch {
    /// Row `i` of the inputs.
    pub fn input_row(&self, i: usize) -> &[i64] {
        &self.inputs[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// Row `i` of the targets.
    pub fn target_row(&self, i: usize) -> &[i64] {
        &self.targets[i * self.seq_len..(i + 1) * self.seq_len]
    }
}

/// The book's `custom_collate_fn`: append one `<|endoftext|>`, pad with it to the
/// longest sequence + 1, inputs = all but the last token, targets = all but the first,
/// every padding target after the first set to [`IGNORE_INDEX`], then truncate to
/// `allowed_max_length`.
///
/// `mask_prompt_len`, when given per sequence, also hides the first that many target
/// positions (the instruction and input, exercise 7.2), so only the response is learnt.
pub fn collate(
    sequences: &[Vec<u32>],
    allowed_max_length: Option<usize>,
    mask_prompt_len: Option<&[usize]>,
) -> CollatedBatch {
    let longest = sequences.iter().map(Vec::len).max().unwrap_or(0) + 1;
    let mut seq_len = longest - 1;
    if let Some(max) = allowed_max_length {
        seq_len = seq_len.min(max);
    }
    let mut inputs = Vec::with_capacity(sequences.len() * seq_len);
    let mut targets = Vec::with_capacity(sequences.len() * seq_len);
    for (row, seq) in sequences.iter().enumerate() {
        let mut padded: Vec<i64> = seq.iter().map(|&t| t as i64).collect();
        padded.resize(longest, END_OF_TEXT_ID as i64);
        let mut row_targets: Vec<i64> = padded[1..].to_vec();
        // Position seq.len() - 1 of the targets is the real end-of-text; later ones pad.
        for t in row_targets.iter_mut().skip(seq.len()) {
            *t = IGNORE_INDEX;
        }
        if let Some(lens) = mask_prompt_len {
            let hide = lens[row].saturating_sub(1).min(row_targets.len());
            row_targets[..hide]
                .iter_mut()
                .for_each(|t| *t = IGNORE_INDEX);
        }
        inputs.extend_from_slice(&padded[..seq_len]);
        targets.extend_from_slice(&row_targets[..seq_len]);
    }
    CollatedBatch {
        inputs,
        targets,
        batch_size: sequences.len(),
        seq_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn collate_matches_the_fixture() {
        let text = std::fs::read_to_string(root().join("tests/fixtures/collate.json")).unwrap();
        let fixture: Value = serde_json::from_str(&text).unwrap();
        let batch: Vec<Vec<u32>> = serde_json::from_value(fixture["batch"].clone()).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let max = case["allowed_max_length"].as_u64().map(|v| v as usize);
            let got = collate(&batch, max, None);
            let inputs: Vec<Vec<i64>> = serde_json::from_value(case["inputs"].clone()).unwrap();
            let targets: Vec<Vec<i64>> = serde_json::from_value(case["targets"].clone()).unwrap();
            assert_eq!(got.inputs, inputs.concat(), "{max:?}");
            assert_eq!(got.targets, targets.concat(), "{max:?}");
            let shape: Vec<usize> = serde_json::from_value(case["inputs_shape"].clone()).unwrap();
            assert_eq!(vec![got.batch_size, got.seq_len], shape);
        }
    }

    #[test]
    fn prompt_masking_hides_the_instruction() {
        let got = collate(&[vec![1, 2, 3, 4]], None, Some(&[3]));
        // Targets 2, 3 come from the prompt; 4 and the end-of-text are learnt.
        assert_eq!(got.targets, vec![IGNORE_INDEX, IGNORE_INDEX, 4, 50256]);
    }

    #[test]
    fn prompt_and_split_follow_the_book() {
        let data = read_instruction_data(&root().join("datasets/instruction-data.json")).unwrap();
        assert_eq!(data.len(), 1100);
        let (train, test, val) = book_split(&data);
        assert_eq!((train.len(), test.len(), val.len()), (935, 110, 55));
        assert_eq!(
            format_example(&data[50]),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nIdentify the correct spelling of the following word.\n\n### Input:\nOcassion\n\n### Response:\nThe correct spelling is 'Occasion.'"
        );
        let no_input = InstructionEntry {
            instruction: "Say hi.".into(),
            input: String::new(),
            output: "Hi.".into(),
            model_response: None,
        };
        assert!(!format_input(&no_input).contains("### Input"));
        let err = read_instruction_data(Path::new("/nonexistent.json"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/nonexistent.json: "), "{err}");
    }
}
