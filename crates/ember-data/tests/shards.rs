//! prepare_corpus → ShardDataset round trips, and malformed-shard errors.

use std::path::Path;

use ember_data::{
    Batcher, DataError, EpochPlan, HEADER_BYTES, PrepareOptions, SHARD_MAGIC, ShardDataset,
    SlidingWindowDataset, WindowSource, prepare_corpus, read_shard, write_shard,
};
use ember_tokenizer::{END_OF_TEXT_ID, Gpt2Tokenizer, Tokenizer};

const VERDICT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/the-verdict.txt"
);

fn write(path: &Path, contents: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

fn options(val_fraction: f64, shard_tokens: usize) -> PrepareOptions {
    PrepareOptions {
        val_fraction,
        shard_tokens,
        progress: false,
    }
}

/// Documents joined by <|endoftext|>, tokenized one by one.
fn join(tok: &Gpt2Tokenizer, docs: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push(END_OF_TEXT_ID);
        }
        out.extend(tok.encode(d, true).unwrap());
    }
    out
}

#[test]
fn directory_round_trip() {
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let one = "The first document.\n\nIt has two paragraphs, naïvely written.";
    let two = "Second: numbers 12345 and emoji 🤗 and a literal <|endoftext|> inside.";
    write(&input.path().join("a/one.txt"), one.as_bytes());
    write(&input.path().join("a/b/two.txt"), two.as_bytes());
    write(&input.path().join("notes.md"), b"ignored");
    let j = [
        "jsonl doc one",
        "Jsonl \"doc\" two\nwith a newline",
        "the last document goes to validation",
    ];
    let jsonl = format!(
        "{}\n\n{}\n{}\n",
        serde_json::json!({"text": j[0], "id": 1}),
        serde_json::json!({"text": j[1]}),
        serde_json::json!({"meta": "x", "text": j[2]}),
    );
    write(&input.path().join("c.jsonl"), jsonl.as_bytes());
    // A stale shard from an earlier run must disappear.
    write(&out.path().join("train_000099.bin"), b"stale");

    let summary = prepare_corpus(input.path(), out.path(), &tok, options(0.2, 7)).unwrap();
    // Sorted paths: a/b/two.txt < a/one.txt < c.jsonl
    assert_eq!(summary.num_documents, 5);
    assert_eq!(summary.val_documents, 1);
    assert_eq!(summary.input_files.len(), 3);
    assert!(summary.input_files[0].ends_with("a/b/two.txt"));

    let train_expected = join(&tok, &[two, one, j[0], j[1]]);
    let val_expected = join(&tok, &[j[2]]);
    assert!(
        train_expected
            .iter()
            .filter(|&&t| t == END_OF_TEXT_ID)
            .count()
            == 4
    );
    assert_eq!(summary.train_tokens, train_expected.len() as u64);
    assert_eq!(summary.val_tokens, val_expected.len() as u64);
    assert_eq!(summary.train_shards.len(), train_expected.len().div_ceil(7));
    assert!(!out.path().join("train_000099.bin").exists());

    // Every shard but the last holds exactly shard_tokens tokens.
    let mut concat = Vec::new();
    for (i, p) in summary.train_shards.iter().enumerate() {
        assert!(p.ends_with(format!("train_{i:06}.bin")));
        let shard = read_shard(p).unwrap();
        if i + 1 < summary.train_shards.len() {
            assert_eq!(shard.len(), 7);
        }
        concat.extend(shard.into_iter().map(u32::from));
    }
    assert_eq!(concat, train_expected);

    let train = ShardDataset::open(out.path(), "train", 5, 3).unwrap();
    assert_eq!(train.num_tokens(), train_expected.len());
    assert_eq!(train.tokens(0, train.num_tokens()).unwrap(), train_expected);
    let val = ShardDataset::open(out.path(), "val", 2, 1).unwrap();
    assert_eq!(val.tokens(0, val.num_tokens()).unwrap(), val_expected);

    // Windows spanning shard boundaries equal the in-memory dataset's, and so do batches.
    let mem = SlidingWindowDataset::new(train_expected.clone(), 5, 3).unwrap();
    assert_eq!(train.num_windows(), mem.num_windows());
    for i in 0..mem.num_windows() {
        assert_eq!(train.window(i), mem.window(i));
    }
    assert_eq!(
        train.window_at(4, 6).unwrap(),
        (
            train_expected[4..10].to_vec(),
            train_expected[5..11].to_vec()
        )
    );
    assert!(train.window_at(train.num_tokens() - 3, 3).is_err());
    let opts = EpochPlan {
        batch_size: 3,
        shuffle: true,
        seed: 42,
        drop_last: false,
    };
    let a: Vec<_> = Batcher::new(&train, opts).unwrap().epoch(2, 0).collect();
    let b: Vec<_> = Batcher::new(&mem, opts).unwrap().epoch(2, 0).collect();
    assert_eq!(a, b);
}

