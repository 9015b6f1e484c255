//! `ember bench`: the same measurements as `bench/torch_gpt_bench.py`, printed as the
//! same JSON keys so `cargo xtask bench` can put them side by side.
//!
//! - `train`: tokens/s of full training steps (forward, cross-entropy, backward, AdamW)
//!   on random tokens, median over `steps` after `warmup`;
//! - `generate`: new tokens/s of greedy decoding from a random prompt, with and
//!   without the KV cache, median over `reps`; with `--model-config`, a model of that
//!   `config.json`'s shape (any architecture, random weights: speed does not depend on
//!   the values), the counterpart of `bench/hf_generate_bench.py`, with the KV cache only;
//!   with `--sequences N`, N sequences decoded together in packed passes (a server's
//!   batch), each prompt read alone first;
//! - `load`: seconds and peak resident memory to load `--model DIR` (weights and
//!   tokenizer), beside the model's size in f32.
//!
//! Every record carries `peak_rss_mb`, the process's peak resident memory so far.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ember_model::{
    Architecture, Dtype, GenerationConfig, GptConfig, LanguageModel, ModelConfig, generate,
    read_model_config, with_weight_dtype,
};
use ember_train::{AdamWSettings, check_precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// What a benchmark run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Training steps of a GPT preset (bench/torch_gpt_bench.py's `train`).
    Train,
    /// Generation with and without the KV cache.
    Generate,
    /// Loading a model directory: seconds and peak memory.
    Load,
}

/// Settings of one benchmark run (the PyTorch script's arguments and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = BenchMode::Train)]
    pub mode: BenchMode,
    /// `generate`: a `config.json` (GPT-2, Llama 3.x, Qwen3) whose shape replaces
    /// --preset, e.g. bench/configs/qwen3-0.6b.json.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// `load`: the model directory to load.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `generate` and `load`: precision of the weight matrices (f32, bf16, f16, q8_0,
    /// q4_0, q4_k).
    #[arg(long, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Arithmetic of the matrix products, `f32` or `bf16`: for `train` mixed precision
    /// (as `train.precision`; PyTorch's counterpart is bf16 autocast); for `generate`
    /// the activations rounded to bf16 (as `serve --precision bf16`).
    #[arg(long, default_value_t = Dtype::F32)]
    pub precision: Dtype,
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
    /// `generate`: sequences generated together, each from its own random prompt, their
    /// decoding steps packed into one pass as `ember serve` batches them (with the KV
    /// cache; bench/hf_generate_bench.py's `--batch`). new_tokens_per_s counts the new
    /// tokens of all of them.
    #[arg(long, default_value_t = 1)]
    pub sequences: usize,
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

/// The process's peak resident memory in MiB (`VmHWM`), where the kernel reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib as f64 / 1024.0)
}

