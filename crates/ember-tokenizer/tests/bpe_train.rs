//! Training the from-scratch BPE tokenizer on the-verdict.txt.

mod common;

use common::verdict;
use ember_tokenizer::{BpeTokenizer, Tokenizer, byte_level::byte_order};

#[test]
fn train_verdict_round_trip_and_save_load() {
    let text = verdict();
    let tok = BpeTokenizer::train(&text, 1000, &["<|endoftext|>"]).unwrap();
    assert_eq!(tok.vocab_size(), 1000);
    assert_eq!(tok.special_tokens(), [("<|endoftext|>".to_owned(), 999)]);
    // Byte tokens come first, in GPT-2's order.
    for (i, &b) in byte_order().iter().enumerate() {
        assert_eq!(tok.token_bytes(i as u32).unwrap(), [b]);
    }
    // The first merge is the most frequent pair: "Ġ" + "t" (" t"), as in GPT-2.
    let (a, b, m) = tok.merges()[0];
    assert_eq!(tok.token_bytes(a).unwrap(), b" ");
    assert_eq!(tok.token_bytes(b).unwrap(), b"t");
    assert_eq!(m, 256);

    // 743 merges; the next ones are "he", " a", "in" (checked against an independent Python
    // implementation of the same algorithm, which also gives 6999 tokens for the text).
    assert_eq!(tok.merges().len(), 743);
    let merged: Vec<&[u8]> = tok.merges()[..4]
        .iter()
        .map(|&(_, _, m)| tok.token_bytes(m).unwrap())
        .collect();
    assert_eq!(merged, [&b" t"[..], b"he", b" a", b"in"]);

    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids.len(), 6999);
    assert!(ids.iter().all(|&id| id < 999));
    assert_eq!(tok.decode(&ids).unwrap(), text);

    let sample = "Jack Gisburn rather a cheap genius<|endoftext|> — naïve café!";
    let ids = tok.encode(sample, true).unwrap();
    assert!(ids.contains(&999));
    assert_eq!(tok.decode(&ids).unwrap(), sample);

    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let loaded = BpeTokenizer::load(dir.path()).unwrap();
    assert!(loaded == tok);
    assert_eq!(
        loaded.encode(&text, false).unwrap(),
        tok.encode(&text, false).unwrap()
    );
    let head = std::fs::read_to_string(dir.path().join("vocab.bpe")).unwrap();
    assert!(head.starts_with("#version: 0.2\nĠ t\n"));

    // Deterministic.
    let again = BpeTokenizer::train(&text, 1000, &["<|endoftext|>"]).unwrap();
    assert!(again == tok);
}
