//! A trainable byte-level BPE tokenizer, implemented from scratch (the book's chapter 2 bonus
//! material), that also loads OpenAI's GPT-2 `encoder.json` + `vocab.bpe` and reproduces GPT-2's ids.
//!
//! # Algorithm
//!
//! * **Pre-tokenization**: special tokens are cut out first; the remaining text is split with
//!   GPT-2's regex ([`GPT2_PATTERN`]) into pieces (words with their leading space, numbers,
//!   punctuation runs, whitespace). BPE never merges across pieces.
//! * **Base vocabulary**: the 256 byte values, in GPT-2's byte-to-unicode order (so ids 0..256
//!   coincide with GPT-2's).
//! * **Training**: repeatedly merge the most frequent adjacent pair of tokens (counted over all
//!   pieces, weighted by piece frequency). Ties are broken deterministically by the smallest
//!   `(left id, right id)`. Special tokens get the last ids.
//! * **Encoding** a piece: start from its bytes and repeatedly merge the adjacent pair with the
//!   lowest merge rank (every occurrence of it, left to right) until no pair has a rank — exactly
//!   GPT-2's `bpe()` function. Results are cached per piece.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use fancy_regex::Regex;

use crate::byte_level::{byte_order, bytes_to_token_string, token_string_to_bytes};
use crate::{Tokenizer, TokenizerError};

/// GPT-2's pre-tokenization pattern (tiktoken's `r50k_pat_str`).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Header line of GPT-2's `vocab.bpe`.
const VOCAB_BPE_HEADER: &str = "#version: 0.2";

/// Entries kept in the per-piece encoding cache before it is cleared.
const CACHE_CAPACITY: usize = 1 << 16;

fn gpt2_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(GPT2_PATTERN).expect("GPT-2 pattern is valid"))
}

/// Splits `text` into GPT-2 pre-tokens.
pub fn gpt2_pretokenize(text: &str) -> Result<Vec<&str>, TokenizerError> {
    gpt2_regex()
        .find_iter(text)
        .map(|m| {
            m.map(|m| m.as_str())
                .map_err(|e| TokenizerError::Backend(format!("pre-tokenization regex: {e}")))
        })
        .collect()
}

/// A byte-level BPE tokenizer: trainable ([`BpeTokenizer::train`]) or loaded from GPT-2 files.
pub struct BpeTokenizer {
    /// Token id → bytes (special tokens: their UTF-8 text).
    vocab: Vec<Vec<u8>>,
    /// Id of every single byte.
    byte_ids: [u32; 256],
    /// Merges in rank order: `(left, right, merged)`.
    merges: Vec<(u32, u32, u32)>,
    /// `(left, right)` → `(rank, merged)`.
    ranks: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens `(text, id)` sorted by id.
    special: Vec<(String, u32)>,
    /// Per-piece encoding cache.
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("vocab_size", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("special", &self.special)
            .finish()
    }
}