fn config(args: &BenchArgs) -> Result<GptConfig> {
    let (emb_dim, n_layers, n_heads) = match args.preset.as_str() {
        "tiny" => (64, 2, 4),
        "gpt2-small" => (768, 12, 12),
        "gpt2-medium" => (1024, 24, 16),
        other => bail!("unknown bench preset \"{other}\" (tiny, gpt2-small, gpt2-medium)"),
    };
    let context_length = if args.mode == BenchMode::Generate {
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
        "dtype": Dtype::F32,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "params": config.num_params(),
    });
    let extra = match args.mode {
        BenchMode::Train => {
            let precision = args.precision;
            check_precision(precision, device)?;
            record["dtype"] = json!(precision);
            if precision == Dtype::Bf16 {
                record["bf16_instructions"] =
                    json!(ember_kernels::autocast::has_bf16_instructions());
            }
            let _autocast = ember_kernels::autocast(precision);
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
                let loss = model.next_token_loss(inputs.clone(), targets.clone());
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
                "flops_per_token": ember_train::flops_per_token(&config),
                "loss_last": last_loss,
                "phases_s_median": {
                    "forward_and_loss": median(forward_times),
                    "backward": median(backward_times),
                    "optimizer": median(optimizer_times),
                },
            })
        }
        BenchMode::Generate => {
            let _autocast = crate::args::model::inference_autocast(args.precision)?;
            let (model, vocab_size, shape) = generation_model(args, &config, device)?;
            record["dtype"] = json!(args.dtype);
            record["precision"] = json!(args.precision);
            record["params"] = json!(model.config().num_params());
            record["context"] = json!(args.prompt_len + args.new_tokens);
            if let Some(shape) = shape {
                record["config"] = json!(shape);
                record["model_type"] = json!(model.config().model_type());
            }
            let prompt: Vec<u32> = (0..args.prompt_len)
                .map(|_| rng.random_range(0..vocab_size as u32))
                .collect();
            let mut out = serde_json::Map::new();
            if args.sequences > 1 {
                record["sequences"] = json!(args.sequences);
                let prompts: Vec<Vec<u32>> = (0..args.sequences)
                    .map(|_| {
                        (0..args.prompt_len)
                            .map(|_| rng.random_range(0..vocab_size as u32))
                            .collect()
                    })
                    .collect();
                out.insert(
                    "kv_cache".into(),
                    time_together(args, &model, &prompts, device)?,
                );
                return finish(record, Value::Object(out));
            }
            // A real model's shape is timed the way transformers generates, with the KV
            // cache (without it, 0.6B parameters take minutes per run).
            let modes: &[bool] = if args.model_config.is_some() {
                &[true]
            } else {
                &[true, false]
            };
            for &use_kv_cache in modes {
                let settings = GenerationConfig {
                    max_new_tokens: args.new_tokens,
                    use_kv_cache,
                    ..Default::default()
                };
                // The whole time, and the part after the first new token (reading the
                // prompt and choosing the first token): the decoding steps alone, as
                // llama.cpp's llama-bench reports them (`tg`) beside the prompt (`pp`).
                let (mut times, mut first_token_times) = (Vec::new(), Vec::new());
                for rep in 0..args.warmup + args.reps {
                    let start = Instant::now();
                    let mut first = None;
                    generate(&model, &prompt, &settings, device, |_| {
                        first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                    })?;
                    if rep >= args.warmup {
                        times.push(start.elapsed().as_secs_f64());
                        first_token_times.push(first.unwrap_or(0.0));
                    }
                }
                let decode_times = times
                    .iter()
                    .zip(&first_token_times)
                    .map(|(all, first)| all - first)
                    .collect();
                let (med, first_med) = (median(times), median(first_token_times));
                let decode_med = median(decode_times);
                let decoded = args.new_tokens.saturating_sub(1) as f64;
                out.insert(
                    if use_kv_cache { "kv_cache" } else { "no_cache" }.to_string(),
                    json!({"s_median": med, "new_tokens_per_s": args.new_tokens as f64 / med,
                           "first_token_s_median": first_med,
                           "prompt_tokens_per_s": args.prompt_len as f64 / first_med,
                           "decode_s_median": decode_med,
                           "decode_tokens_per_s": decoded / decode_med}),
                );
            }
            Value::Object(out)
        }
        BenchMode::Load => {
            let dir = args
                .model
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--mode load needs --model DIR"))?;
            let before = peak_rss_mib();
            let start = Instant::now();
            let (loaded, _tokenizer) = crate::args::model::ModelArgs {
                model: dir.clone(),
                preset: None,
                config: None,
                qkv_bias: false,
                dtype: args.dtype,
                precision: Dtype::F32,
            }
            .load_with_tokenizer(device)?;
            let load_s = start.elapsed().as_secs_f64();
            let params = loaded.config.num_params();
            let f32_mb = params as f64 * 4.0 / (1024.0 * 1024.0);
            let peak = peak_rss_mib();
            record["params"] = json!(params);
            record["model_type"] = json!(loaded.config.model_type());
            record["dtype"] = json!(args.dtype);
            json!({
                "model": dir,
                "load_s": load_s,
                "peak_rss_mb_before_load": before,
                "f32_size_mb": f32_mb,
                "peak_rss_over_f32_size": peak.map(|p| p / f32_mb),
            })
        }
    };
    finish(record, extra)
}

