//! Chapter 7, "Fine-tuning to follow instructions": the data side.
//!
//! Walks through section 7.2 (instruction-data.json, listing 7.2 `format_input`: the
//! Alpaca-style prompt, the 85/10/5 split) and section 7.3 (listing 7.5's
//! `custom_collate_fn` on the book's toy batch: inputs padded with `<|endoftext|>`,
//! targets shifted by one with -100 after the first end-of-text, with and without
//! `allowed_max_length`), then the token lengths of the formatted training set.
//!
//! Run: `cargo run -p ember-cli --example ch07_instruction`

use std::path::PathBuf;

use anyhow::{Context, Result};
use ember_data::{
    InstructionEntry, book_split, collate_instructions, format_example, format_input,
};
use ember_tokenizer::{END_OF_TEXT_ID, Gpt2Tokenizer, Tokenizer};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rows<T: Clone>(values: &[T], seq_len: usize) -> Vec<Vec<T>> {
    values.chunks(seq_len).map(<[T]>::to_vec).collect()
}

fn main() -> Result<()> {
    println!("== 7.2 instruction-data.json");
    let path = workspace_root().join("datasets/instruction-data.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let data: Vec<InstructionEntry> = serde_json::from_str(&text)?;
    println!("Number of entries: {}", data.len());
    println!("Example entry:\n{:#?}", data[50]);

    println!("\n-- listing 7.2 format_input(data[50]) + the response:");
    let entry_50 = format_example(&data[50], &data[50].output);
    println!("{entry_50}");
    println!("\n-- data[999] (no input field):");
    println!("{}", format_example(&data[999], &data[999].output));

    let (train, test, validation) = book_split(&data);
    let sizes = format!("{}/{}/{}", train.len(), test.len(), validation.len());
    println!("\nTraining set length: {}", train.len());
    println!("Test set length: {}", test.len());
    println!("Validation set length: {}", validation.len());

    println!("\n== 7.3 custom_collate_fn on the book's toy batch");
    let batch: [&[u32]; 3] = [&[0, 1, 2, 3, 4], &[5, 6], &[7, 8, 9]];
    println!("sequences: {batch:?}");
    let full = collate_instructions(&batch, END_OF_TEXT_ID, None, None);
    let full_inputs = rows(&full.inputs, full.seq_len);
    let full_targets = rows(&full.targets, full.seq_len);
    println!("inputs  [{}, {}]:", full.batch_size, full.seq_len);
    for r in &full_inputs {
        println!("  {r:?}");
    }
    println!("targets:");
    for r in &full_targets {
        println!("  {r:?}");
    }
    let cut = collate_instructions(&batch, END_OF_TEXT_ID, Some(3), None);
    let cut_inputs = rows(&cut.inputs, cut.seq_len);
    let cut_targets = rows(&cut.targets, cut.seq_len);
    println!(
        "with allowed_max_length = 3: inputs [{}, {}]:",
        cut.batch_size, cut.seq_len
    );
    for r in &cut_inputs {
        println!("  {r:?}");
    }
    println!("targets:");
    for r in &cut_targets {
        println!("  {r:?}");
    }

    println!("\n== the training set in GPT-2 tokens");
    let tokenizer = Gpt2Tokenizer::gpt2()?;
    let mut lengths = Vec::with_capacity(train.len());
    for entry in &train {
        lengths.push(
            tokenizer
                .encode(&format_example(entry, &entry.output), false)?
                .len()
                + 1,
        );
    }
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
    println!(
        "{} examples (+ <|endoftext|>): longest {longest} tokens, mean {mean:.1}; \
         all fit allowed_max_length 1024: {}",
        lengths.len(),
        longest <= 1024
    );
    let prompt_50 = tokenizer.encode(&format_input(&data[50]), false)?.len();
    println!("data[50]: prompt {prompt_50} tokens");

    println!(
        "\nKEY NUMBERS: entries={} split={sizes} (train/test/validation) \
         collate_inputs={full_inputs:?} collate_targets={full_targets:?} \
         collate_max3_inputs={cut_inputs:?} collate_max3_targets={cut_targets:?} \
         longest_train_tokens={longest}",
        data.len()
    );
    Ok(())
}
