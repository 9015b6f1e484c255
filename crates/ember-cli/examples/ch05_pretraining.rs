//! Chapter 5, "Pretraining on unlabeled data".
//!
//! Walks through section 5.1.2 (cross-entropy and perplexity of an untrained model:
//! about ln(50257) = 10.82), section 5.3.1 (temperature scaling on the book's
//! nine-word vocabulary: softmax, greedy pick, 1000 draws at temperatures 1, 0.1 and
//! 5), section 5.3.2 (top-k filtering with k = 3) and listing 5.3 `train_model_simple`
//! (`ember_train::train_model_simple`, the book's loop in one function, for one epoch
//! on the-verdict with a very small model, whose training loss falls).
//!
//! Run: `cargo run -p ember-cli --example ch05_pretraining`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use ember_data::{Batcher, EpochPlan, SlidingWindowDataset, split_text};
use ember_model::{GenerationConfig, GptConfig, sample_next_token};
use ember_tokenizer::{Gpt2Tokenizer, Tokenizer};
use ember_train::{AdamWSettings, PretrainConfig, cross_entropy, perplexity, train_model_simple};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const VOCAB: [&str; 9] = [
    "closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you",
];
// 6.28 is the book's logit for "toward", not 2π.
#[allow(clippy::approx_constant)]
const NEXT_TOKEN_LOGITS: [f32; 9] = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79];

