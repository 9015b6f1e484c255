//! The generation worker: one thread owns the model and answers requests one at a time,
//! in the order they arrived.
//!
//! Why a queue and not batching: on a CPU, one KV-cached generation already keeps every
//! core busy (each matrix product is split across them), so serving several sequences
//! at once would not finish any of them sooner; batching decode steps of different
//! requests would read the weights once for several tokens, but needs a KV cache that
//! holds sequences of different lengths side by side, which Ember's does not. A queue
//! keeps latency predictable (first come, first served) and memory flat (one KV cache
//! at a time). Requests wait in an unbounded channel; none is dropped.
//!
//! A request is cancelled, and its generation stops at the next token, when its
//! client goes away (the receiving end of its events is dropped) or the server shuts
//! down. Waiting requests of a gone client are skipped.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use burn::prelude::Device;
use ember_model::{GenerationConfig, LanguageModel, generate_until};
use ember_tokenizer::{ModelTokenizer, TextStream};
use tokio::sync::mpsc::UnboundedSender;

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
    /// The next piece of text.
    Text(String),
    /// The generation ended.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The generation failed; why.
    Failed(String),
}

/// One request for the worker.
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
}

/// The handle the HTTP side holds.
#[derive(Clone)]
pub struct Engine {
    jobs: std::sync::mpsc::Sender<Job>,
    shutting_down: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the worker thread, which owns `model`.
    pub fn start(model: LanguageModel, tokenizer: Arc<ModelTokenizer>, device: Device) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let shutting_down = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new());
        let (stop, count, measured) = (shutting_down.clone(), waiting.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("ember-generate".into())
            .spawn(move || {
                // The loop runs on one of rayon's workers, so the kernels' work is
                // shared with the other workers instead of handed over to them (see
                // `on_the_thread_pool` in ember-cli's main.rs).
                rayon::scope(|_| {
                    for job in queue {
                        count.fetch_sub(1, Ordering::SeqCst);
                        if stop.load(Ordering::SeqCst) {
                            let _ = job
                                .events
                                .send(Event::Failed("the server is shutting down".into()));
                            continue;
                        }
                        run_job(&model, &tokenizer, &device, job, &stop, &measured);
                    }
                })
            })
            .expect("a thread for generation");
        Self {
            jobs,
            shutting_down,
            waiting,
            metrics,
        }
    }

    /// Queues `job`; false when the worker is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(job).is_ok()
    }

    /// Requests queued and not yet started.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Stops the current generation at its next token and refuses the queued ones.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// What `/metrics` shows: the generation thread's counters and the HTTP side's.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

