// Shared helpers for the integration tests (included with `mod common;`).
#![allow(dead_code)]

use serde::Deserialize;

pub const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer_cases.jsonl"
);
pub const VERDICT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/the-verdict.txt"
);
pub const ENCODER_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/gpt2/encoder.json"
);
pub const VOCAB_BPE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/gpt2/vocab.bpe");

#[derive(Debug, Deserialize)]
pub struct Case {
    pub category: String,
    pub text: String,
    pub ids: Vec<u32>,
}

pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(CASES).expect("tokenizer_cases.jsonl");
    let cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid case"))
        .collect();
    assert_eq!(cases.len(), 163);
    cases
}

pub fn verdict() -> String {
    std::fs::read_to_string(VERDICT).expect("the-verdict.txt")
}
