//! Continuous batching (iteration-level scheduling, as in Orca and vLLM): the engine's
//! loop, one forward pass per step for every running sequence.
//!
//! At every step:
//! 1. requests that arrived are queued; those whose clients left are dropped;
//! 2. queued requests join the batch, oldest first, while fewer than `max_batch` run
//!    and their tokens fit the KV cache budget beside the running ones;
//! 3. each running sequence contributes its next token (decoding) or the next chunk of
//!    its prompt (chunked prefill: at most `prefill_chunk` prompt tokens per step in all,
//!    so a long prompt does not stop the streams already running), all packed into one
//!    row ([`ember_model::PackedCaches`]); one forward pass gives each its next-token
//!    logits, exactly those it would get alone;
//! 4. each sequence that has read all its tokens samples the next one with its own
//!    settings and seeded generator; finished ones leave.
//!
//! # The KV cache: one growing cache per sequence, within a budget
//!
//! vLLM pages the cache (PagedAttention) because a GPU's memory is allocated up front, as
//! one pool, and a sequence's cache must not need one contiguous region of it. On the
//! CPU, each sequence's keys and values are tensors of their own, allocated as they grow
//! and freed when the sequence leaves: the allocator already does what pages would. What
//! a server must still do is bound the total, which this loop does by counting: a
//! sequence holds one position per token it has (prompt and generated), and the
//! positions of all running sequences stay within the budget.
//!
//! A request is admitted when its tokens fit beside the running ones. When decoding
//! sequences grow past the budget, the one admitted last is preempted (vLLM's
//! recomputation): its cache is freed and it goes back to the head of the queue with
//! everything it generated, to be read again as a prompt once there is room. A request
//! that cannot fit even alone is refused before it is queued (the HTTP side treats the
//! budget as a context length), so the oldest sequence always makes progress.
//!
//! # Prefix caching
//!
//! When a sequence has read its prompt, the prompt's whole chunks are offered to the
//! [`PrefixCache`]; a request admitted later starts from the longest run of whole chunks
//! its prompt shares with one there and reads only the rest. Entries count against the
//! budget and are evicted, least recently used first, before anything is preempted or
//! a request is kept waiting.
//!
//! # Batch invariance
//!
//! Chunk boundaries fall at multiples of `prefill_chunk` of each sequence's own tokens,
//! whatever else runs, and a packed pass gives each sequence the logits it would get
//! alone (tested bit for bit in ember-model's `packed_batch` test), so a greedy request
//! gets the same tokens, and a seeded one the same text, however it is batched. A
//! sequence that was preempted reads its tokens again in chunks, which rounds
//! differently from having decoded them one by one; under a full budget the text may
//! then differ from an unpreempted run (still the model's, with the same settings).
//! A cached prefix is whole chunks read exactly as the sequence would read them, so it
//! changes no bits either.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use burn::prelude::*;
use ember_model::{CausalLm, Dtype, KvCache, LanguageModel, PackedCaches, Sampler, check_prompt};
use ember_tokenizer::ModelTokenizer;
use rayon::prelude::*;

use crate::engine::{BatchLimits, Event, FinishReason, Job, KvBudget};
use crate::logprobs::{TokenLogprob, token_logprob};
use crate::metrics::Metrics;
use crate::prefix_cache::PrefixCache;
use crate::stop_text::StopText;

/// The loop's state: the sequences waiting and running.
pub(crate) struct Batcher<'a> {
    model: &'a LanguageModel,
    tokenizer: &'a ModelTokenizer,
    device: &'a Device,
    limits: BatchLimits,
    budget: KvBudget,
    metrics: &'a Metrics,
    /// Oldest first; a preempted sequence goes back to the front.
    waiting: VecDeque<Sequence<'a>>,
    /// In the order they were admitted.
    running: Vec<Sequence<'a>>,
    /// Earlier prompts' keys and values; `None` when prefix caching is off.
    prefixes: Option<PrefixCache>,
}

/// One request's generation.
struct Sequence<'a> {
    job: Job,
    /// The prompt, then the tokens generated.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// The keys and values of the tokens read so far; `None` while waiting.
    cache: Option<KvCache>,
    sampler: Sampler,
    text: StopText<'a>,
    /// When the last token came (the first is timed from the request's arrival).
    last_token: Option<Instant>,
    /// When it was first admitted.
    started: Option<Instant>,
    /// Prompt tokens found in the prefix cache when it was first admitted.
    cached_tokens: usize,
    /// Whether its prompt was offered to the prefix cache.
    offered: bool,
    /// Log probabilities of the tokens whose text has not been sent yet.
    logprobs: Vec<TokenLogprob>,
}

