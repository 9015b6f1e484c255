//! Chapter 3, "Coding attention mechanisms", on the book's six-word sentence.
//!
//! Walks through section 3.3.1 (attention scores and weights for the query
//! "journey" without trainable weights), 3.3.2 (all context vectors), listing 3.2
//! `SelfAttention_v2`, section 3.5.1 (the causal mask), listing 3.3
//! `CausalAttention`, listing 3.4 `MultiHeadAttentionWrapper` and listing 3.5
//! `MultiHeadAttention`, then Ember's KV cache (beyond the book), which gives the
//! same outputs as the full forward pass.
//!
//! Run: `cargo run -p ember-cli --example ch03_attention`

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use ember_model::GptConfig;

use ember_attention::{
    CausalAttentionConfig, MultiHeadAttentionConfig, MultiHeadAttentionWrapperConfig,
    SelfAttentionV2Config, causal_mask, simplified_self_attention,
};

const WORDS: [&str; 6] = ["Your", "journey", "starts", "with", "one", "step"];

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, cols] = t.dims();
    let values = t.into_data().try_into_vec::<f32>().unwrap();
    values.chunks(cols).map(<[f32]>::to_vec).collect()
}

fn fmt(values: &[f32]) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.4}")).collect();
    format!("[{}]", parts.join(", "))
}

fn print_matrix(t: Tensor<2>) {
    for (word, row) in WORDS.iter().zip(rows(t)) {
        println!("  {word:>8} {}", fmt(&row));
    }
}

