//! Reproduces tests/fixtures/sliding_window.json (book chapter 2 GPTDatasetV1 and the chapter 5
//! 90/10 split) exactly.

use ember_data::{Batcher, EpochPlan, SlidingWindowDataset, WindowSource, split_text};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/sliding_window.json"
);
const VERDICT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/the-verdict.txt"
);

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn gpt_dataset_v1_matches_fixture() {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let text = std::fs::read_to_string(VERDICT).unwrap();
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let tokens = tok.encode(&text, true).unwrap();
    assert_eq!(tokens.len(), usize_of(&fixture["num_tokens"]));
    assert_eq!(tokens.len(), 5145);

    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let max_length = usize_of(&case["max_length"]);
        let stride = usize_of(&case["stride"]);
        let ds = SlidingWindowDataset::new(tokens.clone(), max_length, stride).unwrap();
        let ctx = format!("max_length {max_length} stride {stride}");
        assert_eq!(ds.len(), usize_of(&case["num_windows"]), "{ctx}");
        for i in 0..2 {
            let (input, target) = ds.get(i).unwrap();
            assert_eq!(input, ids(&case["first_inputs"][i]), "{ctx}");
            assert_eq!(target, ids(&case["first_targets"][i]), "{ctx}");
        }
        let (input, target) = ds.get(ds.len() - 1).unwrap();
        assert_eq!(input, ids(&case["last_input"]), "{ctx}");
        assert_eq!(target, ids(&case["last_target"]), "{ctx}");
        assert_eq!(ds.window(ds.len() - 1), (input.to_vec(), target.to_vec()));

        for (bs, key) in [
            (8, "num_batches_batch_size_8_drop_last"),
            (2, "num_batches_batch_size_2_drop_last"),
        ] {
            let batcher = Batcher::new(
                &ds,
                EpochPlan {
                    batch_size: bs,
                    shuffle: true,
                    seed: 123,
                    drop_last: true,
                },
            )
            .unwrap();
            assert_eq!(batcher.num_batches(), usize_of(&case[key]), "{ctx} {key}");
            assert_eq!(
                batcher.epoch(0, 0).count(),
                usize_of(&case[key]),
                "{ctx} {key}"
            );
        }
    }
    // The book's first batch (max_length 4, stride 4, batch 8, no shuffle).
    let ds = SlidingWindowDataset::new(tokens.clone(), 4, 4).unwrap();
    let batcher = Batcher::new(
        &ds,
        EpochPlan {
            batch_size: 8,
            shuffle: false,
            seed: 0,
            drop_last: false,
        },
    )
    .unwrap();
    let batch = batcher.batch(0, 0).unwrap();
    assert_eq!((batch.batch_size, batch.seq_len), (8, 4));
    assert_eq!(
        &batch.inputs[..8],
        [40, 367, 2885, 1464, 1807, 3619, 402, 271]
    );
    assert_eq!(&batch.targets[..4], [367, 2885, 1464, 1807]);
    assert_eq!(batcher.num_batches(), 161);
}

#[test]
fn chapter5_split_matches_fixture() {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let split = &fixture["ch05_split"];
    let text = std::fs::read_to_string(VERDICT).unwrap();
    let (train, val) = split_text(&text, split["train_ratio"].as_f64().unwrap());
    assert_eq!(train.chars().count(), usize_of(&split["split_char_index"]));
    assert_eq!(train.chars().count(), 18431);
    assert_eq!(format!("{train}{val}"), text);

    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let train_ids = tok.encode(train, true).unwrap();
    let val_ids = tok.encode(val, true).unwrap();
    assert_eq!(train_ids.len(), usize_of(&split["train_tokens"]));
    assert_eq!(val_ids.len(), usize_of(&split["val_tokens"]));

    let windows = &split["max_length_256_stride_256"];
    let train_ds = SlidingWindowDataset::new(train_ids, 256, 256).unwrap();
    let val_ds = SlidingWindowDataset::new(val_ids, 256, 256).unwrap();
    assert_eq!(train_ds.num_windows(), usize_of(&windows["train_windows"]));
    assert_eq!(val_ds.num_windows(), usize_of(&windows["val_windows"]));
}

#[test]
fn too_short_text_is_an_error() {
    let tok = Gpt2Tokenizer::gpt2().unwrap();
    let err = SlidingWindowDataset::from_text("Hello, world!", &tok, 4, 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "text has 4 tokens, needs more than max_length 4"
    );
}
