//! Several sequences in one forward pass, as a server batches them (continuous batching,
//! Yu et al. 2022, "Orca").
//!
//! The new positions of every sequence lie side by side in one row, `[1, total, ...]`:
//! a decoding sequence contributes one token, a sequence reading its prompt a chunk of
//! it. Everything but attention treats each position on its own, so the projections and
//! feed-forward layers run once over all of them (each weight matrix read once for the
//! whole batch, which is what makes batching pay on a machine bound by memory
//! bandwidth). Attention is the one step that mixes positions: there the row is cut back
//! into its sequences, and each attends over its own cache, exactly as it would alone.
//! No padding, no mask across sequences, and sequences of any lengths side by side.

use burn::prelude::*;

use crate::kv_cache::{AttentionError, CachedKeys, KvCache};

/// The sequences of one packed forward pass: the caches they continue and how many new
/// positions each has in the pass, in the order they lie in the row.
#[derive(Debug, Clone)]
pub struct PackedCaches {
    caches: Vec<KvCache>,
    lens: Vec<usize>,
}

impl PackedCaches {
    /// Sequences continuing `caches`, with `lens[i]` new positions for `caches[i]`.
    ///
    /// # Panics
    /// If the two lists differ in length or a sequence has no new position.
    pub fn new(caches: Vec<KvCache>, lens: Vec<usize>) -> Self {
        assert_eq!(caches.len(), lens.len(), "one length per cache");
        assert!(
            lens.iter().all(|&n| n > 0),
            "every sequence needs a position"
        );
        Self { caches, lens }
    }

    /// The caches, back to their owners after the pass.
    pub fn into_caches(self) -> Vec<KvCache> {
        self.caches
    }

    /// New positions per sequence.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Positions in the pass, all sequences together.
    pub fn total(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Index in the row of each sequence's last new position (where its next token's
    /// logits come from).
    pub fn last_positions(&self) -> Vec<usize> {
        self.lens
            .iter()
            .scan(0, |end, &n| {
                *end += n;
                Some(*end - 1)
            })
            .collect()
    }
}

/// The cache a forward pass continues.
#[derive(Debug)]
pub enum CacheMut<'a> {
    /// One cache; every row of the batch continues its own row of it, all at the same
    /// position.
    One(&'a mut KvCache),
    /// A batch of one row in which several sequences lie side by side.
    Packed(&'a mut PackedCaches),
}

impl<'a> From<&'a mut KvCache> for CacheMut<'a> {
    fn from(cache: &'a mut KvCache) -> Self {
        CacheMut::One(cache)
    }
}

impl<'a> From<&'a mut PackedCaches> for CacheMut<'a> {
    fn from(caches: &'a mut PackedCaches) -> Self {
        CacheMut::Packed(caches)
    }
}

