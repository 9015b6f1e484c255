//! Mini-batching of windows with seeded, resumable shuffling (the book's `DataLoader`).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{DataError, WindowSource};

/// One mini-batch, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Input token ids, `batch_size * seq_len` values.
    pub inputs: Vec<u32>,
    /// Target ids (inputs shifted by one), as `i64` so that an ignore index such as -100 fits.
    pub targets: Vec<i64>,
    /// Rows in this batch (smaller than the configured batch size for a final partial batch).
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
}

/// How [`Batcher`] forms batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Windows per batch (at least 1).
    pub batch_size: usize,
    /// Visit windows in a seeded random order that changes every epoch.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Drop the final batch if it has fewer than `batch_size` windows.
    pub drop_last: bool,
}

impl Default for BatchOptions {
    /// The book's training loader settings with batch size 2: shuffle, drop_last, seed 123.
    fn default() -> Self {
        Self {
            batch_size: 2,
            shuffle: true,
            seed: 123,
            drop_last: true,
        }
    }
}

/// Forms [`TokenBatch`]es from any [`WindowSource`].
///
/// The window order of epoch `e` is a pure function of `(seed, e)` ([`Batcher::epoch_order`]),
/// and [`Batcher::batch`] gives random access, so training can resume at any `(epoch, batch)`.
#[derive(Clone, Copy)]
pub struct Batcher<'a> {
    source: &'a dyn WindowSource,
    options: BatchOptions,
}

impl std::fmt::Debug for Batcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("num_windows", &self.source.num_windows())
            .field("options", &self.options)
            .finish()
    }
}

impl<'a> Batcher<'a> {
    /// Creates a batcher; errors if `batch_size` is 0.
    pub fn new(source: &'a dyn WindowSource, options: BatchOptions) -> Result<Self, DataError> {
        if options.batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        Ok(Self { source, options })
    }

    /// The options.
    pub fn options(&self) -> BatchOptions {
        self.options
    }

    /// The window source.
    pub fn source(&self) -> &'a dyn WindowSource {
        self.source
    }

    /// Batches per epoch: `floor(n / batch_size)` with `drop_last`, else `ceil(n / batch_size)`.
    pub fn num_batches(&self) -> usize {
        let n = self.source.num_windows();
        if self.options.drop_last {
            n / self.options.batch_size
        } else {
            n.div_ceil(self.options.batch_size)
        }
    }

    /// Window indices in the order epoch `epoch` visits them: `0..n` without shuffling, else a
    /// permutation drawn from ChaCha8 seeded with `seed`, stream `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.source.num_windows()).collect();
        if self.options.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.options.seed);
            rng.set_stream(epoch);
            order.shuffle(&mut rng);
        }
        order
    }

    /// Batch `index` of epoch `epoch`.
    pub fn batch(&self, epoch: u64, index: usize) -> Result<TokenBatch, DataError> {
        let order = self.epoch_order(epoch);
        self.batch_from_order(&order, index)
    }

    fn batch_from_order(&self, order: &[usize], index: usize) -> Result<TokenBatch, DataError> {
        let num_batches = self.num_batches();
        if index >= num_batches {
            return Err(DataError::OutOfRange {
                what: "batch",
                index,
                len: num_batches,
            });
        }
        let bs = self.options.batch_size;
        let rows = &order[index * bs..((index + 1) * bs).min(order.len())];
        let seq_len = self.source.seq_len();
        let mut inputs = Vec::with_capacity(rows.len() * seq_len);
        let mut targets = Vec::with_capacity(rows.len() * seq_len);
        for &w in rows {
            let (input, target) = self.source.try_window(w)?;
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

    /// Iterates the batches of epoch `epoch`, starting at batch `start` (0 for a full epoch; a
    /// later index to resume mid-epoch).
    pub fn epoch(&self, epoch: u64, start: usize) -> EpochIter<'a> {
        EpochIter {
            batcher: *self,
            order: self.epoch_order(epoch),
            next: start,
        }
    }
}

/// Iterator over one epoch's batches (see [`Batcher::epoch`]).
pub struct EpochIter<'a> {
    batcher: Batcher<'a>,
    order: Vec<usize>,
    next: usize,
}

impl Iterator for EpochIter<'_> {
    type Item = TokenBatch;

    fn next(&mut self) -> Option<TokenBatch> {
        if self.next >= self.batcher.num_batches() {
            return None;
        }
        let batch = self.batcher.batch_from_order(&self.order, self.next).ok()?;
        self.next += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batcher.num_batches().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SlidingWindowDataset;

    fn options(batch_size: usize, shuffle: bool, drop_last: bool) -> BatchOptions {
        BatchOptions {
            batch_size,
            shuffle,
            seed: 123,
            drop_last,
        }
    }

    #[test]
    fn sequential_batches() {
        let ds = SlidingWindowDataset::new((0..11).collect(), 2, 2).unwrap(); // 5 windows
        let b = Batcher::new(&ds, options(2, false, false)).unwrap();
        assert_eq!(b.num_batches(), 3);
        let batches: Vec<_> = b.epoch(0, 0).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].inputs, [0, 1, 2, 3]);
        assert_eq!(batches[0].targets, [1, 2, 3, 4]);
        assert_eq!((batches[2].batch_size, batches[2].seq_len), (1, 2));
        assert_eq!(batches[2].inputs, [8, 9]);
        let b = Batcher::new(&ds, options(2, false, true)).unwrap();
        assert_eq!(b.num_batches(), 2);
        assert!(b.batch(0, 2).is_err());
        assert!(Batcher::new(&ds, options(0, false, true)).is_err());
    }

    #[test]
    fn shuffle_is_a_deterministic_permutation_per_epoch() {
        let ds = SlidingWindowDataset::new((0..101).collect(), 1, 1).unwrap(); // 100 windows
        let b = Batcher::new(&ds, options(8, true, true)).unwrap();
        let e0 = b.epoch_order(0);
        let e1 = b.epoch_order(1);
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..100).collect::<Vec<_>>());
        assert_eq!(e0, b.epoch_order(0));
        let mut sorted = e1.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // Resuming mid-epoch gives the same batches.
        let full: Vec<_> = b.epoch(1, 0).collect();
        let resumed: Vec<_> = b.epoch(1, 5).collect();
        assert_eq!(&full[5..], &resumed[..]);
        assert_eq!(b.batch(1, 3).unwrap(), full[3]);
        let other_seed = Batcher::new(
            &ds,
            BatchOptions {
                seed: 7,
                ..options(8, true, true)
            },
        )
        .unwrap();
        assert_ne!(other_seed.epoch_order(0), e0);
    }
}