/// `record` with the measurement's own keys and the peak memory so far.
fn finish(mut record: Value, extra: Value) -> Result<Value> {
    if let (Value::Object(r), Value::Object(e)) = (&mut record, extra) {
        r.extend(e);
    }
    record["peak_rss_mb"] = json!(peak_rss_mib());
    Ok(record)
}

/// Medians over `--reps` of [`generate_together`]: the whole time and the decoding
/// steps' alone, with new tokens/s of all the sequences.
fn time_together(
    args: &BenchArgs,
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    device: &Device,
) -> Result<Value> {
    let (mut times, mut decode_times) = (Vec::new(), Vec::new());
    for rep in 0..args.warmup + args.reps {
        let start = Instant::now();
        let decode_s = generate_together(model, prompts, args.new_tokens, device)?;
        if rep >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
            decode_times.push(decode_s);
        }
    }
    let (med, decode_med) = (median(times), median(decode_times));
    let all_new = (prompts.len() * args.new_tokens) as f64;
    // The decoding steps alone: every token after each prompt's first.
    let decoded = (prompts.len() * args.new_tokens.saturating_sub(1)) as f64;
    Ok(json!({"s_median": med, "new_tokens_per_s": all_new / med,
              "decode_s_median": decode_med,
              "decode_tokens_per_s": decoded / decode_med}))
}

/// Greedy generation of `new_tokens` after each of `prompts` together: each prompt read
/// alone (its first new token), then one packed pass per step for all the sequences,
/// as the server's batch decodes. Returns the seconds of the packed steps.
fn generate_together(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    device: &Device,
) -> Result<f64> {
    use ember_model::{CausalLm, PackedCaches};
    // Greedy: the library's own choice of the next token (temperature 0).
    let greedy = GenerationConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut argmax =
        |row: &[f32]| i64::from(ember_model::sample_next_token(row, &greedy, &mut rng));
    let ids = |values: Vec<i64>| {
        let n = values.len();
        Tensor::<2, Int>::from_data(TensorData::new(values, [1, n]), device)
    };
    let values = |logits: Tensor<2>| {
        logits
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("logits: {e:?}"))
    };
    let mut caches = Vec::new();
    let mut last = Vec::new();
    for prompt in prompts {
        let mut cache = model.new_cache();
        let logits =
            model.next_token_logits(ids(prompt.iter().map(|&t| t as i64).collect()), &mut cache)?;
        last.push(argmax(&values(logits)?));
        caches.push(cache);
    }
    let start = Instant::now();
    for _ in 1..new_tokens {
        let mut packed = PackedCaches::new(caches, vec![1; prompts.len()]);
        let logits = model.next_token_logits_packed(ids(last.clone()), &mut packed)?;
        caches = packed.into_caches();
        let row = values(logits)?;
        let vocab = row.len() / prompts.len();
        last = row.chunks(vocab).map(&mut argmax).collect();
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The model `generate` times: `--model-config`'s shape with random weights in
/// `--dtype`, loaded the way a checkpoint is (so the peak memory is a real model's), or
/// the preset; its vocabulary size; and the config file's name, if one was given.
fn generation_model(
    args: &BenchArgs,
    preset: &GptConfig,
    device: &Device,
) -> Result<(LanguageModel, usize, Option<String>)> {
    device.seed(123);
    let Some(path) = &args.model_config else {
        let model = ModelConfig::Gpt2(preset.clone()).init(device);
        let model = with_weight_dtype(model, args.dtype);
        return Ok((model, preset.vocab_size, None));
    };
    let (config, _) = read_model_config(path)?;
    let config = match config {
        ModelConfig::Gpt2(mut c) => {
            c.context_length = c.context_length.max(args.prompt_len + args.new_tokens);
            c.drop_rate = 0.0;
            ModelConfig::Gpt2(c)
        }
        other => other,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let model = ember_model::weights::random_model(&config, args.dtype, 123, device)?;
    Ok((model, config.vocab_size(), name))
}