/// How a sequence goes on after a token.
enum Outcome {
    Continue,
    Finished(FinishReason),
    Cancelled,
}

impl Sequence<'_> {
    /// Tokens whose keys and values are cached.
    fn read(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::len)
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// How many tokens the next step reads: the rest of the current chunk (chunks
    /// start at multiples of `chunk`), one when decoding.
    fn next_read(&self, chunk: usize) -> usize {
        let read = self.read();
        (self.tokens.len() - read).min(chunk - read % chunk)
    }
}

impl<'a> Batcher<'a> {
    pub(crate) fn new(
        model: &'a LanguageModel,
        tokenizer: &'a ModelTokenizer,
        device: &'a Device,
        limits: BatchLimits,
        budget: KvBudget,
        metrics: &'a Metrics,
    ) -> Self {
        Self {
            model,
            tokenizer,
            device,
            limits: BatchLimits {
                max_batch: limits.max_batch.max(1),
                prefill_chunk: limits.prefill_chunk.max(1),
                ..limits
            },
            budget,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefixes: limits
                .prefix_cache
                .then(|| PrefixCache::new(limits.prefill_chunk.max(1))),
        }
    }

    /// Generates until every [`crate::Engine`] handle is gone. `waiting` counts the
    /// requests submitted and not running; `stop` is the shutdown flag.
    ///
    /// Idle, the loop waits on its own thread; busy, it runs on one of rayon's workers,
    /// so that a step's kernels share their work with the other workers instead of
    /// handing it over (see `on_the_thread_pool` in ember-cli's main.rs). It leaves the
    /// worker whenever it is idle: several engines in one process (a program serving
    /// two models, a test suite) take turns on the pool instead of each holding a
    /// worker for good, which with as many engines as workers left the next one
    /// waiting forever.
    pub(crate) fn run(
        mut self,
        mut queue: Receiver<Job>,
        waiting: &AtomicUsize,
        stop: &AtomicBool,
        precision: Dtype,
    ) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                // Nothing to do: sleep until a request comes.
                match queue.recv() {
                    Ok(job) => self.arrive(job, waiting),
                    Err(_) => return,
                }
            }
            // The receiver goes to the worker and back (a shared one cannot).
            queue = rayon::scope(|_| {
                // The precision is the thread's, and this is a worker of rayon's.
                let _autocast = ember_kernels::autocast(precision);
                self.until_idle(&queue, waiting, stop);
                queue
            });
        }
    }

    /// Steps until no sequence is running or waiting.
    fn until_idle(&mut self, queue: &Receiver<Job>, waiting: &AtomicUsize, stop: &AtomicBool) {
        loop {
            while let Ok(job) = queue.try_recv() {
                self.arrive(job, waiting);
            }
            if stop.load(Ordering::SeqCst) {
                self.shut_down(waiting);
            } else {
                self.drop_departed(waiting);
                self.admit(waiting);
                if !self.running.is_empty() {
                    self.step(waiting);
                }
                self.publish();
            }
            if self.running.is_empty() && self.waiting.is_empty() {
                return;
            }
        }
    }

    /// Queues `job`, or fails it at once if the model cannot run it.
    fn arrive(&mut self, job: Job, waiting: &AtomicUsize) {
        let checked = job
            .config
            .validate()
            .and_then(|()| check_prompt(self.model, &job.prompt_ids));
        let longest = job.prompt_ids.len() + job.config.max_new_tokens;
        let refusal = match checked {
            Err(e) => Some(e.to_string()),
            Ok(()) if longest > self.budget.positions() => Some(format!(
                "the prompt and max_tokens need {longest} positions of KV cache; the server's budget holds {}",
                self.budget.positions()
            )),
            Ok(()) => None,
        };
        if let Some(why) = refusal {
            waiting.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(request = %job.id, "refused: {why}");
            let _ = job.events.send(Event::Failed(why));
            return;
        }
        let tokens = job.prompt_ids.clone();
        self.waiting.push_back(Sequence {
            prompt_len: tokens.len(),
            tokens,
            cache: None,
            sampler: Sampler::new(job.config.clone()),
            text: StopText::new(self.tokenizer, job.stop_strings.clone()),
            last_token: None,
            started: None,
            cached_tokens: 0,
            offered: false,
            logprobs: Vec::new(),
            job,
        });
    }

    /// Refuses the queued requests and stops the running ones, telling each client why
    /// (a 503, or an error event ending the stream).
    fn shut_down(&mut self, waiting: &AtomicUsize) {
        for sequence in self.waiting.drain(..) {
            waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = sequence
                .job
                .events
                .send(Event::Failed("the server is shutting down".into()));
        }
        for sequence in self.running.drain(..) {
            let generated = sequence.generated();
            tracing::info!(request = %sequence.job.id, "stopped after {generated} tokens: the server is shutting down");
            let _ = sequence.job.events.send(Event::Failed(format!(
                "the server is shutting down; the generation was stopped after {generated} tokens"
            )));
        }
    }

    /// Drops the sequences whose clients left.
    fn drop_departed(&mut self, waiting: &AtomicUsize) {
        self.waiting.retain(|sequence| {
            let gone = sequence.job.events.is_closed();
            if gone {
                waiting.fetch_sub(1, Ordering::SeqCst);
                tracing::info!(request = %sequence.job.id, "skipped: the client left while it waited");
            }
            !gone
        });
        self.running.retain(|sequence| {
            let gone = sequence.job.events.is_closed();
            if gone {
                log_cancelled(sequence);
            }
            !gone
        });
    }

    /// Positions the running sequences hold or are about to (each token they have, one
    /// more for the next).
    fn positions_in_use(&self) -> usize {
        self.running.iter().map(|s| s.tokens.len() + 1).sum()
    }

    /// Positions the prefix cache holds.
    fn prefix_positions(&self) -> usize {
        self.prefixes.as_ref().map_or(0, PrefixCache::positions)
    }

    /// Evicts prefix cache entries, least recently used first, until `needed` more
    /// positions fit beside the running sequences or there is none left.
    fn make_room(&mut self, needed: usize) {
        let budget = self.budget.positions();
        while self.positions_in_use() + needed + self.prefix_positions() > budget
            && self
                .prefixes
                .as_mut()
                .is_some_and(PrefixCache::evict_oldest)
        {}
    }

    /// Moves queued sequences into the batch, oldest first, while they fit.
    fn admit(&mut self, waiting: &AtomicUsize) {
        while self.running.len() < self.limits.max_batch {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let needed = next.tokens.len() + 1;
            // Looked up first, so that making room does not evict the prefix it uses.
            let cached = self
                .prefixes
                .as_mut()
                .and_then(|prefixes| prefixes.lookup(&next.tokens));
            self.make_room(needed);
            if self.positions_in_use() + needed > self.budget.positions()
                && !self.running.is_empty()
            {
                break;
            }
            let mut sequence = self.waiting.pop_front().expect("a front");
            waiting.fetch_sub(1, Ordering::SeqCst);
            let found = cached.as_ref().map_or(0, KvCache::len);
            sequence.cache = Some(cached.unwrap_or_else(|| self.model.new_cache()));
            if found > 0 {
                self.metrics.prefix_hit(found);
            }
            if sequence.started.is_none() {
                sequence.started = Some(Instant::now());
                sequence.cached_tokens = found;
                self.metrics.prompt(sequence.prompt_len);
            }
            self.running.push(sequence);
        }
    }

    /// Frees the cache of the sequence admitted last and queues it again first, until
    /// the running sequences' next step fits the budget (never the oldest); the prefix
    /// cache is emptied first.
    fn preempt_over_budget(&mut self, waiting: &AtomicUsize) {
        self.make_room(0);
        while self.running.len() > 1 && self.positions_in_use() > self.budget.positions() {
            let mut sequence = self.running.pop().expect("a sequence");
            tracing::info!(
                request = %sequence.job.id,
                tokens = sequence.tokens.len(),
                "preempted: the KV cache budget is full; it is read again when there is room"
            );
            sequence.cache = None;
            self.metrics.preempted();
            waiting.fetch_add(1, Ordering::SeqCst);
            self.waiting.push_front(sequence);
        }
    }

    /// Which running sequences the step reads, and how many tokens each: every
    /// decoding sequence, and prompt chunks up to `prefill_chunk` tokens in all (at
    /// least one chunk). Decoding sequences come first in the row.
    fn plan(&self) -> Vec<(usize, usize)> {
        let chunk = self.limits.prefill_chunk;
        let mut decoding = Vec::new();
        let mut reading = Vec::new();
        let mut prompt_tokens = 0;
        for (i, sequence) in self.running.iter().enumerate() {
            let n = sequence.next_read(chunk);
            if n == 1 {
                decoding.push((i, n));
            } else if prompt_tokens == 0 || prompt_tokens + n <= chunk {
                prompt_tokens += n;
                reading.push((i, n));
            }
        }
        decoding.extend(reading);
        decoding
    }

    /// One forward pass for the batch, and a token for each sequence that has read
    /// all of its own.
    fn step(&mut self, waiting: &AtomicUsize) {
        self.preempt_over_budget(waiting);
        let plan = self.plan();
        let mut ids = Vec::new();
        let mut caches = Vec::new();
        for &(i, n) in &plan {
            let sequence = &mut self.running[i];
            let read = sequence.read();
            ids.extend(sequence.tokens[read..read + n].iter().map(|&t| t as i64));
            caches.push(sequence.cache.take().expect("a running sequence's cache"));
        }
        let lens: Vec<usize> = plan.iter().map(|&(_, n)| n).collect();
        let mut packed = PackedCaches::new(caches, lens);
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [1, packed.total()]), self.device);
        let result = self.model.next_token_logits_packed(ids, &mut packed);
        for (&(i, _), cache) in plan.iter().zip(packed.into_caches()) {
            self.running[i].cache = Some(cache);
        }
        self.metrics.batch(plan.len());
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                // Not expected: prompts and max_tokens are checked against the context.
                let why = e.to_string();
                let mut failed: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
                failed.sort_unstable();
                self.remove(&failed, |sequence| {
                    tracing::warn!(request = %sequence.job.id, "generation failed: {why}");
                    let _ = sequence.job.events.send(Event::Failed(why.clone()));
                });
                return;
            }
        };
        let vocab = logits.dims()[1];
        let values = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float logits");
        let drawn = self.draw_tokens(&plan, &values, vocab);
        let mut ended = Vec::new();
        for ((row, &(i, _)), id) in plan.iter().enumerate().zip(drawn) {
            let Some(id) = id else {
                continue; // more of the prompt to read
            };
            let sequence = &mut self.running[i];
            if !sequence.offered {
                sequence.offered = true;
                if let (Some(prefixes), Some(cache)) = (self.prefixes.as_mut(), &sequence.cache) {
                    prefixes.offer(&sequence.tokens[..sequence.prompt_len], cache);
                }
            }
            let logits = &values[row * vocab..(row + 1) * vocab];
            if let Some(top) = sequence.job.logprobs
                && !sequence.sampler.config().stop_tokens.contains(&id)
            {
                let logprob = token_logprob(logits, id, top, self.tokenizer);
                sequence.logprobs.push(logprob);
            }
            match take_token(sequence, id, self.metrics) {
                Outcome::Continue => {}
                Outcome::Finished(reason) => ended.push((i, Some(reason))),
                Outcome::Cancelled => ended.push((i, None)),
            }
        }
        ended.sort_unstable_by_key(|&(i, _)| i);
        let indices: Vec<usize> = ended.iter().map(|&(i, _)| i).collect();
        let mut ended_sequences = Vec::new();
        self.remove(&indices, |sequence| ended_sequences.push(sequence));
        // The gauges no longer count them by the time their clients hear the end.
        self.publish();
        for (mut sequence, (_, reason)) in ended_sequences.into_iter().zip(ended) {
            match reason {
                Some(reason) => finish(&mut sequence, reason),
                None => log_cancelled(&sequence),
            }
        }
    }

    /// The next token of each sequence of `plan` that has read its prompt (`None` for
    /// the others), from its row of `logits` (`[plan.len(), vocab]`): drawn on every
    /// core, each sequence with its own generator (a draw is a pass or more over the
    /// vocabulary; one after the other they left the other cores idle).
    fn draw_tokens(
        &mut self,
        plan: &[(usize, usize)],
        logits: &[f32],
        vocab: usize,
    ) -> Vec<Option<u32>> {
        let mut by_index: Vec<Option<&mut Sequence<'a>>> =
            self.running.iter_mut().map(Some).collect();
        let mut rows: Vec<(usize, &mut Sequence<'a>)> = plan
            .iter()
            .enumerate()
            .map(|(row, &(i, _))| (row, by_index[i].take().expect("a sequence once a step")))
            .collect();
        rows.par_iter_mut()
            .map(|(row, sequence)| {
                (sequence.read() >= sequence.tokens.len()).then(|| {
                    let row = &logits[*row * vocab..(*row + 1) * vocab];
                    sequence.sampler.next_token(row)
                })
            })
            .collect()
    }

    /// Removes the running sequences at `indices` (ascending), handing each to `last`.
    fn remove(&mut self, indices: &[usize], mut last: impl FnMut(Sequence<'a>)) {
        let mut kept = Vec::with_capacity(self.running.len());
        for (i, sequence) in self.running.drain(..).enumerate() {
            if indices.contains(&i) {
                last(sequence);
            } else {
                kept.push(sequence);
            }
        }
        self.running = kept;
    }

    /// The gauges of `/metrics`.
    fn publish(&self) {
        self.metrics
            .running
            .store(self.running.len(), Ordering::SeqCst);
        let cached: usize = self.running.iter().map(Sequence::read).sum();
        self.metrics
            .kv_cache_used(cached * self.budget.bytes_per_position);
        self.metrics
            .prefix_cache_used(self.prefix_positions() * self.budget.bytes_per_position);
    }
}

/// `id` is `sequence`'s next token: it is counted, decoded and sent.
fn take_token(sequence: &mut Sequence, id: u32, metrics: &Metrics) -> Outcome {
    let now = Instant::now();
    metrics.token(
        sequence.last_token.is_none(),
        now.saturating_duration_since(sequence.last_token.unwrap_or(sequence.job.arrived)),
    );
    sequence.last_token = Some(now);
    sequence.tokens.push(id);
    let config = sequence.sampler.config();
    if config.stop_tokens.contains(&id) {
        return Outcome::Finished(FinishReason::Stop);
    }
    let max_new_tokens = config.max_new_tokens;
    let (piece, stopped) = sequence.text.push(id);
    if !piece.is_empty() {
        let logprobs = std::mem::take(&mut sequence.logprobs);
        if sequence
            .job
            .events
            .send(Event::Text(piece, logprobs))
            .is_err()
        {
            return Outcome::Cancelled;
        }
    }
    if stopped {
        return Outcome::Finished(FinishReason::Stop);
    }
    if sequence.generated() >= max_new_tokens {
        return Outcome::Finished(FinishReason::Length);
    }
    if sequence.job.events.is_closed() {
        return Outcome::Cancelled;
    }
    Outcome::Continue
}

/// Sends what is left of the text and the end.
fn finish(sequence: &mut Sequence, reason: FinishReason) {
    let rest = sequence.text.finish();
    let logprobs = std::mem::take(&mut sequence.logprobs);
    if !rest.is_empty() || !logprobs.is_empty() {
        let _ = sequence.job.events.send(Event::Text(rest, logprobs));
    }
    let seconds = sequence
        .started
        .map_or(0.0, |started| started.elapsed().as_secs_f64());
    tracing::info!(
        request = %sequence.job.id,
        prompt_tokens = sequence.prompt_len,
        completion_tokens = sequence.generated(),
        finish_reason = reason.as_str(),
        "{:.1} tokens/s",
        sequence.generated() as f64 / seconds.max(1e-9)
    );
    let _ = sequence.job.events.send(Event::Done {
        finish_reason: reason,
        completion_tokens: sequence.generated(),
        cached_tokens: sequence.cached_tokens,
    });
}

fn log_cancelled(sequence: &Sequence) {
    tracing::info!(
        request = %sequence.job.id,
        tokens = sequence.generated(),
        "cancelled after {} tokens: the client left",
        sequence.generated()
    );
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use ember_model::GenerationConfig;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    /// The tiny Qwen3 fixture, its tokenizer, the device and the products' precision.
    struct Fixture {
        model: LanguageModel,
        tokenizer: ModelTokenizer,
        device: Device,
        precision: Dtype,
    }

    fn fixture() -> Fixture {
        fixture_in(Dtype::F32, Dtype::F32)
    }

    /// The fixture with its weights in `dtype` and its products in `precision`.
    fn fixture_in(dtype: Dtype, precision: Dtype) -> Fixture {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-qwen3");
        let device = Device::ndarray();
        let loaded = ember_model::load_model_as(&dir, None, dtype, &device).unwrap();
        let tokenizer = ember_model::model_tokenizer(&loaded).unwrap();
        Fixture {
            model: loaded.model,
            tokenizer,
            device,
            precision,
        }
    }

    impl Fixture {
        fn batcher<'a>(
            &'a self,
            limits: BatchLimits,
            kv_positions: usize,
            metrics: &'a Metrics,
        ) -> Batcher<'a> {
            let per_position = self.model.cache_floats_per_position() * 4;
            let budget = KvBudget {
                bytes: kv_positions * per_position,
                bytes_per_position: per_position,
            };
            Batcher::new(
                &self.model,
                &self.tokenizer,
                &self.device,
                limits,
                budget,
                metrics,
            )
        }
    }

    /// Prompts read 4 tokens per step, at most `max_batch` sequences, no prefix cache,
    /// the budget given to [`Fixture::batcher`].
    fn limits(max_batch: usize) -> BatchLimits {
        BatchLimits {
            max_batch,
            kv_cache_bytes: None,
            prefill_chunk: 4,
            prefix_cache: false,
        }
    }

    /// One request of a test: its prompt, settings and stop strings.
    #[derive(Clone)]
    struct Request {
        prompt: Vec<u32>,
        config: GenerationConfig,
        stops: Vec<String>,
    }

    /// Greedy, 12 new tokens.
    fn greedy(prompt: &[u32]) -> Request {
        Request {
            prompt: prompt.to_vec(),
            config: GenerationConfig {
                max_new_tokens: 12,
                ..GenerationConfig::default()
            },
            stops: Vec::new(),
        }
    }

    /// A job for `request` and the receiver of its events.
    fn job(id: usize, request: &Request) -> (Job, UnboundedReceiver<Event>) {
        let (events, receiver) = unbounded_channel();
        let job = Job {
            id: format!("r{id}"),
            prompt_ids: request.prompt.clone(),
            config: request.config.clone(),
            stop_strings: request.stops.clone(),
            events,
            arrived: Instant::now(),
            logprobs: None,
        };
        (job, receiver)
    }

    fn received(receiver: &mut UnboundedReceiver<Event>) -> Vec<Event> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    /// Queues every request before the loop starts (so they run together, whatever the
    /// machine's timing), runs the loop to the end, and returns each request's events
    /// and the metrics.
    fn run_requests(
        fixture: &Fixture,
        requests: &[Request],
        limits: BatchLimits,
        kv_positions: usize,
    ) -> (Vec<Vec<Event>>, String) {
        let metrics = Metrics::new();
        let (jobs, queue) = std::sync::mpsc::channel();
        let mut receivers = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let (job, receiver) = job(i, request);
            receivers.push(receiver);
            jobs.send(job).unwrap();
        }
        drop(jobs);
        let waiting = AtomicUsize::new(requests.len());
        fixture.batcher(limits, kv_positions, &metrics).run(
            queue,
            &waiting,
            &AtomicBool::new(false),
            fixture.precision,
        );
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
        let events = receivers.iter_mut().map(received).collect();
        (events, metrics.render("tiny", 0))
    }

    /// [`run_requests`] with greedy requests for `prompts`.
    fn run_together(
        prompts: &[Vec<u32>],
        limits: BatchLimits,
        kv_positions: usize,
    ) -> (Vec<Vec<Event>>, String) {
        let requests: Vec<Request> = prompts.iter().map(|p| greedy(p)).collect();
        run_requests(&fixture(), &requests, limits, kv_positions)
    }

    /// The text of a request's events.
    fn text(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Text(piece, _) => Some(piece.as_str()),
                _ => None,
            })
            .collect()
    }

    fn metric(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series}"))
    }

    fn prompts() -> Vec<Vec<u32>> {
        (0..4u32)
            .map(|s| (0..3 + s).map(|i| (s * 31 + i * 7) % 97).collect())
            .collect()
    }

    /// Four queued requests share forward passes and each gets what it gets alone.
    #[test]
    fn queued_requests_run_together_and_get_what_they_get_alone() {
        let limits = limits(4);
        let (together, metrics) = run_together(&prompts(), limits, 1000);
        assert!(
            metric(&metrics, "ember_batch_size_bucket{le=\"1\"}")
                < metric(&metrics, "ember_batch_size_count")
        );
        for (i, prompt) in prompts().iter().enumerate() {
            let (alone, _) = run_together(std::slice::from_ref(prompt), limits, 1000);
            assert_eq!(together[i], alone[0], "request {i}");
            assert!(
                matches!(together[i].last(), Some(Event::Done { .. })),
                "{:?}",
                together[i]
            );
        }
    }

    /// With bf16 weights and bf16 products (`serve --dtype bf16 --precision bf16`: each
    /// token's activations rounded to bf16, `vdpbf16ps` where the CPU has it), queued
    /// requests still share forward passes and each gets what it gets alone.
    #[test]
    fn bf16_products_keep_batches_invariant() {
        let fixture = fixture_in(Dtype::Bf16, Dtype::Bf16);
        let requests: Vec<Request> = prompts().iter().map(|p| greedy(p)).collect();
        let (together, metrics) = run_requests(&fixture, &requests, limits(4), 1000);
        assert!(
            metric(&metrics, "ember_batch_size_bucket{le=\"1\"}")
                < metric(&metrics, "ember_batch_size_count")
        );
        for (i, request) in requests.iter().enumerate() {
            let (alone, _) = run_requests(&fixture, std::slice::from_ref(request), limits(4), 1000);
            assert_eq!(together[i], alone[0], "request {i}");
            assert!(matches!(together[i].last(), Some(Event::Done { .. })));
        }
    }

    /// In a budget of 20 positions (each request alone needs at most 18), four requests
    /// cannot all grow: the newest are preempted, read again later, and every one still
    /// ends with all its tokens.
    #[test]
    fn requests_outgrowing_the_budget_are_preempted_and_finish() {
        let limits = limits(4);
        let (events, metrics) = run_together(&prompts(), limits, 20);
        assert!(
            metric(&metrics, "ember_preemptions_total") > 0.0,
            "{metrics}"
        );
        for (i, events) in events.iter().enumerate() {
            match events.last() {
                Some(Event::Done {
                    finish_reason: FinishReason::Length,
                    completion_tokens: 12,
                    ..
                })
                | Some(Event::Done {
                    finish_reason: FinishReason::Stop,
                    ..
                }) => {}
                other => panic!("request {i}: {other:?}"),
            }
        }
        assert_eq!(metric(&metrics, "ember_running_sequences"), 0.0);
    }

    /// With one sequence at a time, a prompt that begins with an earlier one's first 9
    /// tokens starts from its two whole chunks of 4 (8 tokens) and gets exactly the
    /// tokens it gets with prefix caching off; one sharing less than a chunk finds
    /// nothing; the entry is evicted rather than a sequence preempted when the budget
    /// runs short.
    #[test]
    fn prompts_sharing_whole_chunks_start_from_the_cached_ones() {
        let shared: Vec<u32> = (0..9).map(|i| (i * 13 + 5) % 97).collect();
        let with = |tail: &[u32]| [shared.as_slice(), tail].concat();
        let prompts = vec![with(&[40, 41]), with(&[60]), vec![shared[0], 90, 91]];
        let limits = BatchLimits {
            prefix_cache: true,
            ..limits(1)
        };
        let (cached, metrics) = run_together(&prompts, limits, 1000);
        let uncached_limits = BatchLimits {
            prefix_cache: false,
            ..limits
        };
        let (uncached, plain_metrics) = run_together(&prompts, uncached_limits, 1000);
        let found = |events: &[Event]| match events.last() {
            Some(Event::Done { cached_tokens, .. }) => *cached_tokens,
            other => panic!("{other:?}"),
        };
        let pieces = |events: &[Event]| -> Vec<Event> { events[..events.len() - 1].to_vec() };
        for i in 0..3 {
            assert_eq!(pieces(&cached[i]), pieces(&uncached[i]), "request {i}");
            assert_eq!(found(&uncached[i]), 0);
        }
        assert_eq!(
            [found(&cached[0]), found(&cached[1]), found(&cached[2])],
            [0, 8, 0]
        );
        assert_eq!(metric(&metrics, "ember_prefix_cache_hits_total"), 1.0);
        assert_eq!(metric(&metrics, "ember_prefix_cached_tokens_total"), 8.0);
        assert!(metric(&metrics, "ember_prefix_cache_bytes") > 0.0);
        assert_eq!(metric(&plain_metrics, "ember_prefix_cache_bytes"), 0.0);

        // 26 positions: the first request grows to 24 (11 prompt tokens, 12 new, one
        // more), so its 8-position entry is evicted as it decodes, before anything
        // would be preempted; the second finds nothing and reads its whole prompt.
        let (tight, tight_metrics) = run_together(&prompts[..2], limits, 26);
        assert_eq!(pieces(&tight[1]), pieces(&uncached[1]));
        assert_eq!(found(&tight[1]), 0);
        assert_eq!(metric(&tight_metrics, "ember_prefix_cache_hits_total"), 0.0);
        assert_eq!(metric(&tight_metrics, "ember_preemptions_total"), 0.0);
    }

    /// Sampled requests, each with its own seed, temperature, top-k or top-p, one with a
    /// stop string its reply meets, get exactly the same events (text, finish reason,
    /// token counts) run together as run alone.
    #[test]
    fn seeded_sampled_requests_get_the_same_text_batched_as_alone() {
        let fixture = fixture();
        let limits = limits(4);
        let sampled = |prompt: &[u32], seed: u64, top_k: Option<usize>, top_p: Option<f64>| {
            let mut request = greedy(prompt);
            request.config = GenerationConfig {
                max_new_tokens: 16,
                temperature: 0.9,
                top_k,
                top_p,
                seed,
                ..GenerationConfig::default()
            };
            request
        };
        let prompts = prompts();
        let mut requests = vec![
            sampled(&prompts[0], 1, None, None),
            sampled(&prompts[1], 2, Some(5), None),
            sampled(&prompts[2], 3, None, Some(0.8)),
            sampled(&prompts[3], 4, Some(20), Some(0.95)),
        ];
        // A stop string from the middle of the fourth reply, so that it must stop there.
        let (alone, _) = run_requests(&fixture, &requests[3..], limits, 1000);
        let reply = text(&alone[0]);
        let chars: Vec<char> = reply.chars().collect();
        assert!(chars.len() >= 6, "{reply:?}");
        requests[3].stops = vec![chars[3..5].iter().collect()];

        let (together, metrics) = run_requests(&fixture, &requests, limits, 1000);
        assert!(
            metric(&metrics, "ember_batch_size_bucket{le=\"1\"}")
                < metric(&metrics, "ember_batch_size_count"),
            "{metrics}"
        );
        for (i, request) in requests.iter().enumerate() {
            let (alone, _) = run_requests(&fixture, std::slice::from_ref(request), limits, 1000);
            assert_eq!(together[i], alone[0], "request {i}");
        }
        assert!(
            matches!(
                together[3].last(),
                Some(Event::Done {
                    finish_reason: FinishReason::Stop,
                    ..
                })
            ),
            "{:?}",
            together[3]
        );
        assert!(text(&together[3]).len() < reply.len());
        // Different seeds and settings gave different replies: each used its own.
        assert_ne!(text(&together[0]), text(&together[1]));
    }

    /// While a 40-token prompt is read in chunks of 4, the sequence already decoding
    /// gets a token at every step: the prompt takes ten steps, and each of them also
    /// decodes the running stream.
    #[test]
    fn a_long_prompt_is_read_in_chunks_while_running_streams_go_on() {
        let fixture = fixture();
        let metrics = Metrics::new();
        let limits = limits(2);
        let mut batcher = fixture.batcher(limits, 1000, &metrics);
        let waiting = AtomicUsize::new(2);
        let mut running = greedy(&[5, 6, 7]);
        running.config.max_new_tokens = 30;
        let (first, _running_events) = job(0, &running);
        batcher.arrive(first, &waiting);
        batcher.admit(&waiting);
        batcher.step(&waiting);
        assert_eq!(batcher.running[0].generated(), 1);

        let long: Vec<u32> = (0..40).map(|i| (i * 11 + 3) % 97).collect();
        let (second, _long_events) = job(1, &greedy(&long));
        batcher.arrive(second, &waiting);
        batcher.admit(&waiting);
        assert_eq!(batcher.running.len(), 2);
        let mut steps = 0;
        while batcher.running[1].generated() == 0 {
            let decoded = batcher.running[0].generated();
            assert_eq!(batcher.plan(), vec![(0, 1), (1, 4)], "step {steps}");
            batcher.step(&waiting);
            steps += 1;
            assert_eq!(batcher.running[0].generated(), decoded + 1, "step {steps}");
        }
        assert_eq!(steps, 10);
        assert_eq!(batcher.running[1].read(), 40);
    }

    /// Shutting down tells every client why: the running sequence, stopped after the
    /// tokens it had, and the queued one, refused; none is left to end without an
    /// answer.
    #[test]
    fn shutting_down_tells_running_and_queued_requests_why() {
        let fixture = fixture();
        let metrics = Metrics::new();
        let limits = limits(1);
        let (jobs, queue) = std::sync::mpsc::channel();
        let waiting = AtomicUsize::new(2);
        let (running, mut running_events) = job(0, &greedy(&[5, 6, 7]));
        let (queued, mut queued_events) = job(1, &greedy(&[8, 9]));
        let mut batcher = fixture.batcher(limits, 1000, &metrics);
        batcher.arrive(running, &waiting);
        batcher.arrive(queued, &waiting);
        batcher.admit(&waiting);
        batcher.step(&waiting);
        batcher.step(&waiting);
        assert_eq!(
            (batcher.running.len(), batcher.waiting.len()),
            (1, 1),
            "one running, one queued"
        );
        drop(jobs);
        batcher.run(queue, &waiting, &AtomicBool::new(true), Dtype::F32);
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
        let running_events = received(&mut running_events);
        match running_events.last() {
            Some(Event::Failed(why)) => assert_eq!(
                why,
                "the server is shutting down; the generation was stopped after 2 tokens"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            received(&mut queued_events),
            vec![Event::Failed("the server is shutting down".into())]
        );
    }
}