fn main() -> Result<()> {
    let device = ember_cli::backend::device(None)?;
    device.seed(123);
    // Section 3.3: "Your journey starts with one step", one 3-d embedding per word.
    #[rustfmt::skip]
    let values = vec![
        0.43f32, 0.15, 0.89, // Your
        0.55, 0.87, 0.66,    // journey
        0.57, 0.85, 0.64,    // starts
        0.22, 0.58, 0.33,    // with
        0.77, 0.25, 0.10,    // one
        0.05, 0.80, 0.55,    // step
    ];
    let inputs = Tensor::<2>::from_data(TensorData::new(values, [6, 3]), &device);

    println!("== 3.3.1 attention for the query x(2) = \"journey\" (no trainable weights)");
    let query = inputs.clone().slice(s![1..2, ..]);
    let scores = query.matmul(inputs.clone().transpose());
    println!("attention scores:  {}", fmt(&rows(scores.clone())[0]));
    let weights_2 = rows(softmax(scores, 1)).remove(0);
    let sum_2: f32 = weights_2.iter().sum();
    println!("attention weights: {}", fmt(&weights_2));
    println!("sum: {sum_2:.4}");

    println!("\n== 3.3.2 all attention weights and context vectors");
    let (context, weights) = simplified_self_attention(inputs.clone());
    println!("attention weights:");
    print_matrix(weights.clone());
    let row_sums = rows(weights.sum_dim(1).reshape([1, 6])).remove(0);
    println!("row sums: {}", fmt(&row_sums));
    let rows_sum_to_one = row_sums.iter().all(|s| (s - 1.0).abs() < 1e-5);
    println!("context vectors:");
    print_matrix(context.clone());

    println!("\n== 3.4 listing 3.2 SelfAttention_v2 (d_in 3, d_out 2)");
    println!("(random weights: values differ from the book's torch.manual_seed(789))");
    let sa_v2 = SelfAttentionV2Config::new(3, 2).init(&device);
    let sa_out = sa_v2.forward(inputs.clone());
    println!("output {:?}:", sa_out.dims());
    print_matrix(sa_out.clone());

    println!("\n== 3.5.1 causal mask (true = future position, hidden)");
    let mask = causal_mask(6, &device);
    let mask_rows: Vec<bool> = mask.clone().into_data().try_into_vec::<bool>().unwrap();
    for (word, row) in WORDS.iter().zip(mask_rows.chunks(6)) {
        let cells: Vec<&str> = row.iter().map(|&m| if m { "1" } else { "0" }).collect();
        println!("  {word:>8} [{}]", cells.join(" "));
    }
    // The book's efficient masking trick: -inf above the diagonal, then softmax.
    let queries = sa_v2.w_query.forward(inputs.clone());
    let keys = sa_v2.w_key.forward(inputs.clone());
    let scores = queries
        .matmul(keys.transpose())
        .mask_fill(mask, f32::NEG_INFINITY);
    let masked = softmax(scores / 2f32.sqrt(), 1);
    println!("masked attention weights:");
    print_matrix(masked.clone());
    let masked_sums = rows(masked.clone().sum_dim(1).reshape([1, 6])).remove(0);
    println!("row sums: {}", fmt(&masked_sums));
    let masked_rows_sum_to_one = masked_sums.iter().all(|s| (s - 1.0).abs() < 1e-5);
    let upper_zero = rows(masked)
        .iter()
        .enumerate()
        .all(|(i, row)| row[i + 1..].iter().all(|&w| w == 0.0));
    println!("every weight above the diagonal is 0: {upper_zero}");

    println!("\n== 3.5.3 listing 3.3 CausalAttention, 3.6 listings 3.4 and 3.5");
    let batch = Tensor::stack::<3>(vec![inputs.clone(), inputs.clone()], 0);
    println!("batch: {:?}", batch.dims());
    let ca = CausalAttentionConfig::new(3, 2).init(&device);
    let ca_shape = ca.forward(batch.clone()).dims();
    println!("CausalAttention(d_in 3, d_out 2)                   -> {ca_shape:?}");
    let wrapper = MultiHeadAttentionWrapperConfig::new(3, 2, 2).init(&device);
    let wrapper_out = wrapper.forward(batch.clone());
    let wrapper_shape = wrapper_out.dims();
    println!("MultiHeadAttentionWrapper(d_out 2, 2 heads)        -> {wrapper_shape:?}");
    let mha = MultiHeadAttentionConfig::new(3, 2, 2).init(&device);
    let mha_shape = mha.forward(batch.clone()).dims();
    println!("MultiHeadAttention(d_out 2, 2 heads)               -> {mha_shape:?}");
    let mha_gpt = MultiHeadAttentionConfig::new(768, 768, 12).init(&device);
    let x = Tensor::<3>::random([2, 6, 768], burn::tensor::Distribution::Default, &device);
    let mha_gpt_shape = mha_gpt.forward(x).dims();
    println!("MultiHeadAttention(768 -> 768, 12 heads, GPT-2's)  -> {mha_gpt_shape:?}");

    println!("\n== beyond the book: KV cache (one token at a time) = full forward");
    let config = GptConfig {
        vocab_size: 50257,
        context_length: 16,
        emb_dim: 64,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.0,
        ..GptConfig::gpt2_small()
    };
    let model = config.init(&device);
    // "Your journey starts with one step" in GPT-2 ids.
    let ids: Vec<i64> = vec![7120, 7002, 4940, 351, 530, 2239];
    let ids_tensor = |ids: &[i64]| {
        Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device)
    };
    let full = model.forward(ids_tensor(&ids));
    let mut cache = model.new_cache();
    let mut steps = Vec::new();
    for i in 0..ids.len() {
        steps.push(model.forward_cached(ids_tensor(&ids[i..i + 1]), &mut cache)?);
    }
    let cached = Tensor::cat(steps, 1);
    let max_diff: f32 = (full.clone() - cached)
        .abs()
        .max()
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()[0];
    let kv_equal = max_diff < 1e-4;
    println!(
        "logits {:?}; {} cached positions; max |full - cached| = {max_diff:.2e}; equal: {kv_equal}",
        full.dims(),
        cache.len()
    );

    println!(
        "\nKEY NUMBERS: journey_weights={} journey_sum={sum_2:.4} rows_sum_to_one={rows_sum_to_one} \
         masked_rows_sum_to_one={masked_rows_sum_to_one} upper_triangle_zero={upper_zero} \
         self_attention_v2={:?} causal_attention={ca_shape:?} wrapper={wrapper_shape:?} \
         multi_head={mha_shape:?} multi_head_gpt2={mha_gpt_shape:?} kv_cache_equal={kv_equal}",
        fmt(&weights_2),
        sa_out.dims()
    );
    Ok(())
}