impl CacheMut<'_> {
    /// The same cache, borrowed again (one forward pass hands it to every layer).
    pub fn reborrow(&mut self) -> CacheMut<'_> {
        match self {
            CacheMut::One(cache) => CacheMut::One(cache),
            CacheMut::Packed(caches) => CacheMut::Packed(caches),
        }
    }

    /// Fails when the `new` positions of the pass (a row's, for [`CacheMut::One`]) do
    /// not fit; for a packed pass, `new` must be the row's length.
    pub fn check_room(&self, new: usize) -> Result<(), AttentionError> {
        match self {
            CacheMut::One(cache) => cache.check_room(new),
            CacheMut::Packed(packed) => {
                assert_eq!(new, packed.total(), "the packed row's length");
                packed
                    .caches
                    .iter()
                    .zip(&packed.lens)
                    .try_for_each(|(cache, &n)| cache.check_room(n))
            }
        }
    }

    /// The position in its sequence of every new position of the pass, in the row's
    /// order, before the pass extends the caches.
    pub fn positions(&self, new: usize) -> Vec<usize> {
        match self {
            CacheMut::One(cache) => (cache.len()..cache.len() + new).collect(),
            CacheMut::Packed(packed) => packed
                .caches
                .iter()
                .zip(&packed.lens)
                .flat_map(|(cache, &n)| cache.len()..cache.len() + n)
                .collect(),
        }
    }

    /// Appends this pass's keys and values to layer `layer` (keeping the last `window`
    /// positions for a sliding-window layer) and returns `attend(q, keys, values)` over
    /// everything cached, sequence by sequence for a packed pass.
    ///
    /// # Shapes
    /// - q: `[batch, heads, new, head_dim]`
    /// - k, v: `[batch, kv_heads, new, head_dim]`
    /// - `attend` gets one sequence's queries and its cached keys and values, and
    ///   returns `[batch, heads, new, head_dim]`, as this does
    ///
    /// `attend` is causal attention (within `window`, if any): on a CPU backend, for
    /// tensors not tracked for a backward pass, the cache is read in place by
    /// [`ember_kernels::tiled_attention_over`], which is what `causal_attention` and
    /// `sliding_window_attention` compute there, and `attend` is not called.
    pub fn attend(
        &mut self,
        layer: usize,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        window: Option<usize>,
        attend: impl Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>,
    ) -> Tensor<4> {
        let kept = window.unwrap_or(usize::MAX);
        // On a CPU backend the tiled kernel (what `attend` computes there) reads the
        // cache's buffers in place; elsewhere `attend` gets the positions as tensors.
        let attend_cached = |q: Tensor<4>, cached: CachedKeys| {
            let range = cached.positions.clone();
            match ember_kernels::tiled_attention_over(
                &q,
                &cached.keys,
                &cached.values,
                range,
                window,
            ) {
                Some(context) => context,
                None => {
                    let (k, v) = cached.narrowed();
                    attend(q, k, v)
                }
            }
        };
        match self {
            CacheMut::One(cache) => attend_cached(q, cache.append(layer, k, v, kept)),
            CacheMut::Packed(packed) => {
                let mut start = 0;
                let contexts = packed
                    .caches
                    .iter_mut()
                    .zip(&packed.lens)
                    .map(|(cache, &n)| {
                        let part = |t: &Tensor<4>| t.clone().narrow(2, start, n);
                        let (q, k, v) = (part(&q), part(&k), part(&v));
                        start += n;
                        attend_cached(q, cache.append(layer, k, v, kept))
                    })
                    .collect();
                Tensor::cat(contexts, 2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::causal_attention;
    use burn::tensor::Distribution;

    fn random(dims: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
    }

    /// Two sequences of different lengths packed into one row attend exactly as each
    /// does alone with its own cache: same bits, for a decoding step beside a prompt.
    #[test]
    fn packed_sequences_attend_exactly_as_alone() {
        let device = Device::ndarray();
        device.seed(3);
        let causal = |q, k, v| causal_attention(q, k, v, None);
        // Sequence a has 5 positions cached and decodes one; b reads a prompt of 3.
        let history = [random([1, 2, 5, 8], &device), random([1, 2, 5, 8], &device)];
        let (q, k, v) = (
            random([1, 4, 4, 8], &device),
            random([1, 2, 4, 8], &device),
            random([1, 2, 4, 8], &device),
        );
        let mut a = KvCache::new(1, 16);
        a.extend(0, history[0].clone(), history[1].clone());
        let b = KvCache::new(1, 16);

        let mut alone_a = a.clone();
        let want_a = CacheMut::One(&mut alone_a).attend(
            0,
            q.clone().narrow(2, 0, 1),
            k.clone().narrow(2, 0, 1),
            v.clone().narrow(2, 0, 1),
            None,
            causal,
        );
        let mut alone_b = b.clone();
        let want_b = CacheMut::One(&mut alone_b).attend(
            0,
            q.clone().narrow(2, 1, 3),
            k.clone().narrow(2, 1, 3),
            v.clone().narrow(2, 1, 3),
            None,
            causal,
        );

        let mut packed = PackedCaches::new(vec![a, b], vec![1, 3]);
        assert_eq!(CacheMut::Packed(&mut packed).positions(4), [5, 0, 1, 2]);
        assert_eq!(packed.last_positions(), [0, 3]);
        let got = CacheMut::Packed(&mut packed).attend(0, q, k, v, None, causal);
        let want = Tensor::cat(vec![want_a, want_b], 2);
        assert_eq!(got.into_data(), want.into_data());
        let caches = packed.into_caches();
        assert_eq!((caches[0].len(), caches[1].len()), (6, 3));
    }

    #[test]
    fn a_packed_sequence_that_overflows_its_cache_is_an_error() {
        let mut packed =
            PackedCaches::new(vec![KvCache::new(1, 4), KvCache::new(1, 2)], vec![1, 3]);
        assert_eq!(
            CacheMut::Packed(&mut packed).check_room(4),
            Err(AttentionError::ContextOverflow {
                cached: 0,
                new: 3,
                capacity: 2
            })
        );
    }
}
