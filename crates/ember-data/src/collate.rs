//! Turning examples into the rows of one batch: the collate function of each task.
//!
//! Every function here is pure data (token ids in, row-major id arrays out); the
//! trainer turns a batch into tensors in one place.

use crate::DataError;
use crate::WindowSource;

/// Targets with this value are left out of the loss (PyTorch's default `ignore_index`,
/// which the book's chapter 7 collate uses for padding).
pub const IGNORE_INDEX: i64 = -100;

/// One batch of next-token examples, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Input token ids, `batch_size * seq_len` values.
    pub inputs: Vec<u32>,
    /// Target ids (inputs shifted by one), as `i64` so that [`IGNORE_INDEX`] fits.
    pub targets: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
}

impl TokenBatch {
    /// Row `i` of the inputs.
    pub fn input_row(&self, i: usize) -> &[u32] {
        &self.inputs[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// Row `i` of the targets.
    pub fn target_row(&self, i: usize) -> &[i64] {
        &self.targets[i * self.seq_len..(i + 1) * self.seq_len]
    }
}

/// The windows `rows` of `source`, stacked (chapter 2's data loader).
pub fn collate_windows(source: &dyn WindowSource, rows: &[usize]) -> Result<TokenBatch, DataError> {
    let seq_len = source.seq_len();
    let mut inputs = Vec::with_capacity(rows.len() * seq_len);
    let mut targets = Vec::with_capacity(rows.len() * seq_len);
    for &w in rows {
        let (input, target) = source.try_window(w)?;
        inputs.extend_from_slice(&input);
        targets.extend(target.into_iter().map(i64::from));
    }
    Ok(TokenBatch {
        inputs,
        targets,
        batch_size: rows.len(),
        seq_len,
    })
}

/// The book's `custom_collate_fn` (chapter 7): append one `pad_id` (the end of text),
/// pad with it to the longest sequence + 1, inputs = all but the last token, targets =
/// all but the first, every padding target after the first set to [`IGNORE_INDEX`], then
/// truncate to `allowed_max_length`.
///
/// `mask_prompt_len`, when given per sequence, also hides the first that many target
/// positions (the instruction and input, exercise 7.2), so only the response is learnt.
pub fn collate_instructions(
    sequences: &[&[u32]],
    pad_id: u32,
    allowed_max_length: Option<usize>,
    mask_prompt_len: Option<&[usize]>,
) -> TokenBatch {
    let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0) + 1;
    let mut seq_len = longest - 1;
    if let Some(max) = allowed_max_length {
        seq_len = seq_len.min(max);
    }
    let mut inputs = Vec::with_capacity(sequences.len() * seq_len);
    let mut targets = Vec::with_capacity(sequences.len() * seq_len);
    for (row, seq) in sequences.iter().enumerate() {
        let mut padded = seq.to_vec();
        padded.resize(longest, pad_id);
        let mut row_targets: Vec<i64> = padded[1..].iter().map(|&t| i64::from(t)).collect();
        // Position seq.len() - 1 of the targets is the real end of text; later ones pad.
        for t in row_targets.iter_mut().skip(seq.len()) {
            *t = IGNORE_INDEX;
        }
        if let Some(lens) = mask_prompt_len {
            let hide = lens[row].saturating_sub(1).min(row_targets.len());
            row_targets[..hide].fill(IGNORE_INDEX);
        }
        inputs.extend_from_slice(&padded[..seq_len]);
        targets.extend_from_slice(&row_targets[..seq_len]);
    }
    TokenBatch {
        inputs,
        targets,
        batch_size: sequences.len(),
        seq_len,
    }
}

/// One batch of labelled texts (chapter 6), row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledBatch {
    /// Token ids, every row padded or truncated to `seq_len`.
    pub inputs: Vec<u32>,
    /// One class per row.
    pub labels: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
}

/// The book's `SpamDataset` rows: each text truncated to `length` tokens and padded with
/// `pad_id` to it, with its label.
pub fn collate_labeled(
    texts: &[&[u32]],
    labels: &[i64],
    pad_id: u32,
    length: usize,
) -> LabeledBatch {
    let mut inputs = Vec::with_capacity(texts.len() * length);
    for text in texts {
        let kept = &text[..text.len().min(length)];
        inputs.extend_from_slice(kept);
        inputs.extend(std::iter::repeat_n(pad_id, length - kept.len()));
    }
    LabeledBatch {
        inputs,
        labels: labels.to_vec(),
        batch_size: texts.len(),
        seq_len: length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn instruction_collate_matches_the_books_fixture() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/collate.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let batch: Vec<Vec<u32>> = serde_json::from_value(fixture["batch"].clone()).unwrap();
        let rows: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
        for case in fixture["cases"].as_array().unwrap() {
            let max = case["allowed_max_length"].as_u64().map(|v| v as usize);
            let got = collate_instructions(&rows, 50256, max, None);
            let inputs: Vec<Vec<u32>> = serde_json::from_value(case["inputs"].clone()).unwrap();
            let targets: Vec<Vec<i64>> = serde_json::from_value(case["targets"].clone()).unwrap();
            assert_eq!(got.inputs, inputs.concat(), "{max:?}");
            assert_eq!(got.targets, targets.concat(), "{max:?}");
            let shape: Vec<usize> = serde_json::from_value(case["inputs_shape"].clone()).unwrap();
            assert_eq!(vec![got.batch_size, got.seq_len], shape);
        }
    }

    #[test]
    fn prompt_masking_hides_the_instruction() {
        let got = collate_instructions(&[&[1, 2, 3, 4]], 50256, None, Some(&[3]));
        // Targets 2, 3 come from the prompt; 4 and the end of text are learnt.
        assert_eq!(got.targets, vec![IGNORE_INDEX, IGNORE_INDEX, 4, 50256]);
    }

    #[test]
    fn labeled_rows_are_truncated_and_padded() {
        let got = collate_labeled(&[&[1, 2, 3], &[4]], &[1, 0], 9, 2);
        assert_eq!(got.inputs, vec![1, 2, 4, 9]);
        assert_eq!(
            (got.batch_size, got.seq_len, got.labels),
            (2, 2, vec![1, 0])
        );
    }
}
