//! The book's chapter 2 examples for SimpleTokenizerV1 / V2 on the-verdict.txt.

mod common;

use common::verdict;
use ember_tokenizer::{
    SimpleTokenizerV1, SimpleTokenizerV2, Tokenizer, TokenizerError, simple_split,
};

#[test]
fn verdict_split_and_vocab_sizes() {
    let text = verdict();
    let pieces = simple_split(&text);
    assert_eq!(pieces.len(), 4690);
    assert_eq!(&pieces[..4], ["I", "HAD", "always", "thought"]);
    let v1 = SimpleTokenizerV1::from_text(&text);
    assert_eq!(v1.vocab_size(), 1130);
    assert_eq!(v1.vocab()["!"], 0);
    let v2 = SimpleTokenizerV2::from_text(&text);
    assert_eq!(v2.vocab_size(), 1132);
    assert_eq!(v2.vocab()["<|endoftext|>"], 1130);
    assert_eq!(v2.vocab()["<|unk|>"], 1131);
    assert_eq!(v2.id_to_token(1129), Some("yourself"));
}

#[test]
fn v1_book_example() {
    let tok = SimpleTokenizerV1::from_text(&verdict());
    let text = "\"It's the last he painted, you know,\" Mrs. Gisburn said with pardonable pride.";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(
        ids,
        [
            1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793,
            7
        ]
    );
    // The book's decode is not an exact inverse: the clean-up regex only removes spaces *before*
    // punctuation, so the opening quote and the apostrophe keep a space after them. This is the
    // output printed in the book (and produced by its Python code).
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "\" It' s the last he painted, you know,\" Mrs. Gisburn said with pardonable pride."
    );
    // Re-encoding the decoded text gives the same ids.
    assert_eq!(tok.encode(&tok.decode(&ids).unwrap(), false).unwrap(), ids);
    let err = tok.encode("Hello, do you like tea?", false).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownToken(ref w) if w == "Hello"));
}

#[test]
fn v2_book_example() {
    let tok = SimpleTokenizerV2::from_text(&verdict());
    let text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace.";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(
        ids,
        [
            1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7
        ]
    );
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    );
    assert!(matches!(
        tok.encode(text, false),
        Err(TokenizerError::SpecialTokenNotAllowed { .. })
    ));
}