impl Clone for BpeTokenizer {
    fn clone(&self) -> Self {
        Self {
            vocab: self.vocab.clone(),
            byte_ids: self.byte_ids,
            merges: self.merges.clone(),
            ranks: self.ranks.clone(),
            special: self.special.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl PartialEq for BpeTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.vocab == other.vocab
            && self.byte_ids == other.byte_ids
            && self.merges == other.merges
            && self.special == other.special
    }
}

impl Eq for BpeTokenizer {}

/// Per-word state while training.
struct TrainWord {
    ids: Vec<u32>,
    count: i64,
}

impl BpeTokenizer {
    /// Trains a byte-level BPE vocabulary of (at most) `vocab_size` tokens on `text`.
    ///
    /// `vocab_size` counts the 256 byte tokens, the learned merges and the `allowed_special`
    /// tokens (which receive the last ids, like GPT-2's `<|endoftext|>`). Occurrences of the special
    /// tokens in `text` are treated as boundaries and not learned from. Training stops early if no
    /// adjacent pair is left to merge, so the result can be smaller than requested.
    pub fn train(
        text: &str,
        vocab_size: usize,
        allowed_special: &[&str],
    ) -> Result<Self, TokenizerError> {
        let minimum = 256 + allowed_special.len();
        if vocab_size < minimum {
            return Err(TokenizerError::InvalidArgument(format!(
                "vocab_size {vocab_size} is smaller than 256 byte tokens + {} special tokens",
                allowed_special.len()
            )));
        }
        if vocab_size > u32::MAX as usize {
            return Err(TokenizerError::InvalidArgument(format!(
                "vocab_size {vocab_size} does not fit in u32 ids"
            )));
        }
        let mut seen = HashSet::new();
        for s in allowed_special {
            if s.is_empty() || !seen.insert(*s) {
                return Err(TokenizerError::InvalidArgument(format!(
                    "special token {s:?} is empty or repeated"
                )));
            }
        }

        let mut base = Self::byte_level_base();
        let specials: Vec<String> = allowed_special.iter().map(|s| (*s).to_owned()).collect();

        // Word frequencies over all ordinary text.
        let mut freq: HashMap<&str, i64> = HashMap::new();
        for (chunk, _) in split_special(text, &specials) {
            for piece in gpt2_pretokenize(chunk)? {
                *freq.entry(piece).or_default() += 1;
            }
        }
        let mut pieces: Vec<(&str, i64)> = freq.into_iter().collect();
        pieces.sort_unstable();
        let mut words: Vec<TrainWord> = pieces
            .into_iter()
            .map(|(p, count)| TrainWord {
                ids: p.bytes().map(|b| base.byte_ids[b as usize]).collect(),
                count,
            })
            .collect();

        let mut pair_counts: HashMap<(u32, u32), i64> = HashMap::new();
        let mut where_: HashMap<(u32, u32), HashSet<usize>> = HashMap::new();
        for (wi, w) in words.iter().enumerate() {
            for p in w.ids.windows(2) {
                let pair = (p[0], p[1]);
                *pair_counts.entry(pair).or_default() += w.count;
                where_.entry(pair).or_default().insert(wi);
            }
        }

        let mut token_to_id: HashMap<Vec<u8>, u32> = base
            .vocab
            .iter()
            .enumerate()
            .map(|(i, b)| (b.clone(), i as u32))
            .collect();
        let target = vocab_size - specials.len();
        while base.vocab.len() < target {
            let Some((&pair, _)) = pair_counts
                .iter()
                .filter(|&(_, &c)| c > 0)
                .max_by(|(pa, ca), (pb, cb)| ca.cmp(cb).then(pb.cmp(pa)))
            else {
                break;
            };
            let mut merged = base.vocab[pair.0 as usize].clone();
            merged.extend_from_slice(&base.vocab[pair.1 as usize]);
            let new_id = match token_to_id.get(&merged) {
                Some(&id) => id,
                None => {
                    let id = base.vocab.len() as u32;
                    token_to_id.insert(merged.clone(), id);
                    base.vocab.push(merged);
                    id
                }
            };
            let rank = base.merges.len() as u32;
            base.merges.push((pair.0, pair.1, new_id));
            base.ranks.insert(pair, (rank, new_id));

            let affected = where_.remove(&pair).unwrap_or_default();
            for wi in affected {
                let w = &mut words[wi];
                if !w.ids.windows(2).any(|p| (p[0], p[1]) == pair) {
                    continue;
                }
                for p in w.ids.windows(2) {
                    let e = pair_counts.entry((p[0], p[1])).or_default();
                    *e -= w.count;
                }
                w.ids = merge_pair(&w.ids, pair, new_id);
                for p in w.ids.windows(2) {
                    let q = (p[0], p[1]);
                    *pair_counts.entry(q).or_default() += w.count;
                    where_.entry(q).or_default().insert(wi);
                }
            }
            pair_counts.retain(|_, c| *c > 0);
        }

        for s in specials {
            let id = base.vocab.len() as u32;
            base.vocab.push(s.as_bytes().to_vec());
            base.special.push((s, id));
        }
        Ok(base)
    }

