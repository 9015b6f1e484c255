//! The sampling flags `generate` and `chat` share.

use ember_model::GenerationConfig;

/// Sampling options shared by `generate` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample within the top-p probability mass.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// Recompute every position at each step instead of using the KV cache.
    #[arg(long)]
    pub no_kv_cache: bool,
}

impl SamplingArgs {
    /// The generation settings, stopping at `stop_tokens`; `default_tokens` when
    /// `--max-new-tokens` is not given.
    pub fn config(&self, default_tokens: usize, stop_tokens: Vec<u32>) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens.unwrap_or(default_tokens),
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop_tokens,
            use_kv_cache: !self.no_kv_cache,
        }
    }
}
