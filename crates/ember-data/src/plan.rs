//! Which examples each batch of an epoch holds: the one shuffling and batching rule of
//! every training run (pretraining windows, spam messages, instruction entries,
//! preference pairs).
//!
//! The order of epoch `e` is a pure function of `(seed, e)`, so a resumed run rebuilds
//! exactly the batches an uninterrupted one would have seen.

use std::ops::Range;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::DataError;

/// How the examples of a dataset are grouped into batches, epoch after epoch (the
/// book's `DataLoader(batch_size, shuffle, drop_last)` with a seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPlan {
    /// Examples per batch (at least 1).
    pub batch_size: usize,
    /// Visit the examples in a seeded random order that changes every epoch.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Drop the final batch when it has fewer than `batch_size` examples (the book's
    /// training loaders do).
    pub drop_last: bool,
}

impl EpochPlan {
    /// A plan; errors when `batch_size` is 0.
    pub fn new(
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        drop_last: bool,
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        Ok(Self {
            batch_size,
            shuffle,
            seed,
            drop_last,
        })
    }

    /// Batches per epoch over `len` examples: `floor(len / batch_size)` with
    /// `drop_last`, else `ceil(len / batch_size)`.
    pub fn num_batches(&self, len: usize) -> usize {
        if self.drop_last {
            len / self.batch_size
        } else {
            len.div_ceil(self.batch_size)
        }
    }

    /// Example indices in the order epoch `epoch` visits them: `0..len` without
    /// shuffling, else a permutation drawn from ChaCha8 seeded with `seed`, stream
    /// `epoch`.
    pub fn order(&self, len: usize, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(epoch);
            order.shuffle(&mut rng);
        }
        order
    }

    /// The batches of epoch `epoch` over `len` examples, each a list of example
    /// indices.
    pub fn batches(&self, len: usize, epoch: u64) -> Vec<Vec<usize>> {
        let order = self.order(len, epoch);
        (0..self.num_batches(len))
            .map(|b| order[self.rows(b, len)].to_vec())
            .collect()
    }

    /// The positions in the epoch's order that batch `index` covers.
    pub fn rows(&self, index: usize, len: usize) -> Range<usize> {
        let start = index * self.batch_size;
        start..(start + self.batch_size).min(len)
    }
}

/// The first `max_batches` batches of `len` examples in file order (all of them when
/// `None`), the last one possibly short: what the book's `calc_loss_loader` and
/// `calc_accuracy_loader` visit when they evaluate on `num_batches` batches.
pub fn evaluation_batches(
    len: usize,
    batch_size: usize,
    max_batches: Option<usize>,
) -> Vec<Range<usize>> {
    let batch_size = batch_size.max(1);
    (0..len.div_ceil(batch_size))
        .take(max_batches.unwrap_or(usize::MAX))
        .map(|b| b * batch_size..((b + 1) * batch_size).min(len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_epochs_are_reproducible_permutations() {
        let plan = EpochPlan::new(8, true, 123, true).unwrap();
        let e0 = plan.order(100, 0);
        assert_eq!(e0, plan.order(100, 0));
        assert_ne!(e0, plan.order(100, 1));
        assert_ne!(e0, (0..100).collect::<Vec<_>>());
        let mut sorted = plan.order(100, 1);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let batches = plan.batches(100, 0);
        assert_eq!(batches.len(), 12);
        assert_eq!(batches[0], e0[..8]);
        let keep_last = EpochPlan::new(8, false, 0, false).unwrap();
        let batches = keep_last.batches(100, 0);
        assert_eq!(batches.len(), 13);
        assert_eq!(batches[12], vec![96, 97, 98, 99]);
        assert!(EpochPlan::new(0, false, 0, true).is_err());
    }

    #[test]
    fn evaluation_takes_the_first_batches_in_order() {
        assert_eq!(evaluation_batches(10, 4, Some(2)), vec![0..4, 4..8]);
        assert_eq!(evaluation_batches(10, 4, None), vec![0..4, 4..8, 8..10]);
        assert!(evaluation_batches(0, 4, None).is_empty());
    }
}
