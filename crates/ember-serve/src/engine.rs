//! The generation engine: one thread owns the model and generates for every request at
//! once, batched continuously (`batch.rs` does the scheduling).
//!
//! Decoding on a CPU is bound by reading the weights: one token of one sequence reads
//! every weight matrix once. A step that decodes a token for each of 8 sequences reads
//! them once too, so 8 clients get nearly 8 times the tokens per second of one (the
//! measurement is in docs/serving.md). So at every step the requests that arrived join
//! the running batch and finished ones leave it; a long prompt is read in chunks between
//! decoding steps, so the streams already running keep flowing.
//!
//! A request is cancelled, and leaves the batch at the next step, when its client goes
//! away (the receiving end of its events is dropped) or the server shuts down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use burn::prelude::Device;
use ember_model::{CausalLm, Dtype, GenerationConfig, LanguageModel};
use ember_tokenizer::ModelTokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::batch::Batcher;
pub use crate::logprobs::TokenLogprob;
use crate::metrics::Metrics;

/// Why a generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` (or the end of the context).
    Length,
}

impl FinishReason {
    /// `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a request hears back, in order: text pieces (whole UTF-8 characters), then one
/// `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next piece of text, and the log probabilities of the tokens generated since
    /// the last piece (when the job asked for them; a piece held back for a stop string
    /// or an incomplete character comes with the tokens that made it).
    Text(String, Vec<TokenLogprob>),
    /// The generation ended.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
        /// Prompt tokens whose keys and values came from the prefix cache.
        cached_tokens: usize,
    },
    /// The generation failed; why.
    Failed(String),
}

/// One request for the engine.
pub struct Job {
    /// The request's id, for the log.
    pub id: String,
    /// The prompt's tokens.
    pub prompt_ids: Vec<u32>,
    /// With `stop_tokens` set to the model's end-of-sequence ids.
    pub config: GenerationConfig,
    /// Strings that end the text (not included in it).
    pub stop_strings: Vec<String>,
    /// Where the [`Event`]s go; dropping the receiver cancels the job.
    pub events: UnboundedSender<Event>,
    /// When the request arrived: the time to its first token is measured from here.
    pub arrived: Instant,
    /// `Some(n)`: send each generated token's log probability and its `n` most likely
    /// alternatives.
    pub logprobs: Option<usize>,
}

/// The default of [`BatchLimits::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 16;

/// The default of [`BatchLimits::prefill_chunk`].
pub const DEFAULT_PREFILL_CHUNK: usize = ember_model::generate::PREFILL_CHUNK;

/// How much the engine takes on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// The most sequences generated at once; more wait.
    pub max_batch: usize,
    /// Bytes the keys and values of all running sequences may take together; `None`
    /// for [`default_kv_cache_bytes`]. A sequence is admitted when its prompt fits
    /// beside the running ones; a request that could not fit even alone is refused.
    pub kv_cache_bytes: Option<usize>,
    /// A prompt is read this many tokens per step at most (chunked prefill), between
    /// the decoding steps of the running sequences.
    pub prefill_chunk: usize,
    /// Whether prompts' whole chunks are kept (within the budget) for later prompts
    /// that begin the same way.
    pub prefix_cache: bool,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            kv_cache_bytes: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            prefix_cache: true,
        }
    }
}

/// The KV cache budget when none is given: 40% of the memory available when the server
/// starts (the model already loaded), as the kernel reports it (`MemAvailable`), or
/// 2 GiB where that cannot be read.
pub fn default_kv_cache_bytes() -> usize {
    const FALLBACK: usize = 2 << 30;
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        });
    available_kib.map_or(FALLBACK, |kib| kib / 10 * 4 * 1024)
}

/// The budget's figures for a model, fixed when the engine starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    /// Bytes for all sequences' keys and values.
    pub bytes: usize,
    /// Bytes one position of one sequence takes (f32 keys and values of every layer).
    pub bytes_per_position: usize,
}

impl KvBudget {
    /// The budget of `limits` for `model`.
    pub fn for_model(model: &impl CausalLm, limits: &BatchLimits) -> Self {
        Self {
            bytes: limits.kv_cache_bytes.unwrap_or_else(default_kv_cache_bytes),
            bytes_per_position: model.cache_floats_per_position().max(1) * 4,
        }
    }

    /// Positions the whole budget holds: the longest sequence the server can take.
    pub fn positions(&self) -> usize {
        self.bytes / self.bytes_per_position
    }
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct Engine {
    jobs: std::sync::mpsc::Sender<Job>,
    shutting_down: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    budget: KvBudget,
}

impl Engine {
    /// Starts the generation thread, which owns `model` and computes its products in
    /// `precision` (f32 or bf16: [`ember_kernels::autocast()`]).
    pub fn start(
        model: LanguageModel,
        tokenizer: Arc<ModelTokenizer>,
        device: Device,
        limits: BatchLimits,
        precision: Dtype,
    ) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let shutting_down = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new());
        let budget = KvBudget::for_model(&model, &limits);
        metrics.kv_budget(budget.bytes);
        let (stop, count, measured) = (shutting_down.clone(), waiting.clone(), metrics.clone());
        tracing::info!(
            max_batch = limits.max_batch,
            prefill_chunk = limits.prefill_chunk,
            "KV cache budget {} MiB: {} positions of {} KiB",
            budget.bytes >> 20,
            budget.positions(),
            budget.bytes_per_position / 1024,
        );
        std::thread::Builder::new()
            .name("ember-generate".into())
            .spawn(move || {
                // Its steps run on rayon's workers: `Batcher::run`.
                Batcher::new(&model, &tokenizer, &device, limits, budget, &measured)
                    .run(queue, &count, &stop, precision)
            })
            .expect("a thread for generation");
        Self {
            jobs,
            shutting_down,
            waiting,
            metrics,
            budget,
        }
    }

    /// Queues `job`; false when the engine is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(job).is_ok()
    }

    /// Requests queued and not yet started.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The KV cache budget.
    pub fn kv_budget(&self) -> KvBudget {
        self.budget
    }

    /// Stops the running generations at their next token and refuses the queued ones.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// What `/metrics` shows: the generation thread's counters and the HTTP side's.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
