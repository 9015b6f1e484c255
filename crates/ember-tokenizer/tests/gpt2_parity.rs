//! GPT-2 parity against the tiktoken reference ids in tests/fixtures/tokenizer_cases.jsonl.

mod common;

use common::*;
use ember_tokenizer::{
    BpeTokenizer, END_OF_TEXT, END_OF_TEXT_ID, Gpt2Tokenizer, Tokenizer, TokenizerError,
};

fn check_all(tok: &dyn Tokenizer, name: &str) {
    let mut failures = Vec::new();
    for case in cases() {
        let ids = tok.encode(&case.text, true).unwrap();
        if ids != case.ids {
            failures.push(format!("{name} encode [{}] {:?}", case.category, case.text));
            continue;
        }
        let text = tok.decode(&case.ids).unwrap();
        if text != case.text {
            failures.push(format!("{name} decode [{}] {:?}", case.category, case.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn hf_gpt2_matches_all_cases() {
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    check_all(&tok, "gpt2()");
}

#[test]
fn hf_from_vocab_merges_matches_all_cases() {
    let tok = Gpt2Tokenizer::from_vocab_merges(ENCODER_JSON, VOCAB_BPE).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    check_all(&tok, "from_vocab_merges");
}

#[test]
fn hf_from_file_matches_embedded() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/gpt2-tokenizer.json");
    let tok = Gpt2Tokenizer::from_file(path).unwrap();
    let ids = tok.encode("Every effort moves you", false).unwrap();
    assert_eq!(ids, [6109, 3626, 6100, 345]);
    let missing = Gpt2Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(matches!(missing, TokenizerError::Io { .. }));
    assert!(missing.to_string().contains("/nonexistent/tokenizer.json"));
}

#[test]
fn from_scratch_bpe_matches_all_cases() {
    let tok = BpeTokenizer::from_gpt2_files(ENCODER_JSON, VOCAB_BPE).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.merges().len(), 50000);
    assert_eq!(
        tok.special_tokens(),
        [(END_OF_TEXT.to_owned(), END_OF_TEXT_ID)]
    );
    check_all(&tok, "BpeTokenizer");
}

#[test]
fn the_verdict_has_5145_tokens() {
    let text = verdict();
    let hf = Gpt2Tokenizer::gpt2().unwrap();
    let ids = hf.encode(&text, false).unwrap();
    assert_eq!(ids.len(), 5145);
    assert_eq!(&ids[..4], [40, 367, 2885, 1464]);
    let own = BpeTokenizer::from_gpt2_files(ENCODER_JSON, VOCAB_BPE).unwrap();
    assert_eq!(own.encode(&text, false).unwrap(), ids);
    let case = cases()
        .into_iter()
        .find(|c| c.category == "the-verdict")
        .unwrap();
    assert_eq!(case.ids, ids);
    assert_eq!(hf.decode(&ids).unwrap(), text);
}

#[test]
fn special_tokens_rejected_unless_allowed() {
    let hf = Gpt2Tokenizer::gpt2().unwrap();
    let own = BpeTokenizer::from_gpt2_files(ENCODER_JSON, VOCAB_BPE).unwrap();
    for tok in [&hf as &dyn Tokenizer, &own] {
        let err = tok.encode("Hello <|endoftext|> World", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "text contains the special token \"<|endoftext|>\"; allow special tokens to encode it"
        );
        assert_eq!(
            tok.encode("Hello <|endoftext|> World", true).unwrap(),
            [15496, 220, 50256, 2159]
        );
        assert_eq!(
            tok.encode("<|endoftext|", false).unwrap(),
            [27, 91, 437, 1659, 5239, 91]
        );
    }
}

#[test]
fn decode_bytes_concatenates_token_bytes() {
    let hf = Gpt2Tokenizer::gpt2().unwrap();
    let own = BpeTokenizer::from_gpt2_files(ENCODER_JSON, VOCAB_BPE).unwrap();
    for case in cases() {
        let bytes = hf.decode_bytes(&case.ids).unwrap();
        assert_eq!(bytes, case.text.as_bytes(), "{:?}", case.text);
        assert_eq!(own.decode_bytes(&case.ids).unwrap(), bytes);
    }
    for id in [0, 220, 50255, 50256] {
        assert_eq!(hf.token_bytes(id).unwrap(), own.token_bytes(id).unwrap());
    }
}