fn run_job(
    model: &LanguageModel,
    tokenizer: &ModelTokenizer,
    device: &Device,
    job: Job,
    shutting_down: &AtomicBool,
    metrics: &Metrics,
) {
    if job.events.is_closed() {
        tracing::info!(request = %job.id, "skipped: the client left while it waited");
        return;
    }
    metrics.running.store(1, Ordering::SeqCst);
    let started = Instant::now();
    let mut text = StopText::new(tokenizer, job.stop_strings.clone());
    let mut finish = FinishReason::Length;
    let mut cancelled = false;
    metrics.prompt(job.prompt_ids.len());
    // The time to the first token counts from the request's arrival, the others from
    // the token before.
    let mut last_token: Option<Instant> = None;
    let result = generate_until(model, &job.prompt_ids, &job.config, device, |id| {
        let now = Instant::now();
        metrics.token(
            last_token.is_none(),
            now.saturating_duration_since(last_token.unwrap_or(job.arrived)),
        );
        last_token = Some(now);
        if job.config.stop_tokens.contains(&id) {
            finish = FinishReason::Stop;
            return ControlFlow::Break(());
        }
        let (piece, stopped) = text.push(id);
        if !piece.is_empty() && job.events.send(Event::Text(piece)).is_err() {
            cancelled = true;
            return ControlFlow::Break(());
        }
        if stopped {
            finish = FinishReason::Stop;
            return ControlFlow::Break(());
        }
        if job.events.is_closed() || shutting_down.load(Ordering::SeqCst) {
            cancelled = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    // Not running any more by the time the client hears the end.
    metrics.running.store(0, Ordering::SeqCst);
    let generated = match result {
        Ok(generated) => generated,
        Err(e) => {
            tracing::warn!(request = %job.id, "generation failed: {e}");
            let _ = job.events.send(Event::Failed(e.to_string()));
            return;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if cancelled {
        tracing::info!(
            request = %job.id,
            tokens = generated.len(),
            "cancelled after {} tokens: the client left",
            generated.len()
        );
        return;
    }
    let rest = text.finish();
    if !rest.is_empty() {
        let _ = job.events.send(Event::Text(rest));
    }
    tracing::info!(
        request = %job.id,
        prompt_tokens = job.prompt_ids.len(),
        completion_tokens = generated.len(),
        finish_reason = finish.as_str(),
        "{:.1} tokens/s",
        generated.len() as f64 / seconds.max(1e-9)
    );
    let _ = job.events.send(Event::Done {
        finish_reason: finish,
        completion_tokens: generated.len(),
    });
}

/// Decodes tokens into text that is safe to send: whole UTF-8 characters, and never
/// the beginning of a stop string that the next token might complete. When a stop
/// string appears, the text ends before it.
pub struct StopText<'a> {
    decoded: TextStream<'a>,
    stops: Vec<String>,
    text: String,
    sent: usize,
}

impl<'a> StopText<'a> {
    /// A decoder that stops at any of `stops` (empty strings are ignored).
    pub fn new(tokenizer: &'a ModelTokenizer, stops: Vec<String>) -> Self {
        Self {
            decoded: TextStream::new(tokenizer),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
        }
    }

    /// The text `id` lets through, and whether a stop string has now appeared.
    pub fn push(&mut self, id: u32) -> (String, bool) {
        let start_search = self
            .text
            .len()
            .saturating_sub(self.longest_stop().saturating_sub(1));
        let piece = self.decoded.push(id);
        self.text.push_str(&piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[floor_char(&self.text, start_search)..].find(s.as_str()))
            .min()
            .map(|at| floor_char(&self.text, start_search) + at);
        if let Some(at) = hit {
            self.text.truncate(at);
            let piece = self.text[self.sent.min(at)..].to_string();
            self.sent = self.text.len();
            return (piece, true);
        }
        // Hold back what could still become a stop string.
        let keep = self.longest_stop().saturating_sub(1);
        let safe = floor_char(&self.text, self.text.len().saturating_sub(keep)).max(self.sent);
        let piece = self.text[self.sent..safe].to_string();
        self.sent = safe;
        (piece, false)
    }

    /// What is left at the end: held-back text and an incomplete character, replaced.
    pub fn finish(&mut self) -> String {
        let mut rest = self.text[self.sent..].to_string();
        rest.push_str(&self.decoded.finish());
        self.sent = self.text.len();
        rest
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

/// The largest character boundary of `s` at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds GPT-2 tokens of `text` one by one; returns what was let through each time.
    fn pieces(text: &str, stops: &[&str]) -> (Vec<String>, bool, String) {
        let tokenizer = ModelTokenizer::gpt2().unwrap();
        let ids = tokenizer.encode(text).unwrap();
        let mut stream = StopText::new(&tokenizer, stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for id in ids {
            let (piece, stopped) = stream.push(id);
            out.push(piece);
            if stopped {
                return (out, true, String::new());
            }
        }
        let rest = stream.finish();
        (out, false, rest)
    }

    #[test]
    fn text_stops_before_a_stop_string_even_across_tokens() {
        let (out, stopped, _) = pieces("Hello world. ### Response: more", &["###"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello world. ");
        // Split over tokens: " Resp" + "onse".
        let (out, stopped, _) = pieces("Answer: yes\nResponse: no", &["\nResponse"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Answer: yes");
        let (out, stopped, rest) = pieces("no stop here", &["zzz"]);
        assert!(!stopped);
        assert_eq!(out.concat() + &rest, "no stop here");
    }

    #[test]
    fn characters_split_over_tokens_come_out_whole() {
        let (out, _, rest) = pieces("naïve 日本語 🙂", &[]);
        assert_eq!(out.concat() + &rest, "naïve 日本語 🙂");
        assert!(
            out.iter()
                .all(|p| std::str::from_utf8(p.as_bytes()).is_ok())
        );
    }
}