    /// The 256 byte tokens in GPT-2 order, no merges.
    fn byte_level_base() -> Self {
        let order = byte_order();
        let mut byte_ids = [0u32; 256];
        for (i, &b) in order.iter().enumerate() {
            byte_ids[b as usize] = i as u32;
        }
        Self {
            vocab: order.iter().map(|&b| vec![b]).collect(),
            byte_ids,
            merges: Vec::new(),
            ranks: HashMap::new(),
            special: Vec::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Loads OpenAI's GPT-2 files (`encoder.json`: token string → id; `vocab.bpe`: merges in rank
    /// order). Vocabulary entries that are neither a byte nor the result of a merge (for GPT-2:
    /// `<|endoftext|>`) become special tokens.
    pub fn from_gpt2_files(
        encoder_json: impl AsRef<Path>,
        vocab_bpe: impl AsRef<Path>,
    ) -> Result<Self, TokenizerError> {
        let (encoder_json, vocab_bpe) = (encoder_json.as_ref(), vocab_bpe.as_ref());
        let enc_text = std::fs::read_to_string(encoder_json)
            .map_err(|e| TokenizerError::io(encoder_json, e))?;
        let merges_text =
            std::fs::read_to_string(vocab_bpe).map_err(|e| TokenizerError::io(vocab_bpe, e))?;
        Self::from_gpt2_strs(
            &enc_text,
            &merges_text,
            &encoder_json.display().to_string(),
            &vocab_bpe.display().to_string(),
        )
    }

    /// Like [`BpeTokenizer::from_gpt2_files`], from the files' contents; `enc_name` / `bpe_name`
    /// name them in errors.
    pub fn from_gpt2_strs(
        encoder_json: &str,
        vocab_bpe: &str,
        enc_name: &str,
        bpe_name: &str,
    ) -> Result<Self, TokenizerError> {
        let encoder: HashMap<String, u32> = serde_json::from_str(encoder_json)
            .map_err(|e| TokenizerError::parse(enc_name, e.to_string()))?;
        let n = encoder.len();
        let mut strings: Vec<Option<&str>> = vec![None; n];
        for (s, &id) in &encoder {
            let slot = strings.get_mut(id as usize).ok_or_else(|| {
                TokenizerError::parse(
                    enc_name,
                    format!("id {id} of {s:?} is outside 0..{n} (ids must be dense)"),
                )
            })?;
            if slot.is_some() {
                return Err(TokenizerError::parse(
                    enc_name,
                    format!("id {id} is repeated"),
                ));
            }
            *slot = Some(s);
        }
        let strings: Vec<&str> = strings.into_iter().map(|s| s.unwrap_or_default()).collect();

        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            let s = bytes_to_token_string(&[b]);
            byte_ids[b as usize] = *encoder.get(&s).ok_or_else(|| {
                TokenizerError::parse(enc_name, format!("missing the byte token {s:?} (byte {b})"))
            })?;
        }

        let mut merges = Vec::new();
        let mut ranks = HashMap::new();
        let mut is_merge_result = vec![false; n];
        for (lineno, line) in vocab_bpe.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || (lineno == 0 && line.starts_with("#version")) {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenizerError::parse(
                    bpe_name,
                    format!(
                        "line {}: expected two tokens separated by a space",
                        lineno + 1
                    ),
                ));
            };
            let lookup = |s: &str| {
                encoder.get(s).copied().ok_or_else(|| {
                    TokenizerError::parse(
                        bpe_name,
                        format!("line {}: token {s:?} is not in {enc_name}", lineno + 1),
                    )
                })
            };
            let (ia, ib, im) = (lookup(a)?, lookup(b)?, lookup(&format!("{a}{b}"))?);
            let rank = merges.len() as u32;
            merges.push((ia, ib, im));
            ranks.entry((ia, ib)).or_insert((rank, im));
            is_merge_result[im as usize] = true;
        }

        let mut is_byte = vec![false; n];
        for &id in &byte_ids {
            is_byte[id as usize] = true;
        }
        let mut vocab = Vec::with_capacity(n);
        let mut special = Vec::new();
        for (id, s) in strings.iter().enumerate() {
            if is_byte[id] || is_merge_result[id] {
                let bytes = token_string_to_bytes(s).ok_or_else(|| {
                    TokenizerError::parse(
                        enc_name,
                        format!("token {s:?} uses characters outside the byte-level alphabet"),
                    )
                })?;
                vocab.push(bytes);
            } else {
                special.push(((*s).to_owned(), id as u32));
                vocab.push(s.as_bytes().to_vec());
            }
        }
        Ok(Self {
            vocab,
            byte_ids,
            merges,
            ranks,
            special,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Saves the tokenizer as `encoder.json` and `vocab.bpe` in `dir` (GPT-2's file formats),
    /// creating `dir` if needed. [`BpeTokenizer::load`] reads them back.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| TokenizerError::io(dir, e))?;
        let mut enc = String::from("{");
        for id in 0..self.vocab.len() {
            if id > 0 {
                enc.push_str(", ");
            }
            let key = self.token_string(id as u32);
            enc.push_str(&serde_json::to_string(&key).expect("strings serialize"));
            enc.push_str(&format!(": {id}"));
        }
        enc.push('}');
        let mut bpe = String::from(VOCAB_BPE_HEADER);
        bpe.push('\n');
        for &(a, b, _) in &self.merges {
            bpe.push_str(&self.token_string(a));
            bpe.push(' ');
            bpe.push_str(&self.token_string(b));
            bpe.push('\n');
        }
        for (name, content) in [("encoder.json", enc), ("vocab.bpe", bpe)] {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(|e| TokenizerError::io(&path, e))?;
        }
        Ok(())
    }

    /// Loads a tokenizer saved with [`BpeTokenizer::save`] (or GPT-2's own files) from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        Self::from_gpt2_files(dir.join("encoder.json"), dir.join("vocab.bpe"))
    }

    /// The string under which token `id` appears in `encoder.json`.
    fn token_string(&self, id: u32) -> String {
        if let Some((s, _)) = self.special.iter().find(|(_, i)| *i == id) {
            return s.clone();
        }
        bytes_to_token_string(&self.vocab[id as usize])
    }

    /// The merges in rank order, as `(left id, right id, merged id)`.
    pub fn merges(&self) -> &[(u32, u32, u32)] {
        &self.merges
    }

    /// The special tokens `(text, id)`.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        &self.special
    }