#[test]
fn single_document_is_split_by_tokens() {
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary =
        prepare_corpus(Path::new(VERDICT), out.path(), &tok, options(0.1, 1 << 20)).unwrap();
    assert_eq!(summary.num_documents, 1);
    assert_eq!(summary.train_tokens + summary.val_tokens, 5145);
    assert_eq!(summary.val_tokens, 515); // round(514.5)
    assert_eq!(summary.train_shards.len(), 1);
    assert_eq!(summary.val_shards.len(), 1);
    let text = std::fs::read_to_string(VERDICT).unwrap();
    let ids = tok.encode(&text, true).unwrap();
    let train = ShardDataset::open(out.path(), "train", 256, 256).unwrap();
    let val = ShardDataset::open(out.path(), "val", 256, 256).unwrap();
    let mut all = train.tokens(0, train.num_tokens()).unwrap();
    all.extend(val.tokens(0, val.num_tokens()).unwrap());
    assert_eq!(all, ids);
    assert_eq!(train.num_windows(), 18); // len(range(0, 4630 - 256, 256))
    assert_eq!(val.num_windows(), 2);
}

#[test]
fn large_txt_is_chunked_deterministically() {
    // ~1.2 MB: tokenized in two parallel paragraph-aligned chunks (chunk target 1 MiB).
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let verdict = std::fs::read_to_string(VERDICT).unwrap();
    let text = verdict.repeat(60);
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(&input.path().join("big.txt"), text.as_bytes());
    let summary = prepare_corpus(input.path(), out.path(), &tok, options(0.0, 250_000)).unwrap();
    assert!(summary.val_shards.is_empty());
    let ds = ShardDataset::open(out.path(), "train", 1024, 1024).unwrap();
    assert_eq!(ds.shard_paths().len(), summary.train_shards.len());
    assert_eq!(
        ds.tokens(0, ds.num_tokens()).unwrap(),
        tok.encode(&text, true).unwrap()
    );
}

#[test]
fn bad_inputs_are_errors_naming_the_file() {
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();

    let bad = input.path().join("bad.txt");
    write(&bad, b"valid start \xff\xfe invalid");
    let err = prepare_corpus(&bad, out.path(), &tok, options(0.1, 100)).unwrap_err();
    assert!(
        matches!(err, DataError::InvalidUtf8 { offset: 12, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad.txt"), "{err}");

    let jsonl = input.path().join("docs.jsonl");
    write(
        &jsonl,
        b"{\"text\": \"ok\"}\n{\"body\": \"no text field\"}\n",
    );
    let err = prepare_corpus(&jsonl, out.path(), &tok, options(0.1, 100)).unwrap_err();
    assert!(matches!(err, DataError::Json { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("docs.jsonl:2"), "{err}");

    let empty = input.path().join("empty.txt");
    write(&empty, b"");
    let err = prepare_corpus(&empty, out.path(), &tok, options(0.1, 100)).unwrap_err();
    assert!(matches!(err, DataError::EmptyInput { .. }), "{err}");

    let empty_dir = input.path().join("nothing");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = prepare_corpus(&empty_dir, out.path(), &tok, options(0.1, 100)).unwrap_err();
    assert!(matches!(err, DataError::EmptyInput { .. }), "{err}");

    let other = input.path().join("data.csv");
    write(&other, b"a,b");
    let err = prepare_corpus(&other, out.path(), &tok, options(0.1, 100)).unwrap_err();
    assert!(matches!(err, DataError::UnsupportedInput { .. }), "{err}");

    let err = prepare_corpus(&jsonl, out.path(), &tok, options(1.0, 100)).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err}");
    let err = prepare_corpus(&jsonl, out.path(), &tok, options(0.1, 0)).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err}");
}

#[test]
fn corrupt_shards_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u16> = (0..100).collect();
    let good = dir.path().join("train_000000.bin");
    write_shard(&good, &tokens).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    assert_eq!(bytes.len(), HEADER_BYTES + 200);
    assert_eq!(&bytes[..4], SHARD_MAGIC.to_le_bytes());
    assert_eq!(&bytes[8..12], 100i32.to_le_bytes());
    assert_eq!(read_shard(&good).unwrap(), tokens);
    let ds = ShardDataset::open(dir.path(), "train", 10, 10).unwrap();
    assert_eq!(ds.num_tokens(), 100);
    assert_eq!(ds.num_windows(), 9);

    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "bad magic",
            {
                let mut b = bytes.clone();
                b[0] ^= 0xff;
                b
            },
            "bad magic number",
        ),
        (
            "truncated data",
            bytes[..bytes.len() - 1].to_vec(),
            "truncated",
        ),
        (
            "truncated header",
            bytes[..100].to_vec(),
            "truncated header",
        ),
        (
            "trailing bytes",
            [bytes.clone(), vec![0, 0]].concat(),
            "trailing bytes",
        ),
    ];
    for (what, contents, message) in cases {
        let sub = tempfile::tempdir().unwrap();
        write_shard(&sub.path().join("val_000000.bin"), &tokens).unwrap();
        let path = sub.path().join("val_000001.bin");
        std::fs::write(&path, &contents).unwrap();
        let err = ShardDataset::open(sub.path(), "val", 4, 4).unwrap_err();
        assert!(matches!(err, DataError::BadShard { .. }), "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("val_000001.bin") && msg.contains(message),
            "{what}: {msg}"
        );
        assert!(read_shard(&path).is_err(), "{what}");
    }

    let err = ShardDataset::open(dir.path(), "val", 4, 4).unwrap_err();
    assert!(matches!(err, DataError::NoShards { .. }), "{err}");
    let err = ShardDataset::open(dir.path(), "train", 100, 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "text has 100 tokens, needs more than max_length 100"
    );
}
