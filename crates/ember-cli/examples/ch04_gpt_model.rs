//! Chapter 4, "Implementing a GPT model from scratch to generate text".
//!
//! Walks through section 4.1 (`GPT_CONFIG_124M` as `GptConfig::gpt2_small()`), the
//! batch of two prompts of section 4.1, listing 4.7 `GPTModel` (a forward pass to
//! `[batch, tokens, vocab]` logits), section 4.6 (parameter count with and without
//! weight tying and the memory footprint, plus exercise 4.2's larger presets) and
//! listing 4.8 `generate_text_simple` (greedy decoding of six new tokens with an
//! untrained, seeded model: gibberish, as in the book).
//!
//! Run: `cargo run -p ember-cli --example ch04_gpt_model`

use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use ember_model::{GenerationConfig, GptConfig, generate};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};

/// 163009536 -> "163,009,536"
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> Result<()> {
    let device = ember_cli::backend::device(None)?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;

    println!("== 4.1 GPT_CONFIG_124M");
    let small = GptConfig::gpt2_small();
    println!("{small:#?}");

    println!("\n== 4.6 parameters and memory");
    let untied = small.num_params();
    let tied = small.clone().with_tied_embeddings(true).num_params();
    let size_mb = small.size_mb();
    println!("Total number of parameters: {}", thousands(untied));
    println!(
        "Token embedding layer shape: [{}, {}]",
        small.vocab_size, small.emb_dim
    );
    println!(
        "Output layer shape: [{}, {}]",
        small.vocab_size, small.emb_dim
    );
    println!(
        "Number of trainable parameters considering weight tying: {}",
        thousands(tied)
    );
    println!("Total size of the model: {size_mb:.2} MB");
    // Building the model (163M parameters) checks the count against real tensors.
    device.seed(123);
    let built = small.init(&device).num_params();
    println!(
        "a GptModel built from this config has {} parameters",
        thousands(built)
    );
    println!("exercise 4.2, the larger presets (untied head / tied / MB untied):");
    let mut preset_counts = Vec::new();
    for (name, config) in [
        ("gpt2-medium", GptConfig::gpt2_medium()),
        ("gpt2-large", GptConfig::gpt2_large()),
        ("gpt2-xl", GptConfig::gpt2_xl()),
    ] {
        let untied = config.num_params();
        let tied = config.clone().with_tied_embeddings(true).num_params();
        println!(
            "  {name:<12} {:>15} {:>15} {:>10.2} MB",
            thousands(untied),
            thousands(tied),
            config.size_mb()
        );
        preset_counts.push(format!("{name}={}/{}", thousands(untied), thousands(tied)));
    }

    println!("\n== 4.1 / listing 4.7 forward pass of a small GPT on the book's batch");
    let config = GptConfig {
        drop_rate: 0.0,
        ..GptConfig::tiny()
    };
    println!(
        "model: vocab {}, context {}, emb {}, {} heads, {} layers ({} parameters)",
        config.vocab_size,
        config.context_length,
        config.emb_dim,
        config.n_heads,
        config.n_layers,
        thousands(config.num_params())
    );
    device.seed(123);
    let model = config.init(&device);
    let txt1 = "Every effort moves you";
    let txt2 = "Every day holds a";
    let ids1 = tokenizer.encode(txt1, false)?;
    let ids2 = tokenizer.encode(txt2, false)?;
    println!("{txt1:?} -> {ids1:?}");
    println!("{txt2:?} -> {ids2:?}");
    let flat: Vec<i64> = ids1.iter().chain(&ids2).map(|&t| t as i64).collect();
    let batch = Tensor::<2, Int>::from_data(TensorData::new(flat, [2, ids1.len()]), &device);
    println!("batch: {:?}", batch.dims());
    let logits = model.forward(batch);
    let logits_shape = logits.dims();
    println!("output shape: {logits_shape:?}");
    let first = logits
        .slice(s![0..1, 0..1, 0..5])
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    println!("logits[0, 0, :5] = {first:.4?} (random weights)");

    println!("\n== listing 4.8 generate_text_simple (greedy, 6 new tokens, untrained model)");
    let start_context = "Hello, I am";
    let encoded = tokenizer.encode(start_context, false)?;
    println!("encoded: {encoded:?}");
    let greedy = GenerationConfig {
        max_new_tokens: 6,
        temperature: 0.0,
        use_kv_cache: false,
        ..GenerationConfig::default()
    };
    let new = generate(&model, &encoded, &greedy, &device, |_| {})?;
    let all: Vec<u32> = encoded.iter().chain(&new).copied().collect();
    println!("output: {all:?}");
    println!("output length: {}", all.len());
    println!("decoded: {:?}", tokenizer.decode(&all)?);
    let cached = generate(
        &model,
        &encoded,
        &GenerationConfig {
            use_kv_cache: true,
            ..greedy
        },
        &device,
        |_| {},
    )?;
    println!("the same with the KV cache: {}", cached == new);

    println!(
        "\nKEY NUMBERS: params_untied={} params_tied={} size_mb={size_mb:.2} built_params={} {} \
         logits={logits_shape:?} generated_len={} kv_cache_same={}",
        thousands(untied),
        thousands(tied),
        thousands(built),
        preset_counts.join(" "),
        all.len(),
        cached == new
    );
    Ok(())
}