fn softmax_host(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let exps: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> Result<()> {
    let device = ember_cli::backend::device(None)?;
    let tokenizer = Gpt2Tokenizer::gpt2()?;

    println!("== 5.1.2 cross-entropy and perplexity of an untrained model");
    // The very small model trained below (context 32, emb 32, 2 heads, 2 layers): its
    // near-uniform start gives about ln(50257); the book's untrained GPT-2 gives 10.7940.
    let config = GptConfig {
        context_length: 32,
        emb_dim: 32,
        n_heads: 2,
        n_layers: 2,
        drop_rate: 0.0,
        ..GptConfig::tiny()
    };
    device.seed(123);
    let model = config.init(&device);
    let inputs_text = ["every effort moves", "I really like"];
    let targets_text = [" effort moves you", " really like chocolate"];
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for (i, t) in inputs_text.iter().zip(targets_text) {
        let ids = tokenizer.encode(i, false)?;
        let tgt = tokenizer.encode(t, false)?;
        println!("inputs {i:?} = {ids:?}, targets {t:?} = {tgt:?}");
        inputs.extend(ids.iter().map(|&x| x as i64));
        targets.extend(tgt.iter().map(|&x| x as i64));
    }
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(inputs, [2, 3]), &device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [2, 3]), &device);
    let logits = model.forward(inputs);
    println!("logits: {:?}", logits.dims());
    let probas = softmax(logits.clone(), 2).reshape([6, 50257]);
    let target_probas = probas
        .gather(1, targets.clone().reshape([6, 1]))
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let shown: Vec<String> = target_probas.iter().map(|p| format!("{p:.4e}")).collect();
    println!(
        "target probabilities: [{}] (1/50257 = {:.4e})",
        shown.join(", "),
        1.0 / 50257.0
    );
    let loss = cross_entropy(logits, targets)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()[0] as f64;
    let ppl = perplexity(loss);
    println!(
        "cross-entropy: {loss:.4} (ln 50257 = {:.4}); perplexity: {ppl:.1}",
        (50257f64).ln()
    );

    println!("\n== 5.3 decoding strategies on the book's 9-word vocabulary");
    println!("next-token logits: {NEXT_TOKEN_LOGITS:?}");
    let probs = softmax_host(&NEXT_TOKEN_LOGITS, 1.0);
    for (word, p) in VOCAB.iter().zip(&probs) {
        println!("  {word:>8} {p:.4}");
    }
    let greedy = sample_next_token(
        &NEXT_TOKEN_LOGITS,
        &GenerationConfig {
            temperature: 0.0,
            ..GenerationConfig::default()
        },
        &mut ChaCha8Rng::seed_from_u64(123),
    );
    println!("greedy (argmax) pick: {}", VOCAB[greedy as usize]);

    println!("\n5.3.1 1000 draws with sample_next_token at temperatures 1, 0.1, 5");
    println!(
        "note: Ember draws with a seeded ChaCha8 generator, so the counts differ from the \
         book's torch.manual_seed(123) multinomial; they follow the expected probabilities p"
    );
    let temperatures = [1.0, 0.1, 5.0];
    let mut counts = Vec::new();
    for &temperature in &temperatures {
        let cfg = GenerationConfig {
            temperature,
            ..GenerationConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(123);
        let mut c = [0usize; 9];
        for _ in 0..1000 {
            c[sample_next_token(&NEXT_TOKEN_LOGITS, &cfg, &mut rng) as usize] += 1;
        }
        counts.push(c);
    }
    println!(
        "  {:>8} | {:>6} {:>7} | {:>6} {:>7} | {:>6} {:>7}",
        "token", "T=1", "p", "T=0.1", "p", "T=5", "p"
    );
    let expected: Vec<Vec<f64>> = temperatures
        .iter()
        .map(|&t| softmax_host(&NEXT_TOKEN_LOGITS, t))
        .collect();
    for (i, word) in VOCAB.iter().enumerate() {
        println!(
            "  {word:>8} | {:>6} {:>7.4} | {:>6} {:>7.4} | {:>6} {:>7.4}",
            counts[0][i],
            expected[0][i],
            counts[1][i],
            expected[1][i],
            counts[2][i],
            expected[2][i]
        );
    }
    let pizza_t5 = counts[2][6];
    println!(
        "\"pizza\" at T=5: {pizza_t5}/1000 draws (p = {:.4}; the book reports 32/1000)",
        expected[2][6]
    );

    println!("\n5.3.2 top-k filtering, k = 3");
    let mut order: Vec<usize> = (0..9).collect();
    order.sort_by(|&a, &b| NEXT_TOKEN_LOGITS[b].total_cmp(&NEXT_TOKEN_LOGITS[a]));
    let top3: Vec<usize> = order[..3].to_vec();
    let top3_logits: Vec<f32> = top3.iter().map(|&i| NEXT_TOKEN_LOGITS[i]).collect();
    println!("top logits: {top3_logits:?}, top positions: {top3:?}");
    let masked: Vec<f32> = (0..9)
        .map(|i| {
            if top3.contains(&i) {
                NEXT_TOKEN_LOGITS[i]
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    println!("masked logits: {masked:?}");
    let topk_probs = softmax_host(&masked, 1.0);
    let topk_fmt: Vec<String> = topk_probs.iter().map(|p| format!("{p:.4}")).collect();
    println!("top-k probabilities: [{}]", topk_fmt.join(", "));
    let topk_cfg = GenerationConfig {
        temperature: 1.0,
        top_k: Some(3),
        ..GenerationConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(123);
    let mut topk_counts = [0usize; 9];
    for _ in 0..1000 {
        topk_counts[sample_next_token(&NEXT_TOKEN_LOGITS, &topk_cfg, &mut rng) as usize] += 1;
    }
    println!("1000 draws with top_k 3, T=1: {topk_counts:?} (only positions {top3:?} appear)");
    let topk_only = topk_counts
        .iter()
        .enumerate()
        .all(|(i, &c)| c == 0 || top3.contains(&i));

    println!("\n== listing 5.3 train_model_simple on the-verdict");
    // The book's code, line for line: loaders over the 90/10 split, AdamW, the loop of
    // `ember_train::train_model_simple` (crates/ember-train/src/simple.rs). `ember
    // pretrain` runs the same steps through `ember_train::fit`.
    let model_config = GptConfig {
        context_length: 32,
        emb_dim: 32,
        n_heads: 2,
        n_layers: 2,
        ..PretrainConfig::tiny().model
    };
    let text = std::fs::read_to_string(workspace_root().join("datasets/the-verdict.txt"))?;
    let (train_text, val_text) = split_text(&text, 0.9);
    let windows = |text: &str| -> Result<SlidingWindowDataset> {
        Ok(SlidingWindowDataset::new(
            tokenizer.encode(text, true)?,
            32,
            32,
        )?)
    };
    let (train_data, val_data) = (windows(train_text)?, windows(val_text)?);
    // Batches of 7 make exactly 20 steps of one epoch.
    let train_loader = Batcher::new(&train_data, EpochPlan::new(7, true, 123, true)?)?;
    let val_loader = Batcher::new(&val_data, EpochPlan::new(7, false, 123, false)?)?;
    let train_device = device.clone().autodiff();
    train_device.seed(123);
    let model = model_config.init(&train_device);
    let mut optimizer = AdamWSettings {
        weight_decay: 0.1,
        ..AdamWSettings::default()
    }
    .init();
    println!(
        "model: context {}, emb {}, {} heads, {} layers ({} parameters); batch 7, lr 4e-3, 1 epoch",
        model_config.context_length,
        model_config.emb_dim,
        model_config.n_heads,
        model_config.n_layers,
        model_config.num_params(),
    );
    let start = Instant::now();
    let (_model, log) = train_model_simple(
        model,
        &train_loader,
        &val_loader,
        &mut optimizer,
        4e-3,
        &train_device,
        1,
        5,
        2,
        "Every effort moves you",
        &tokenizer,
    )?;
    println!(
        "{} steps in {:.1} s",
        log.step_losses.len(),
        start.elapsed().as_secs_f64()
    );
    for (i, loss) in log.step_losses.iter().enumerate() {
        println!("  step {:>3}  train loss {loss:.3}", i + 1);
    }
    for ((train, val), tokens) in log
        .train_losses
        .iter()
        .zip(&log.val_losses)
        .zip(&log.track_tokens_seen)
    {
        println!("  evaluation after {tokens} tokens: train {train:.3}, val {val:.3}");
    }
    println!(
        "  sample: {}",
        log.samples.last().map_or("", String::as_str)
    );
    ensure!(!log.step_losses.is_empty(), "no step was run");
    let first_loss = log.step_losses[0];
    let last_loss = log.step_losses[log.step_losses.len() - 1];
    let falls = last_loss < first_loss;
    println!(
        "train loss {first_loss:.3} -> {last_loss:.3}; last evaluation: train {:?}, val {:?}",
        log.train_losses.last(),
        log.val_losses.last()
    );

    println!(
        "\nKEY NUMBERS: untrained_loss={loss:.2} perplexity={ppl:.0} greedy={} \
         probs_t1=[{}] counts_t1={:?} counts_t0.1={:?} counts_t5={:?} top3={top3:?} \
         topk_only={topk_only} train_steps={} first_loss={first_loss:.3} last_loss={last_loss:.3} \
         loss_falls={falls}",
        VOCAB[greedy as usize],
        probs
            .iter()
            .map(|p| format!("{p:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        counts[0],
        counts[1],
        counts[2],
        log.step_losses.len()
    );
    Ok(())
}
