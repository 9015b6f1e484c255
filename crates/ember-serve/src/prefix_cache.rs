//! Prefix caching: the keys and values of prompts read earlier, kept so that a prompt
//! which begins the same way (the same system prompt, a conversation's history) starts
//! from them instead of reading those tokens again (vLLM's automatic prefix caching,
//! SGLang's RadixAttention).
//!
//! Only whole prefill chunks are kept: positions `0..n·chunk` of a prompt, read as
//! chunks ending at multiples of `chunk`, which is exactly how a sequence that did not
//! find them here reads them. So a request gets the same bits from a cached prefix as
//! without one, and a server's answers do not depend on what it served before. The
//! cache lives inside the KV cache budget: entries are evicted, least recently used
//! first, whenever running sequences need the room.

use ember_model::KvCache;

/// Prompts' cached keys and values, least recently used first.
pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    chunk: usize,
}

/// A prompt's first `tokens.len()` tokens (a multiple of the chunk) and their cache.
struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
}

impl PrefixCache {
    /// An empty cache keeping prefixes of whole `chunk`-token chunks.
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            entries: Vec::new(),
            chunk: chunk.max(1),
        }
    }

    /// Positions held by all entries.
    pub(crate) fn positions(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// Keeps the whole chunks of `prompt` from `cache`, which holds at least them (read
    /// as chunks). Nothing is kept when the prompt has no whole chunk, when an entry
    /// already begins with it, or when the cache cannot be cut (a sliding-window layer
    /// past its window); entries that are prefixes of the new one are dropped.
    pub(crate) fn offer(&mut self, prompt: &[u32], cache: &KvCache) {
        let len = prompt.len() / self.chunk * self.chunk;
        if len == 0 || len > cache.len() {
            return;
        }
        let tokens = &prompt[..len];
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.tokens.starts_with(tokens))
        {
            let entry = self.entries.remove(i);
            self.entries.push(entry);
            return;
        }
        let Some(cache) = cache.prefix(len) else {
            return;
        };
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            cache,
        });
    }

    /// A cache holding the longest run of whole chunks that `prompt` shares with an
    /// entry, leaving at least its last token to read (its logits give the first new
    /// token); `None` when no entry shares a whole chunk.
    pub(crate) fn lookup(&mut self, prompt: &[u32]) -> Option<KvCache> {
        let usable = |e: &Entry| {
            let shared = e
                .tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count();
            shared.min(prompt.len().saturating_sub(1)) / self.chunk * self.chunk
        };
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, usable(e)))
            .filter(|&(_, len)| len > 0)
            .max_by_key(|&(i, len)| (len, i))?;
        let entry = self.entries.remove(i);
        let cache = entry.cache.prefix(len);
        self.entries.push(entry);
        cache
    }

    /// Drops the least recently used entry; false when there was none.
    pub(crate) fn evict_oldest(&mut self) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        self.entries.remove(0);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::prelude::*;

    /// A one-layer cache of `len` positions whose keys are the positions' numbers.
    fn cache_of(len: usize) -> KvCache {
        let device = Device::ndarray();
        let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let keys = Tensor::<4>::from_data(TensorData::new(values, [1, 1, len, 1]), &device);
        let mut cache = KvCache::new(1, 64);
        cache.extend(0, keys.clone(), keys);
        cache
    }

    #[test]
    fn prompts_find_the_whole_chunks_they_share() {
        let mut prefixes = PrefixCache::new(4);
        let system: Vec<u32> = (0..10).collect();
        prefixes.offer(&system, &cache_of(10));
        assert_eq!(prefixes.positions(), 8, "two whole chunks of 4");

        // Sharing 9 tokens: the 8 of two whole chunks.
        let mut longer = system[..9].to_vec();
        longer.extend([50, 51, 52]);
        let hit = prefixes.lookup(&longer).unwrap();
        assert_eq!(hit.len(), 8);
        // Sharing 6: one chunk. Sharing 3: nothing.
        assert_eq!(prefixes.lookup(&[0, 1, 2, 3, 4, 5, 99]).unwrap().len(), 4);
        assert!(prefixes.lookup(&[0, 1, 2, 77, 4]).is_none());
        // The whole prompt cached: its last token is still read.
        assert_eq!(prefixes.lookup(&system[..8]).unwrap().len(), 4);

        // A longer prompt with the same beginning replaces the entry it extends; one
        // already covered adds nothing.
        let mut extended = system.clone();
        extended.extend(10..14);
        prefixes.offer(&extended, &cache_of(14));
        assert_eq!(prefixes.positions(), 12);
        prefixes.offer(&system, &cache_of(10));
        assert_eq!(prefixes.positions(), 12);
        // A prompt shorter than a chunk, or a cache that does not hold the chunks.
        prefixes.offer(&[7, 7, 7], &cache_of(3));
        prefixes.offer(&[9; 8], &cache_of(5));
        assert_eq!(prefixes.positions(), 12);

        prefixes.offer(&[5; 4], &cache_of(4));
        assert_eq!(prefixes.positions(), 16);
        assert!(prefixes.evict_oldest());
        assert_eq!(
            prefixes.positions(),
            4,
            "the least recently used went first"
        );
        assert!(prefixes.evict_oldest());
        assert!(!prefixes.evict_oldest());
    }
}
