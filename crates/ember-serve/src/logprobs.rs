//! Log probabilities of the generated tokens (`logprobs`, `top_logprobs`): computed on
//! the generation thread from the logits each token was sampled from, shaped here as
//! OpenAI's two APIs return them.
//!
//! The probabilities are the model's own (the softmax of its logits), before
//! temperature, top-k or top-p reshape them for sampling, as vLLM returns them by
//! default: a token's log probability does not depend on how it was sampled.

use ember_tokenizer::ModelTokenizer;
use serde_json::{Map, Value};

use crate::api::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};

/// One generated token's log probability and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// ln p(token).
    pub logprob: f64,
    /// The most likely tokens, most likely first: their bytes and log probabilities.
    pub top: Vec<(Vec<u8>, f64)>,
}

/// The log probability of `id` under `logits`' softmax, and the `top` most likely
/// tokens (ties broken by the lower id).
pub(crate) fn token_logprob(
    logits: &[f32],
    id: u32,
    top: usize,
    tokenizer: &ModelTokenizer,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_norm = f64::from(max) + sum.ln();
    let logprob = |i: usize| f64::from(logits[i]) - log_norm;
    let bytes = |i: u32| tokenizer.decode_bytes(&[i]).unwrap_or_default();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let top = top.min(logits.len());
    let by_likelihood = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if top > 0 && top < order.len() {
        order.select_nth_unstable_by(top - 1, by_likelihood);
    }
    order.truncate(top);
    order.sort_by(by_likelihood);
    TokenLogprob {
        bytes: bytes(id),
        logprob: logprob(id as usize),
        top: order
            .into_iter()
            .map(|i| (bytes(i as u32), logprob(i)))
            .collect(),
    }
}

/// A token as OpenAI names it: its text, or `bytes:\xNN..` when its bytes are not
/// UTF-8 on their own.
pub(crate) fn token_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let escaped: String = bytes.iter().map(|b| format!("\\x{b:02x}")).collect();
            format!("bytes:{escaped}")
        }
    }
}

/// The chat API's `logprobs` of some tokens.
pub(crate) fn chat_logprobs(tokens: &[TokenLogprob]) -> ChatLogprobs {
    let entry = |bytes: &[u8], logprob: f64| TopLogprob {
        token: token_text(bytes),
        logprob,
        bytes: bytes.to_vec(),
    };
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: token_text(&t.bytes),
                logprob: t.logprob,
                bytes: t.bytes.clone(),
                top_logprobs: t.top.iter().map(|(b, lp)| entry(b, *lp)).collect(),
            })
            .collect(),
        refusal: None,
    }
}

/// Counts the characters of a text given as bytes in pieces, for the completions
/// API's `text_offset` (a character split across tokens counts where it ends).
#[derive(Debug, Default)]
pub(crate) struct CharOffsets {
    chars: usize,
    partial: Vec<u8>,
}

impl CharOffsets {
    /// Characters completed so far.
    pub(crate) fn chars(&self) -> usize {
        self.chars
    }

    /// Adds `bytes` to the text.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(text) => {
                    self.chars += text.chars().count();
                    self.partial.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let text = std::str::from_utf8(&self.partial[..valid]).expect("valid prefix");
                    self.chars += text.chars().count();
                    match e.error_len() {
                        // Bytes that are no character: one replacement character each run.
                        Some(bad) => {
                            self.chars += 1;
                            self.partial.drain(..valid + bad);
                        }
                        // The start of a character the next token completes.
                        None => {
                            self.partial.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The completions API's `logprobs` of some tokens, `offsets` counting the reply's
/// characters before them; `top` is the number of alternatives asked for (none: null).
pub(crate) fn completion_logprobs(
    tokens: &[TokenLogprob],
    top: usize,
    offsets: &mut CharOffsets,
) -> CompletionLogprobs {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offsets.chars());
        offsets.push(&t.bytes);
    }
    CompletionLogprobs {
        tokens: tokens.iter().map(|t| token_text(&t.bytes)).collect(),
        token_logprobs: tokens.iter().map(|t| t.logprob).collect(),
        top_logprobs: (top > 0).then(|| {
            tokens
                .iter()
                .map(|t| {
                    let mut alternatives = Map::new();
                    for (bytes, logprob) in &t.top {
                        alternatives.insert(token_text(bytes), Value::from(*logprob));
                    }
                    alternatives
                })
                .collect()
        }),
        text_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> ModelTokenizer {
        ModelTokenizer::gpt2().unwrap()
    }

    /// Against the definition: ln softmax, alternatives in order of likelihood (ties to
    /// the lower id), the chosen token's own log probability whatever was chosen.
    #[test]
    fn log_probabilities_are_the_logits_softmax() {
        let tokenizer = tokenizer();
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let norm: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        let want = |i: usize| f64::from(logits[i]) - norm;
        let got = token_logprob(&logits, 4, 3, &tokenizer);
        assert!((got.logprob - want(4)).abs() < 1e-12);
        let ranked: Vec<f64> = got.top.iter().map(|(_, lp)| *lp).collect();
        assert_eq!(ranked.len(), 3);
        for (got, i) in ranked.iter().zip([1, 3, 0]) {
            assert!((got - want(i)).abs() < 1e-12, "{got} vs token {i}");
        }
        let ids: Vec<Vec<u8>> = [1u32, 3, 0]
            .iter()
            .map(|&i| tokenizer.decode_bytes(&[i]).unwrap())
            .collect();
        assert_eq!(
            got.top.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            ids
        );
        assert_eq!(token_logprob(&logits, 1, 0, &tokenizer).top, []);
        assert_eq!(token_logprob(&logits, 1, 9, &tokenizer).top.len(), 5);
    }

    #[test]
    fn tokens_that_are_not_utf8_alone_are_named_by_their_bytes() {
        assert_eq!(token_text(b" cat"), " cat");
        assert_eq!(token_text(&[0xe2, 0x80]), "bytes:\\xe2\\x80");
        // "é" split over two tokens, then "a": offsets 0, 0 (the character ends in the
        // second), 1.
        let mut offsets = CharOffsets::default();
        let tokens: Vec<TokenLogprob> = [vec![0xc3], vec![0xa9], b"a".to_vec()]
            .into_iter()
            .map(|bytes| TokenLogprob {
                bytes,
                logprob: -1.0,
                top: vec![],
            })
            .collect();
        let shaped = completion_logprobs(&tokens, 0, &mut offsets);
        assert_eq!(shaped.text_offset, [0, 0, 1]);
        assert_eq!(shaped.top_logprobs, None);
        assert_eq!(offsets.chars(), 2);
        offsets.push(&[0xff, b'b']);
        assert_eq!(
            offsets.chars(),
            4,
            "an invalid byte counts as one replacement"
        );
    }
}
