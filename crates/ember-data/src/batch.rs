//! Mini-batches of windows with seeded, resumable shuffling (the book's `DataLoader` over a
//! `GPTDatasetV1`): an [`EpochPlan`] applied to a [`WindowSource`].

use crate::collate::collate_windows;
use crate::{DataError, EpochPlan, TokenBatch, WindowSource};

/// Forms [`TokenBatch`]es from any [`WindowSource`].
///
/// The window order of epoch `e` is a pure function of `(seed, e)` ([`Batcher::epoch_order`]),
/// and [`Batcher::batch`] gives random access, so training can resume at any `(epoch, batch)`.
#[derive(Clone, Copy)]
pub struct Batcher<'a> {
    source: &'a dyn WindowSource,
    plan: EpochPlan,
}

impl std::fmt::Debug for Batcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("num_windows", &self.source.num_windows())
            .field("plan", &self.plan)
            .finish()
    }
}

impl<'a> Batcher<'a> {
    /// Creates a batcher; errors if the plan's `batch_size` is 0.
    pub fn new(source: &'a dyn WindowSource, plan: EpochPlan) -> Result<Self, DataError> {
        let plan = EpochPlan::new(plan.batch_size, plan.shuffle, plan.seed, plan.drop_last)?;
        Ok(Self { source, plan })
    }

    /// The plan.
    pub fn plan(&self) -> EpochPlan {
        self.plan
    }

    /// The window source.
    pub fn source(&self) -> &'a dyn WindowSource {
        self.source
    }

    /// Batches per epoch: `floor(n / batch_size)` with `drop_last`, else `ceil(n / batch_size)`.
    pub fn num_batches(&self) -> usize {
        self.plan.num_batches(self.source.num_windows())
    }

    /// Window indices in the order epoch `epoch` visits them ([`EpochPlan::order`]).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        self.plan.order(self.source.num_windows(), epoch)
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
        collate_windows(self.source, &order[self.plan.rows(index, order.len())])
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

    fn options(batch_size: usize, shuffle: bool, drop_last: bool) -> EpochPlan {
        EpochPlan {
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
            EpochPlan {
                seed: 7,
                ..options(8, true, true)
            },
        )
        .unwrap();
        assert_ne!(other_seed.epoch_order(0), e0);
    }
}
