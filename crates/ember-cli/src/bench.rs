//! `ember bench`: the same measurements as `bench/torch_gpt_bench.py`, printed as the
//! same JSON keys so `cargo xtask bench` can put them side by side.
//!
//! - `train`: tokens/s of full training steps (forward, cross-entropy, backward, AdamW)
//!   on random tokens, median over `steps` after `warmup`;
//! - `generate`: new tokens/s of greedy decoding from a random prompt, with and
//!   without the KV cache, median over `reps`.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ember_model::{GenerationConfig, GptConfig, generate};
use ember_train::{AdamWSettings, cross_entropy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Settings of one benchmark run (the PyTorch script's arguments and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// `train` or `generate`.
    #[arg(long, default_value = "train")]
    pub mode: String,
    /// `tiny` (64 wide, 2 layers), `gpt2-small` or `gpt2-medium`.
    #[arg(long, default_value = "gpt2-small")]
    pub preset: String,
    /// Context length (training sequence length).
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Timed generation repetitions.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Untimed warm-up steps or repetitions.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Prompt tokens for generation.
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// Generated tokens.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Dropout during training.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn config(args: &BenchArgs) -> Result<GptConfig> {
    let (emb_dim, n_layers, n_heads) = match args.preset.as_str() {
        "tiny" => (64, 2, 4),
        "gpt2-small" => (768, 12, 12),
        "gpt2-medium" => (1024, 24, 16),
        other => bail!("unknown bench preset \"{other}\" (tiny, gpt2-small, gpt2-medium)"),
    };
    let context_length = if args.mode == "generate" {
        args.context.max(args.prompt_len + args.new_tokens)
    } else {
        args.context
    };
    Ok(GptConfig {
        vocab_size: 50257,
        context_length,
        emb_dim,
        n_heads,
        n_layers,
        drop_rate: args.dropout,
        qkv_bias: false,
        tie_embeddings: false,
        weight_init: Default::default(),
    })
}

/// Runs the benchmark and returns its JSON record.
pub fn run(args: &BenchArgs, backend: &str, device: &Device) -> Result<Value> {
    let config = config(args)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut record = json!({
        "engine": "ember",
        "backend": backend,
        "mode": args.mode,
        "preset": args.preset,
        "context": config.context_length,
        "batch": args.batch,
        "dtype": "fp32",
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "params": config.num_params(),
    });
    let extra = match args.mode.as_str() {
        "train" => {
            let train_device = device.clone().autodiff();
            train_device.seed(123);
            let mut model = config.init(&train_device);
            let mut optim = AdamWSettings {
                weight_decay: 0.1,
                ..AdamWSettings::default()
            }
            .init();
            let tokens: Vec<i64> = (0..args.batch * (args.context + 1))
                .map(|_| rng.random_range(0..50257))
                .collect();
            let (mut inputs, mut targets) = (Vec::new(), Vec::new());
            for row in tokens.chunks(args.context + 1) {
                inputs.extend_from_slice(&row[..args.context]);
                targets.extend_from_slice(&row[1..]);
            }
            let shape = [args.batch, args.context];
            let inputs = Tensor::<2, Int>::from_data(TensorData::new(inputs, shape), &train_device);
            let targets =
                Tensor::<2, Int>::from_data(TensorData::new(targets, shape), &train_device);
            let mut times = Vec::new();
            // Where a step's time goes: forward + loss, backward, optimizer. Exact on the
            // CPU backends, which compute eagerly; on asynchronous ones (wgpu, CUDA) work
            // queued in one phase may finish in the next.
            let (mut forward_times, mut backward_times, mut optimizer_times) =
                (Vec::new(), Vec::new(), Vec::new());
            let mut last_loss = 0.0f32;
            for step in 0..args.warmup + args.steps {
                let start = Instant::now();
                let loss = cross_entropy(model.forward(inputs.clone()), targets.clone());
                let forward_done = Instant::now();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let backward_done = Instant::now();
                model = optim.step(4e-4, model, grads);
                // Reading the loss waits for the step to finish on asynchronous backends.
                last_loss = loss.into_scalar();
                let _ = model.num_params();
                if step >= args.warmup {
                    let end = Instant::now();
                    times.push((end - start).as_secs_f64());
                    forward_times.push((forward_done - start).as_secs_f64());
                    backward_times.push((backward_done - forward_done).as_secs_f64());
                    optimizer_times.push((end - backward_done).as_secs_f64());
                }
            }
            let med = median(times.clone());
            json!({
                "step_s_median": med,
                "step_s_min": times.iter().copied().fold(f64::MAX, f64::min),
                "tokens_per_s": (args.batch * args.context) as f64 / med,
                "loss_last": last_loss,
                "phases_s_median": {
                    "forward_and_loss": median(forward_times),
                    "backward": median(backward_times),
                    "optimizer": median(optimizer_times),
                },
            })
        }
        "generate" => {
            device.seed(123);
            let model = config.init(device);
            let prompt: Vec<u32> = (0..args.prompt_len)
                .map(|_| rng.random_range(0..50257))
                .collect();
            let mut out = serde_json::Map::new();
            for use_kv_cache in [true, false] {
                let settings = GenerationConfig {
                    max_new_tokens: args.new_tokens,
                    use_kv_cache,
                    ..Default::default()
                };
                let mut times = Vec::new();
                for rep in 0..args.warmup + args.reps {
                    let start = Instant::now();
                    generate(&model, &prompt, &settings, device, |_| {})?;
                    if rep >= args.warmup {
                        times.push(start.elapsed().as_secs_f64());
                    }
                }
                let med = median(times);
                out.insert(
                    if use_kv_cache { "kv_cache" } else { "no_cache" }.to_string(),
                    json!({"s_median": med, "new_tokens_per_s": args.new_tokens as f64 / med}),
                );
            }
            Value::Object(out)
        }
        other => bail!("unknown bench mode \"{other}\" (train, generate)"),
    };
    if let (Value::Object(r), Value::Object(e)) = (&mut record, extra) {
        r.extend(e);
    }
    Ok(record)
}