    /// The raw bytes of token `id`.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.vocab
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or(TokenizerError::UnknownId(id))
    }

    /// Decodes ids to raw bytes (no UTF-8 validation).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Encodes text without looking for special tokens (they are ordinary text here).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_ordinary_into(text, &mut out)?;
        Ok(out)
    }

    fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        for piece in gpt2_pretokenize(text)? {
            self.encode_piece(piece, out);
        }
        Ok(())
    }

    /// BPE on one pre-token, with caching.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        // A poisoned cache only means another thread panicked mid-insert; the data is still usable.
        if let Some(ids) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(piece)
        {
            out.extend_from_slice(ids);
            return;
        }
        let mut ids: Vec<u32> = piece.bytes().map(|b| self.byte_ids[b as usize]).collect();
        loop {
            let best = ids
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0], p[1])).map(|&r| ((p[0], p[1]), r)))
                .min_by_key(|&(_, (rank, _))| rank);
            let Some((pair, (_, new_id))) = best else {
                break;
            };
            ids = merge_pair(&ids, pair, new_id);
        }
        out.extend_from_slice(&ids);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(piece.to_owned(), ids);
    }
}

/// Replaces every non-overlapping occurrence of `pair` (left to right) by `new_id`.
fn merge_pair(ids: &[u32], pair: (u32, u32), new_id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    let mut i = 0;
    while i < ids.len() {
        if i + 1 < ids.len() && (ids[i], ids[i + 1]) == pair {
            out.push(new_id);
            i += 2;
        } else {
            out.push(ids[i]);
            i += 1;
        }
    }
    out
}

/// Splits `text` at occurrences of `specials` (leftmost match, longest on ties): yields
/// `(ordinary text before, Some(index of the special))` pairs, the last one with `None`.
pub(crate) fn split_special<'t>(
    text: &'t str,
    specials: &[String],
) -> Vec<(&'t str, Option<usize>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let found = specials
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| {
                rest.find(s.as_str())
                    .map(|pos| (pos, std::cmp::Reverse(s.len()), i))
            })
            .min();
        match found {
            Some((pos, _, i)) => {
                out.push((&rest[..pos], Some(i)));
                rest = &rest[pos + specials[i].len()..];
            }
            None => {
                out.push((rest, None));
                return out;
            }
        }
    }
}

impl Tokenizer for BpeTokenizer {
    fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let specials: Vec<String> = self.special.iter().map(|(s, _)| s.clone()).collect();
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        for (chunk, special) in split_special(text, &specials) {
            if let Some(i) = special
                && !allow_special
            {
                return Err(TokenizerError::SpecialTokenNotAllowed {
                    token: specials[i].clone(),
                });
            }
            self.encode_ordinary_into(chunk, &mut out)?;
            if let Some(i) = special {
                out.push(self.special[i].1);
            }
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretokenize_gpt2() {
        assert_eq!(
            gpt2_pretokenize("Hello world's  3.5\n\n").unwrap(),
            ["Hello", " world", "'s", " ", " 3", ".", "5", "\n\n"]
        );
    }

    #[test]
    fn merge_pair_left_to_right() {
        assert_eq!(merge_pair(&[1, 1, 1, 2, 1, 1], (1, 1), 9), [9, 1, 2, 9]);
    }

    #[test]
    fn split_special_prefers_leftmost_longest() {
        let specials = vec!["<|a|>".to_owned(), "<|a|>x".to_owned()];
        assert_eq!(
            split_special("1<|a|>x2<|a|>", &specials),
            [("1", Some(1)), ("2", Some(0)), ("", None)]
        );
    }

    #[test]
    fn train_tiny() {
        let tok = BpeTokenizer::train("aaab aaab aaab", 256 + 3 + 1, &["<|end|>"]).unwrap();
        assert_eq!(tok.vocab_size(), 260);
        assert_eq!(tok.special_tokens(), [("<|end|>".to_owned(), 259)]);
        assert_eq!(tok.token_bytes(256).unwrap(), b"aa");
        let ids = tok.encode("aaab<|end|>", true).unwrap();
        assert_eq!(ids.last(), Some(&259));
        assert_eq!(tok.decode(&ids).unwrap(), "aaab<|end|>");
        assert!(tok.encode("<|end|>", false).is_err());
        assert!(BpeTokenizer::train("x", 10, &[]).is_err());
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let err = BpeTokenizer::from_gpt2_strs("{", "", "enc.json", "m.bpe").unwrap_err();
        assert!(err.to_string().contains("enc.json"));
        let err = BpeTokenizer::from_gpt2_strs("{\"a\": 0}", "", "enc.json", "m.bpe").unwrap_err();
        assert!(err.to_string().contains("missing the byte token"));
    }
}
