//! Chapter 6, "Fine-tuning for classification": the data and the classification head.
//!
//! Walks through section 6.2 (the SMS Spam Collection read as pandas reads it,
//! `create_balanced_dataset` and `random_split` with the book's seeds, so the very rows
//! the book picks), section 6.3 / listing 6.4 `SpamDataset` (GPT-2 BPE ids, the
//! longest training message, padding with `<|endoftext|>` = 50256) and section 6.5
//! (a two-class linear head on the last token's hidden state, here on top of a tiny
//! random `GptModel::forward_hidden`; training it is section 6.7).
//!
//! Run: `cargo run -p ember-cli --example ch06_classification`

use std::path::PathBuf;

use anyhow::Result;
use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use ember_model::GptConfig;
use ember_tokenizer::{END_OF_TEXT_ID, Gpt2Tokenizer, Tokenizer};

use ember_finetune::spam;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> Result<()> {
    let device = ember_cli::backend::device(None)?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;

    println!("== 6.2 the SMS Spam Collection");
    let path = workspace_root().join("datasets/sms_spam_collection/SMSSpamCollection");
    let examples = spam::read_sms_spam(&path)?;
    let n_spam = examples.iter().filter(|e| e.label == 1).count();
    let n_ham = examples.len() - n_spam;
    println!("{} rows: ham {n_ham}, spam {n_spam}", examples.len());
    for e in &examples[..3] {
        println!("  {} {:?}", ["ham", "spam"][e.label as usize], e.text);
    }

    let balanced_idx = spam::balanced_indices(&examples, 123);
    let balanced: Vec<spam::SmsExample> =
        balanced_idx.iter().map(|&i| examples[i].clone()).collect();
    let balanced_spam = balanced.iter().filter(|e| e.label == 1).count();
    println!(
        "create_balanced_dataset: {} rows (ham {}, spam {balanced_spam}); first row indices {:?}",
        balanced.len(),
        balanced.len() - balanced_spam,
        &balanced_idx[..5]
    );
    let split = spam::random_split(&balanced, 0.7, 0.1, 123);
    let sizes = format!(
        "{}/{}/{}",
        split.train.len(),
        split.validation.len(),
        split.test.len()
    );
    println!("random_split(0.7, 0.1): train/validation/test = {sizes}");

    println!("\n== 6.3 SpamDataset: GPT-2 BPE ids, padded with {END_OF_TEXT_ID}");
    let encoded: Vec<Vec<u32>> = split
        .train
        .iter()
        .map(|e| tokenizer.encode(&e.text, false))
        .collect::<Result<_, _>>()?;
    let (longest_idx, longest) = encoded
        .iter()
        .enumerate()
        .max_by_key(|(i, ids)| (ids.len(), std::cmp::Reverse(*i)))
        .map(|(i, ids)| (i, ids.len()))
        .unwrap();
    println!("longest training message: {longest} tokens (row {longest_idx})");
    let validation_longest = split
        .validation
        .iter()
        .map(|e| tokenizer.encode(&e.text, false).map(|ids| ids.len()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    println!(
        "longest validation message: {validation_longest} tokens (truncated/padded to {longest})"
    );
    let first = &split.train[0];
    let mut padded = encoded[0].clone();
    let real = padded.len();
    padded.resize(longest, END_OF_TEXT_ID);
    println!(
        "first training row ({}): {:?}",
        ["ham", "spam"][first.label as usize],
        first.text
    );
    println!(
        "  {real} tokens + {} x {END_OF_TEXT_ID} = {} ids: {:?} ... {:?}",
        longest - real,
        padded.len(),
        &padded[..real.min(12)],
        &padded[padded.len() - 4..]
    );
    let batches = split.train.len() / 8;
    println!("with batch_size 8 and drop_last: {batches} training batches");

    println!("\n== 6.5 a classification head on the last token (untrained, tiny model)");
    let config = GptConfig {
        drop_rate: 0.0,
        ..GptConfig::tiny()
    };
    device.seed(123);
    let model = config.init(&device);
    let head = LinearConfig::new(config.emb_dim, 2).init(&device);
    println!(
        "model: emb {}, {} layers; head: Linear({} -> 2)",
        config.emb_dim, config.n_layers, config.emb_dim
    );
    let ids_tensor = |ids: &[u32]| {
        let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device)
    };
    let inputs = tokenizer.encode("Do you have time", false)?;
    let all_positions = head.forward(model.forward_hidden(ids_tensor(&inputs)));
    let head_shape = all_positions.dims();
    println!("\"Do you have time\" = {inputs:?}: head over every position -> {head_shape:?}");
    let messages = [
        "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
        "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
    ];
    let mut last_shapes = Vec::new();
    for text in messages {
        let ids = tokenizer.encode(text, false)?;
        let hidden = model.forward_hidden(ids_tensor(&ids)); // [1, n, d]
        let n = ids.len();
        let last = hidden
            .slice(s![.., n - 1..n, ..])
            .reshape([1, config.emb_dim]);
        let logits = head.forward(last); // [1, 2]
        last_shapes.push(logits.dims());
        let probs = softmax(logits.clone(), 1)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let logits = logits.into_data().try_into_vec::<f32>().unwrap();
        let predicted = if probs[1] > probs[0] {
            "spam"
        } else {
            "not spam"
        };
        println!("{text:?}");
        println!(
            "  {n} tokens; last-token logits [{:.4}, {:.4}], probabilities [{:.4}, {:.4}] -> {predicted} (untrained)",
            logits[0], logits[1], probs[0], probs[1]
        );
    }

    println!(
        "\nKEY NUMBERS: rows={} ham={n_ham} spam={n_spam} balanced={} first_balanced={:?} \
         split={sizes} longest_train_tokens={longest} pad_id={END_OF_TEXT_ID} padded_len={} \
         head_all_positions={head_shape:?} last_token_logits={:?}",
        examples.len(),
        balanced.len(),
        &balanced_idx[..5],
        padded.len(),
        last_shapes[0]
    );
    Ok(())
}
