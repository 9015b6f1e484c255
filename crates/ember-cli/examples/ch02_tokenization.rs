//! Chapter 2, "Working with text data", run on the book's short story.
//!
//! Walks through section 2.2 (splitting the-verdict with the book's regular
//! expression), 2.3 (the vocabulary), listing 2.3 `SimpleTokenizerV1`, listing 2.4
//! `SimpleTokenizerV2` with `<|unk|>` and `<|endoftext|>`, section 2.5 (GPT-2's byte
//! pair encoding, as tiktoken), listings 2.5/2.6 (`GPTDatasetV1` and
//! `create_dataloader_v1` as `SlidingWindowDataset` and `Batcher`) and sections
//! 2.7/2.8 (token and position embeddings).
//!
//! Run: `cargo run -p ember-cli --example ch02_tokenization`

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::nn::EmbeddingConfig;
use burn::prelude::*;
use ember_data::{Batcher, EpochPlan, SlidingWindowDataset};
use ember_tokenizer::{
    Gpt2Tokenizer, SimpleTokenizerV1, SimpleTokenizerV2, Tokenizer, simple_split,
};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> Result<()> {
    let path = workspace_root().join("datasets/the-verdict.txt");
    let raw_text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;

    // 2.2 Tokenizing text.
    println!("== 2.2 tokenizing the-verdict");
    let num_chars = raw_text.chars().count();
    println!("Total number of character: {num_chars}");
    println!("{:?}", raw_text.chars().take(99).collect::<String>());
    let preprocessed = simple_split(&raw_text);
    println!("{} tokens; the first 30:", preprocessed.len());
    println!("{:?}", &preprocessed[..30]);

    // 2.3 Converting tokens into token IDs.
    println!("\n== 2.3 vocabulary and listing 2.3 SimpleTokenizerV1");
    let v1 = SimpleTokenizerV1::from_text(&raw_text);
    let vocab_v1 = v1.vocab().len();
    println!("vocabulary size: {vocab_v1}");
    for (token, id) in v1.vocab().iter().take(8) {
        println!("  ({token:?}, {id})");
    }
    let text = "\"It's the last he painted, you know,\" Mrs. Gisburn said with pardonable pride.";
    let ids_v1 = v1.encode(text, false)?;
    println!("encode({text:?})\n  = {ids_v1:?}");
    println!("decode = {:?}", v1.decode(&ids_v1)?);
    match v1.encode("Hello, do you like tea?", false) {
        Ok(ids) => println!("unexpected: \"Hello\" encoded as {ids:?}"),
        Err(e) => {
            println!("V1 on \"Hello, do you like tea?\": error ({e}), as the book's KeyError")
        }
    }

    // 2.4 Adding special context tokens.
    println!("\n== 2.4 listing 2.4 SimpleTokenizerV2");
    let v2 = SimpleTokenizerV2::from_text(&raw_text);
    let vocab_v2 = v2.vocab().len();
    println!("vocabulary size with <|unk|> and <|endoftext|>: {vocab_v2}");
    let mut last: Vec<_> = v2.vocab().iter().collect();
    last.sort_by_key(|(_, id)| **id);
    for (token, id) in &last[last.len() - 5..] {
        println!("  ({token:?}, {id})");
    }
    let text_v2 = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace.";
    let ids_v2 = v2.encode(text_v2, true)?;
    println!("encode({text_v2:?})\n  = {ids_v2:?}");
    println!("decode = {:?}", v2.decode(&ids_v2)?);

    // 2.5 Byte pair encoding.
    println!("\n== 2.5 byte pair encoding (GPT-2, as tiktoken)");
    let bpe = Gpt2Tokenizer::gpt2()?;
    let text_bpe =
        "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.";
    let ids_bpe = bpe.encode(text_bpe, true)?;
    println!("encode({text_bpe:?})\n  = {ids_bpe:?}");
    println!("decode = {:?}", bpe.decode(&ids_bpe)?);
    println!("vocabulary size: {}", bpe.vocab_size());

    // 2.6 Data sampling with a sliding window.
    println!("\n== 2.6 sliding window (listing 2.5 GPTDatasetV1)");
    let enc_text = bpe.encode(&raw_text, true)?;
    println!("the-verdict: {} BPE tokens", enc_text.len());
    let enc_sample = &enc_text[50..];
    let context_size = 4;
    println!("x: {:?}", &enc_sample[..context_size]);
    println!("y:      {:?}", &enc_sample[1..context_size + 1]);
    for i in 1..=context_size {
        println!(
            "  {:?} ----> {:?}",
            bpe.decode(&enc_sample[..i])?,
            bpe.decode(&enc_sample[i..i + 1])?
        );
    }
    let dataset = SlidingWindowDataset::new(enc_text.clone(), 4, 1)?;
    let (input0, target0) = dataset.get(0).context("window 0")?;
    let (input1, target1) = dataset.get(1).context("window 1")?;
    println!("max_length 4, stride 1: {} windows", dataset.len());
    println!("  window 0: input {input0:?} target {target0:?}");
    println!("  window 1: input {input1:?} target {target1:?}");

    // Listing 2.6 create_dataloader_v1(batch_size=8, max_length=4, stride=4, shuffle=False).
    let dataset4 = SlidingWindowDataset::new(enc_text.clone(), 4, 4)?;
    let loader = Batcher::new(
        &dataset4,
        EpochPlan {
            batch_size: 8,
            shuffle: false,
            seed: 123,
            drop_last: true,
        },
    )?;
    let batch = loader.batch(0, 0)?;
    println!(
        "batch_size 8, max_length 4, stride 4: {} batches; first inputs:",
        loader.num_batches()
    );
    for row in batch.inputs.chunks(batch.seq_len) {
        println!("  {row:?}");
    }

    // 2.7 / 2.8 Token and position embeddings.
    println!("\n== 2.7-2.8 token and position embeddings");
    let device = ember_cli::backend::device(None)?;
    device.seed(123);
    let (vocab_size, output_dim) = (50257, 256);
    let token_embedding = EmbeddingConfig::new(vocab_size, output_dim).init(&device);
    let pos_embedding = EmbeddingConfig::new(context_size, output_dim).init(&device);
    let ids: Vec<i64> = batch.inputs.iter().map(|&t| t as i64).collect();
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(ids, [8, context_size]), &device);
    let token_embeddings = token_embedding.forward(inputs);
    let positions = Tensor::<1, Int>::arange(0..context_size as i64, &device).reshape([1, 4]);
    let pos_embeddings = pos_embedding.forward(positions); // [1, 4, 256]
    let input_embeddings = token_embeddings.clone() + pos_embeddings.clone();
    println!("token embeddings:    {:?}", token_embeddings.dims());
    println!("position embeddings: {:?}", &pos_embeddings.dims()[1..]);
    println!("input embeddings:    {:?}", input_embeddings.dims());

    println!(
        "\nKEY NUMBERS: characters={num_chars} simple_tokens={} vocab={vocab_v1} vocab_special={vocab_v2} \
         v1_ids={ids_v1:?} v2_ids={ids_v2:?} bpe_ids={ids_bpe:?} verdict_bpe_tokens={} \
         first_input={input0:?} first_target={target0:?} windows={} \
         input_embeddings={:?}",
        preprocessed.len(),
        enc_text.len(),
        dataset.len(),
        input_embeddings.dims()
    );
    Ok(())
}
