//! Sliding-window next-token datasets (the book's `GPTDatasetV1`) and the text split of chapter 5.

use ember_tokenizer::Tokenizer;

use crate::DataError;

/// Something that yields `(input, target)` windows of `seq_len` tokens, `target` being `input`
/// shifted left by one token. Implemented by [`SlidingWindowDataset`] (in memory) and
/// [`crate::ShardDataset`] (memory-mapped token shards); [`crate::Batcher`] batches either.
pub trait WindowSource: Send + Sync {
    /// Number of windows.
    fn num_windows(&self) -> usize;

    /// Tokens per window (the context length, `max_length`).
    fn seq_len(&self) -> usize;

    /// Window `i` as `(input, target)`, each `seq_len` tokens long.
    ///
    /// # Panics
    /// If `i >= self.num_windows()` (like slice indexing); use [`WindowSource::try_window`] for a
    /// checked version.
    fn window(&self, i: usize) -> (Vec<u32>, Vec<u32>);

    /// Checked [`WindowSource::window`].
    fn try_window(&self, i: usize) -> Result<(Vec<u32>, Vec<u32>), DataError> {
        let len = self.num_windows();
        if i >= len {
            return Err(DataError::OutOfRange {
                what: "window",
                index: i,
                len,
            });
        }
        Ok(self.window(i))
    }
}

/// Number of windows for `num_tokens` tokens: `len(range(0, num_tokens - max_length, stride))`.
pub fn num_sliding_windows(num_tokens: usize, max_length: usize, stride: usize) -> usize {
    if stride == 0 || num_tokens <= max_length {
        0
    } else {
        (num_tokens - max_length).div_ceil(stride)
    }
}

pub(crate) fn check_window_args(
    num_tokens: usize,
    max_length: usize,
    stride: usize,
) -> Result<(), DataError> {
    if max_length == 0 {
        return Err(DataError::InvalidArgument(
            "max_length must be at least 1".into(),
        ));
    }
    if stride == 0 {
        return Err(DataError::InvalidArgument(
            "stride must be at least 1".into(),
        ));
    }
    if num_tokens <= max_length {
        return Err(DataError::TooFewTokens {
            num_tokens,
            max_length,
        });
    }
    Ok(())
}

/// The book's `GPTDatasetV1`: windows of `max_length` tokens starting at
/// `0, stride, 2*stride, ...` while `start < len - max_length`; the target is the input shifted by
/// one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindowDataset {
    tokens: Vec<u32>,
    max_length: usize,
    stride: usize,
}

impl SlidingWindowDataset {
    /// Creates the dataset. Errors if `max_length` or `stride` is 0, or if there are not more than
    /// `max_length` tokens.
    pub fn new(tokens: Vec<u32>, max_length: usize, stride: usize) -> Result<Self, DataError> {
        check_window_args(tokens.len(), max_length, stride)?;
        Ok(Self {
            tokens,
            max_length,
            stride,
        })
    }

    /// Tokenizes `text` (special tokens such as `<|endoftext|>` allowed, as in the book) and
    /// builds the dataset.
    pub fn from_text(
        text: &str,
        tokenizer: &dyn Tokenizer,
        max_length: usize,
        stride: usize,
    ) -> Result<Self, DataError> {
        let tokens = tokenizer.encode(text, true)?;
        Self::new(tokens, max_length, stride)
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        num_sliding_windows(self.tokens.len(), self.max_length, self.stride)
    }

    /// Always `false` (construction guarantees at least one window); for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Window `i` as `(input, target)` slices, or `None` if `i >= len()`.
    pub fn get(&self, i: usize) -> Option<(&[u32], &[u32])> {
        if i >= self.len() {
            return None;
        }
        let start = i * self.stride;
        Some((
            &self.tokens[start..start + self.max_length],
            &self.tokens[start + 1..start + self.max_length + 1],
        ))
    }

    /// All tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Window length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Distance between window starts.
    pub fn stride(&self) -> usize {
        self.stride
    }
}

impl WindowSource for SlidingWindowDataset {
    fn num_windows(&self) -> usize {
        self.len()
    }

    fn seq_len(&self) -> usize {
        self.max_length
    }

    fn window(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        let (input, target) = self.get(i).unwrap_or_else(|| {
            panic!("window index {i} out of range (num_windows {})", self.len())
        });
        (input.to_vec(), target.to_vec())
    }
}

/// Splits `text` at character (not byte) index `int(train_ratio * number_of_chars)`, like the
/// book's `split_idx = int(train_ratio * len(text))`. `train_ratio` is clamped to `[0, 1]`
/// (NaN counts as 0).
pub fn split_text(text: &str, train_ratio: f64) -> (&str, &str) {
    let ratio = if train_ratio.is_nan() {
        0.0
    } else {
        train_ratio.clamp(0.0, 1.0)
    };
    let num_chars = text.chars().count();
    let split_chars = ((ratio * num_chars as f64) as usize).min(num_chars);
    let byte = text
        .char_indices()
        .nth(split_chars)
        .map_or(text.len(), |(b, _)| b);
    text.split_at(byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_a_short_sequence() {
        let ds = SlidingWindowDataset::new((0..10).collect(), 4, 3).unwrap();
        // starts 0, 3 (6 is not < 10 - 4)
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.get(1).unwrap(), (&[3, 4, 5, 6][..], &[4, 5, 6, 7][..]));
        assert!(ds.get(2).is_none());
        assert_eq!(ds.window(0), (vec![0, 1, 2, 3], vec![1, 2, 3, 4]));
        assert!(ds.try_window(2).is_err());
    }

    #[test]
    fn bad_arguments() {
        let err = SlidingWindowDataset::new(vec![1, 2, 3, 4], 4, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "text has 4 tokens, needs more than max_length 4"
        );
        assert!(SlidingWindowDataset::new(vec![1, 2, 3], 1, 0).is_err());
        assert!(SlidingWindowDataset::new(vec![1, 2, 3], 0, 1).is_err());
    }

    #[test]
    fn split_counts_characters() {
        assert_eq!(split_text("ééééé", 0.6), ("ééé", "éé"));
        assert_eq!(split_text("abc", 1.5), ("abc", ""));
        assert_eq!(split_text("abc", -1.0), ("", "abc"));
        assert_eq!(split_text("", 0.9), ("", ""));
    }
}
