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

/// One preference pair, tokenized: the prompt followed by each response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferencePair<'a> {
    /// The prompt and the preferred response.
    pub chosen: &'a [u32],
    /// The prompt and the dispreferred response.
    pub rejected: &'a [u32],
    /// Leading tokens of both sequences left out of the log-probabilities (the prompt).
    pub prompt_len: usize,
}

/// The DPO notebook's `custom_collate_fn` as a next-token batch: the chosen sequences
/// of `pairs` in rows `0..n`, the rejected ones in rows `n..2n`, all padded with `pad_id`
/// to one length and truncated to `allowed_max_length` tokens.
///
/// Target `t` (the prediction of token `t + 1`) counts when token `t + 1` is neither
/// prompt (the first `prompt_len`) nor padding nor cut off; every other target is
/// [`IGNORE_INDEX`]. The notebook pads one token further and keeps the model's last
/// position, whose prediction no label uses: causal attention makes the counted
/// log-probabilities the same.
pub fn collate_preferences(
    pairs: &[PreferencePair<'_>],
    pad_id: u32,
    allowed_max_length: Option<usize>,
) -> TokenBatch {
    let longest = pairs
        .iter()
        .map(|p| p.chosen.len().max(p.rejected.len()))
        .max()
        .unwrap_or(0);
    let tokens = allowed_max_length.map_or(longest, |max| longest.min(max));
    let seq_len = tokens.saturating_sub(1);
    let mut inputs = Vec::with_capacity(2 * pairs.len() * seq_len);
    let mut targets = Vec::with_capacity(2 * pairs.len() * seq_len);
    let sequences = pairs
        .iter()
        .map(|p| (p.chosen, p.prompt_len))
        .chain(pairs.iter().map(|p| (p.rejected, p.prompt_len)));
    for (seq, prompt_len) in sequences {
        let token = |j: usize| seq.get(j).copied().unwrap_or(pad_id);
        inputs.extend((0..seq_len).map(token));
        targets.extend((1..=seq_len).map(|j| {
            if j < prompt_len || j >= seq.len() {
                IGNORE_INDEX
            } else {
                i64::from(seq[j])
            }
        }));
    }
    TokenBatch {
        inputs,
        targets,
        batch_size: 2 * pairs.len(),
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

    /// The DPO notebook's collate of the first four preference pairs (tokenized by the
    /// fixture script), truncated to 64 tokens: the same ids, and a target counted
    /// exactly where the notebook's shifted mask is true.
    #[test]
    fn preference_collate_matches_the_dpo_notebook() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/dpo/reference.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ids =
            |e: &Value, key: &str| -> Vec<u32> { serde_json::from_value(e[key].clone()).unwrap() };
        let examples = fixture["examples"].as_array().unwrap();
        let seqs: Vec<(Vec<u32>, Vec<u32>, usize)> = examples
            .iter()
            .map(|e| {
                (
                    ids(e, "chosen_ids"),
                    ids(e, "rejected_ids"),
                    ids(e, "prompt_ids").len() + 2,
                )
            })
            .collect();
        let pairs: Vec<PreferencePair> = seqs
            .iter()
            .map(|(chosen, rejected, prompt_len)| PreferencePair {
                chosen,
                rejected,
                prompt_len: *prompt_len,
            })
            .collect();
        let got = collate_preferences(&pairs, 50256, Some(64));
        assert_eq!((got.batch_size, got.seq_len), (8, 63));
        let rows = |key: &str| -> Vec<Vec<i64>> {
            serde_json::from_value(fixture["batch"][key].clone()).unwrap()
        };
        let (chosen, rejected) = (rows("chosen_input_ids"), rows("rejected_input_ids"));
        let (chosen_mask, rejected_mask) = (rows("chosen_mask"), rows("rejected_mask"));
        let mut counted = Vec::new();
        for (row, (ids, mask)) in chosen
            .iter()
            .zip(&chosen_mask)
            .chain(rejected.iter().zip(&rejected_mask))
            .enumerate()
        {
            let inputs: Vec<u32> = ids[..63].iter().map(|&t| t as u32).collect();
            assert_eq!(got.input_row(row), inputs.as_slice(), "row {row}");
            let targets: Vec<i64> = (1..64)
                .map(|j| if mask[j] == 1 { ids[j] } else { IGNORE_INDEX })
                .collect();
            assert_eq!(got.target_row(row), targets.as_slice(), "row {row}");
            counted.push(targets.iter().filter(|&&t| t != IGNORE_INDEX).count());
        }
        let want: Vec<usize> = ["chosen", "rejected"]
            .iter()
            .flat_map(|k| {
                serde_json::from_value::<Vec<usize>>(fixture["counted_labels_per_row"][k].clone())
                    .unwrap()
            })
            .collect();
        assert_eq!(counted, want);
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
