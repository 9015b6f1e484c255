//! The KV cache of incremental decoding.

use burn::prelude::*;

/// Errors of incremental decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionError {
    /// The cache holds `cached` positions, `new` more do not fit in `capacity`.
    ContextOverflow {
        /// Positions already in the cache.
        cached: usize,
        /// Positions that were to be appended.
        new: usize,
        /// The model's context length.
        capacity: usize,
    },
}

impl std::fmt::Display for AttentionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttentionError::ContextOverflow {
                cached,
                new,
                capacity,
            } => write!(
                f,
                "context overflow: {cached} cached + {new} new tokens exceed the context length {capacity}"
            ),
        }
    }
}

impl std::error::Error for AttentionError {}

/// Keys and values of every layer for the positions already processed, so that each
/// new token costs one row of attention instead of a whole forward pass.
///
/// The cache is an explicit object owned by the caller (as in candle-transformers):
/// create one per sequence batch, pass it to each forward call, [`KvCache::reset`] it
/// to start over.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<CachedLayer>>,
    capacity: usize,
}

/// The keys and values one layer keeps, `[batch, kv_heads, kept, head_dim]`, and how
/// many earlier positions it dropped (a sliding-window layer keeps only its window).
#[derive(Debug, Clone)]
struct CachedLayer {
    keys: Tensor<4>,
    values: Tensor<4>,
    dropped: usize,
}

impl CachedLayer {
    /// Positions seen, kept or dropped.
    fn len(&self) -> usize {
        self.dropped + self.keys.dims()[2]
    }
}

impl KvCache {
    /// An empty cache for `num_layers` layers and at most `capacity` positions (the
    /// model's context length).
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            capacity,
        }
    }

    /// Number of positions cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|layer| layer.as_ref())
            .map_or(0, CachedLayer::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget every cached position.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|layer| *layer = None);
    }

    /// Fails when `new` more positions would not fit.
    pub fn check_room(&self, new: usize) -> Result<(), AttentionError> {
        let cached = self.len();
        if cached + new > self.capacity {
            return Err(AttentionError::ContextOverflow {
                cached,
                new,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Number of layers the cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends `keys`/`values` (`[batch, heads, new, head_dim]`) to layer `layer` and
    /// returns the whole cached sequence for it.
    pub fn extend(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        self.extend_window(layer, keys, values, usize::MAX)
    }

    /// [`KvCache::extend`] for a layer that attends over the last `window` positions
    /// only: it returns the kept positions followed by the new ones (the last new
    /// position last, so a query's window is found from the end) and keeps no more than
    /// `window` of them for the next call.
    pub fn extend_window(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
        window: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let slot = &mut self.layers[layer];
        let (keys, values, dropped) = match slot.take() {
            Some(cached) => (
                Tensor::cat(vec![cached.keys, keys], 2),
                Tensor::cat(vec![cached.values, values], 2),
                cached.dropped,
            ),
            None => (keys, values, 0),
        };
        let len = keys.dims()[2];
        let kept = len.min(window.max(1));
        *slot = Some(CachedLayer {
            keys: keys.clone().narrow(2, len - kept, kept),
            values: values.clone().narrow(2, len - kept, kept),
            dropped: dropped + len - kept,
        });
        (keys, values)
    }

    /// A cache of the first `len` positions of this one (their tensors shared, not
    /// copied), for a sequence that begins as this one did; `None` when some layer no
    /// longer holds them all (a sliding-window layer past its window) or `len` is more
    /// than is cached.
    pub fn prefix(&self, len: usize) -> Option<KvCache> {
        if len > self.len() {
            return None;
        }
        if len == 0 {
            return Some(KvCache::new(self.layers.len(), self.capacity));
        }
        let layers = self
            .layers
            .iter()
            .map(|layer| match layer {
                Some(cached) if cached.dropped == 0 => Some(Some(CachedLayer {
                    keys: cached.keys.clone().narrow(2, 0, len),
                    values: cached.values.clone().narrow(2, 0, len),
                    dropped: 0,
                })),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(KvCache {
            layers,
            capacity: self.capacity,
        })
    }

    /// Positions layer `layer` holds (fewer than [`KvCache::len`] for a sliding-window
    /// layer past its window).
    pub fn kept(&self, layer: usize) -> usize {
        self.layers[layer]
            .as_ref()
            .map_or(0, |cached| cached.keys.dims()[2])
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::tensor::Distribution;

    /// A prefix holds exactly the first positions and grows as a cache that only ever
    /// saw them; the cache it came from is untouched. A prefix longer than the cache, or
    /// of a layer that dropped positions past its window, is refused.
    #[test]
    fn a_prefix_is_the_cache_of_the_first_positions() {
        let device = Device::ndarray();
        device.seed(1);
        let random = || Tensor::<4>::random([1, 2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let (keys, values) = (random(), random());
        let mut full = KvCache::new(2, 16);
        let mut first_three = KvCache::new(2, 16);
        for layer in 0..2 {
            full.extend(layer, keys.clone(), values.clone());
            first_three.extend(
                layer,
                keys.clone().narrow(2, 0, 3),
                values.clone().narrow(2, 0, 3),
            );
        }
        let mut prefix = full.prefix(3).unwrap();
        assert_eq!((prefix.len(), prefix.capacity()), (3, 16));
        let (new_k, new_v) = (random().narrow(2, 0, 1), random().narrow(2, 0, 1));
        let (got, _) = prefix.extend(1, new_k.clone(), new_v.clone());
        let (want, _) = first_three.extend(1, new_k, new_v);
        assert_eq!(got.into_data(), want.into_data());
        assert_eq!(full.len(), 5);
        assert!(full.prefix(6).is_none());
        assert_eq!(full.prefix(0).unwrap().kept(0), 0);

        let mut windowed = KvCache::new(1, 16);
        windowed.extend_window(0, keys.clone(), values.clone(), 3);
        assert!(windowed.prefix(2).is_none());
        assert!(KvCache::new(1, 16).prefix(0).unwrap().is_empty());
    }
}
