//! The server's metrics, served at `GET /metrics` in Prometheus' text exposition
//! format (version 0.0.4), written by hand: counters and gauges are atomics, the
//! histograms a few fixed buckets behind a mutex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `Content-Type` of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The endpoints requests are counted by; any other path is `other` (the label's
/// values stay few whatever clients ask for).
pub(crate) const ENDPOINTS: [&str; 7] = [
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "other",
];

/// The endpoint label of a request for `path`.
pub(crate) fn endpoint(path: &str) -> &'static str {
    ENDPOINTS
        .iter()
        .find(|e| **e == path)
        .copied()
        .unwrap_or("other")
}

/// Time to first token, from the request's arrival (queueing and the prompt
/// included), in seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Time between two tokens of one generation, in seconds.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// A request's duration, from its arrival until its response was sent whole
/// (streams included), in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Sequences per forward pass of the engine.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Why the server closed a connection itself (`ember_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Closed {
    /// A request's head did not arrive within the header timeout.
    HeaderTimeout,
    /// No request came within the idle timeout after the last answer.
    IdleTimeout,
    /// The client read nothing of its answer within the idle timeout.
    WriteStalled,
    /// An idle connection closed to make room for a new one at the connection cap.
    MadeRoom,
    /// Still open when the shutdown grace period ended.
    ShutdownGrace,
}

impl Closed {
    pub(crate) const ALL: [Closed; 5] = [
        Closed::HeaderTimeout,
        Closed::IdleTimeout,
        Closed::WriteStalled,
        Closed::MadeRoom,
        Closed::ShutdownGrace,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::WriteStalled => "write_stalled",
            Closed::MadeRoom => "made_room",
            Closed::ShutdownGrace => "shutdown_grace",
        }
    }
}

/// A histogram with fixed bucket bounds (seconds).
struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramData>,
}

#[derive(Default)]
struct HistogramData {
    /// Per bucket, not cumulative; one more for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new(HistogramData {
                counts: vec![0; bounds.len() + 1],
                ..HistogramData::default()
            }),
        }
    }

    fn observe(&self, value: Duration) {
        self.observe_value(value.as_secs_f64());
    }

    fn observe_value(&self, seconds: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        let mut data = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        data.counts[bucket] += 1;
        data.sum += seconds;
        data.count += 1;
    }

    /// The `_bucket`, `_sum` and `_count` lines, with `labels` (`name="value"`,
    /// comma-separated, or empty) before `le`.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let data = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in data.counts.iter().enumerate() {
            cumulative += count;
            let le = match self.bounds.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), data.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), data.count);
    }
}

/// Seconds over which `ember_generation_tokens_per_second` averages.
const RATE_WINDOW_SECONDS: u64 = 10;

/// Slots of [`TokenRate`]: the window's seconds and the current one.
const RATE_SLOTS: u64 = RATE_WINDOW_SECONDS + 1;

/// Tokens generated in each of the last [`RATE_WINDOW_SECONDS`] seconds and the current
/// one (a slot each, so that the current second never overwrites the window's oldest):
/// a rate over a sliding window, for a gauge that reads as the server's speed now (the counter's
/// `rate()` needs a Prometheus; a person with `curl` has none).
struct TokenRate {
    start: Instant,
    /// `(second since start, tokens in it)`, slot `second % RATE_SLOTS`.
    slots: Mutex<[(u64, u64); RATE_SLOTS as usize]>,
}

impl TokenRate {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: Mutex::new([(0, 0); RATE_SLOTS as usize]),
        }
    }

    /// A token generated at `at`.
    fn add(&self, at: Instant) {
        let second = at.saturating_duration_since(self.start).as_secs();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[(second % RATE_SLOTS) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
    }

    /// Tokens per second over the whole seconds of the window before the one `at` is
    /// in (fewer while the server is younger than the window; 0 in its first second).
    fn per_second(&self, at: Instant) -> f64 {
        let now = at.saturating_duration_since(self.start).as_secs();
        let window = now.saturating_sub(RATE_WINDOW_SECONDS)..now;
        if window.is_empty() {
            return 0.0;
        }
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let tokens: u64 = slots
            .iter()
            .filter(|(second, _)| window.contains(second))
            .map(|&(_, tokens)| tokens)
            .sum();
        tokens as f64 / (window.end - window.start) as f64
    }
}

/// Everything `/metrics` shows; shared by the HTTP side, the connections and the
/// generation thread.
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    durations: Vec<Histogram>,
    /// Sequences in the running batch now.
    pub(crate) running: AtomicUsize,
    batch_sizes: Histogram,
    kv_cache_bytes: AtomicUsize,
    kv_cache_budget_bytes: AtomicUsize,
    preemptions: AtomicU64,
    prefix_cache_bytes: AtomicUsize,
    prefix_cache_hits: AtomicU64,
    prefix_cached_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    token_rate: TokenRate,
    time_to_first_token: Histogram,
    inter_token: Histogram,
    /// Connections open now.
    pub(crate) connections: AtomicUsize,
    closed: Mutex<BTreeMap<Closed, u64>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            durations: ENDPOINTS
                .iter()
                .map(|_| Histogram::new(DURATION_BUCKETS))
                .collect(),
            running: AtomicUsize::new(0),
            batch_sizes: Histogram::new(BATCH_BUCKETS),
            kv_cache_bytes: AtomicUsize::new(0),
            kv_cache_budget_bytes: AtomicUsize::new(0),
            preemptions: AtomicU64::new(0),
            prefix_cache_bytes: AtomicUsize::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            prefix_cached_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            token_rate: TokenRate::new(),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(ITL_BUCKETS),
            connections: AtomicUsize::new(0),
            closed: Mutex::new(BTreeMap::new()),
        }
    }

    /// A response with `status` to a request for `endpoint` (one of [`ENDPOINTS`]).
    pub(crate) fn answered(&self, endpoint: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
    }

    /// A request for `endpoint` is over (its response sent, or its client gone).
    pub(crate) fn finished(&self, endpoint: &'static str, took: Duration) {
        let i = ENDPOINTS.iter().position(|e| *e == endpoint).unwrap_or(0);
        self.durations[i].observe(took);
    }

    /// A generation started on a prompt of `tokens` tokens.
    pub(crate) fn prompt(&self, tokens: usize) {
        self.prompt_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// A token was generated, `since` after the request arrived (the first) or after
    /// the previous token.
    pub(crate) fn token(&self, first: bool, since: Duration) {
        self.generated_tokens.fetch_add(1, Ordering::Relaxed);
        self.token_rate.add(Instant::now());
        if first {
            self.time_to_first_token.observe(since);
        } else {
            self.inter_token.observe(since);
        }
    }

    /// A forward pass of the engine over `sequences` sequences.
    pub(crate) fn batch(&self, sequences: usize) {
        self.batch_sizes.observe_value(sequences as f64);
    }

    /// The KV cache's budget, in bytes.
    pub(crate) fn kv_budget(&self, bytes: usize) {
        self.kv_cache_budget_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Bytes the running sequences' keys and values take now.
    pub(crate) fn kv_cache_used(&self, bytes: usize) {
        self.kv_cache_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Bytes the prefix cache holds now.
    pub(crate) fn prefix_cache_used(&self, bytes: usize) {
        self.prefix_cache_bytes.store(bytes, Ordering::Relaxed);
    }

    /// A prompt started from `tokens` cached tokens of an earlier one.
    pub(crate) fn prefix_hit(&self, tokens: usize) {
        self.prefix_cache_hits.fetch_add(1, Ordering::Relaxed);
        self.prefix_cached_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// A sequence was preempted to keep the KV cache within its budget.
    pub(crate) fn preempted(&self) {
        self.preemptions.fetch_add(1, Ordering::Relaxed);
    }

    /// The server closed a connection itself.
    pub(crate) fn closed(&self, why: Closed) {
        *self
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    /// The text exposition of every metric; `waiting` is the generation queue's length.
    pub(crate) fn render(&self, model: &str, waiting: usize) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        // A metric of one unlabelled sample.
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
            head(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        };
        head(
            &mut out,
            "ember_model_info",
            "gauge",
            "The model served, as clients name it (always 1).",
        );
        let _ = writeln!(out, "ember_model_info{{model=\"{}\"}} 1", escape(model));

        head(
            &mut out,
            "ember_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code.",
        );
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "ember_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        head(
            &mut out,
            "ember_request_duration_seconds",
            "histogram",
            "From a request's arrival until its response was sent whole (streams included), by endpoint.",
        );
        for (endpoint, histogram) in ENDPOINTS.iter().zip(&self.durations) {
            histogram.write(
                &mut out,
                "ember_request_duration_seconds",
                &format!("endpoint=\"{endpoint}\""),
            );
        }

        scalar(
            &mut out,
            "ember_running_sequences",
            "gauge",
            "Sequences in the running batch now.",
            self.running.load(Ordering::Relaxed) as u64,
        );
        head(
            &mut out,
            "ember_batch_size",
            "histogram",
            "Sequences per forward pass of the engine (decoding and reading prompts).",
        );
        self.batch_sizes.write(&mut out, "ember_batch_size", "");
        scalar(
            &mut out,
            "ember_kv_cache_bytes",
            "gauge",
            "Bytes the running sequences' keys and values take now.",
            self.kv_cache_bytes.load(Ordering::Relaxed) as u64,
        );
        scalar(
            &mut out,
            "ember_kv_cache_budget_bytes",
            "gauge",
            "The KV cache's budget (--kv-cache-mb).",
            self.kv_cache_budget_bytes.load(Ordering::Relaxed) as u64,
        );
        scalar(
            &mut out,
            "ember_preemptions_total",
            "counter",
            "Sequences preempted (their cache freed, read again later) to stay within the KV cache budget.",
            self.preemptions.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "ember_prefix_cache_bytes",
            "gauge",
            "Bytes the prefix cache's keys and values take now (within the KV cache budget).",
            self.prefix_cache_bytes.load(Ordering::Relaxed) as u64,
        );
        scalar(
            &mut out,
            "ember_prefix_cache_hits_total",
            "counter",
            "Prompts that started from the cached keys and values of an earlier prompt.",
            self.prefix_cache_hits.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "ember_prefix_cached_tokens_total",
            "counter",
            "Prompt tokens not read because an earlier prompt's keys and values were cached.",
            self.prefix_cached_tokens.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "ember_waiting_sequences",
            "gauge",
            "Requests queued, not in the running batch (preempted ones included).",
            waiting as u64,
        );
        scalar(
            &mut out,
            "ember_prompt_tokens_total",
            "counter",
            "Prompt tokens of the generations started.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "ember_generated_tokens_total",
            "counter",
            "Tokens generated (the completion tokens of every answer, and of those cancelled).",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        head(
            &mut out,
            "ember_generation_tokens_per_second",
            "gauge",
            "Tokens generated per second over the last 10 whole seconds, all sequences together.",
        );
        let _ = writeln!(
            out,
            "ember_generation_tokens_per_second {}",
            self.token_rate.per_second(Instant::now())
        );
        head(
            &mut out,
            "ember_time_to_first_token_seconds",
            "histogram",
            "From a request's arrival (queueing and the prompt included) to its first generated token.",
        );
        self.time_to_first_token
            .write(&mut out, "ember_time_to_first_token_seconds", "");
        head(
            &mut out,
            "ember_inter_token_latency_seconds",
            "histogram",
            "Between two successive tokens of a generation.",
        );
        self.inter_token
            .write(&mut out, "ember_inter_token_latency_seconds", "");

        scalar(
            &mut out,
            "ember_open_connections",
            "gauge",
            "HTTP connections open now.",
            self.connections.load(Ordering::Relaxed) as u64,
        );
        head(
            &mut out,
            "ember_connections_closed_total",
            "counter",
            "Connections the server closed itself, by reason.",
        );
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        for why in Closed::ALL {
            let _ = writeln!(
                out,
                "ember_connections_closed_total{{reason=\"{}\"}} {}",
                why.as_str(),
                closed.get(&why).copied().unwrap_or(0)
            );
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let metrics = Metrics::new();
        metrics.token(true, Duration::from_millis(30));
        metrics.token(false, Duration::from_millis(2));
        metrics.token(false, Duration::from_secs(10));
        metrics.answered("/health", 200);
        metrics.answered("/health", 200);
        metrics.finished("/health", Duration::from_millis(1));
        let text = metrics.render("a \"b\"\\c\nd", 3);
        assert!(text.contains("ember_model_info{model=\"a \\\"b\\\"\\\\c\\nd\"} 1\n"));
        assert!(text.contains("ember_requests_total{endpoint=\"/health\",status=\"200\"} 2\n"));
        assert!(text.contains("ember_time_to_first_token_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("ember_time_to_first_token_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("ember_time_to_first_token_seconds_count 1\n"));
        assert!(text.contains("ember_inter_token_latency_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("ember_inter_token_latency_seconds_bucket{le=\"2.5\"} 1\n"));
        assert!(text.contains("ember_inter_token_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("ember_generated_tokens_total 3\n"));
        assert!(text.contains("ember_waiting_sequences 3\n"));
        assert!(text.contains(
            "ember_request_duration_seconds_bucket{endpoint=\"/health\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains("ember_generation_tokens_per_second 0\n"));
        assert_eq!(endpoint("/v1/completions"), "/v1/completions");
        assert_eq!(endpoint("/v1/completions/"), "other");
    }

    /// The gauge averages the tokens of the whole seconds of the last ten before the
    /// current one, over as many seconds as the server has had.
    #[test]
    fn the_token_rate_is_over_the_last_ten_whole_seconds() {
        let rate = TokenRate::new();
        let at = |seconds: f64| rate.start + Duration::from_secs_f64(seconds);
        for _ in 0..5 {
            rate.add(at(0.5));
        }
        for _ in 0..20 {
            rate.add(at(3.2));
        }
        assert_eq!(rate.per_second(at(0.9)), 0.0);
        assert_eq!(rate.per_second(at(3.9)), 5.0 / 3.0);
        assert_eq!(rate.per_second(at(4.1)), 25.0 / 4.0);
        assert_eq!(rate.per_second(at(13.5)), 20.0 / 10.0);
        assert_eq!(rate.per_second(at(14.0)), 0.0);
        // The current second's tokens do not take the place of the window's oldest:
        // at 13.5 the window is seconds 3 to 12.
        rate.add(at(13.2));
        assert_eq!(rate.per_second(at(13.5)), 20.0 / 10.0);
        assert_eq!(rate.per_second(at(14.0)), 1.0 / 10.0);
        // Eleven seconds on, a slot is reused: second 14's tokens replace second 3's.
        rate.add(at(14.7));
        assert_eq!(rate.per_second(at(15.0)), 2.0 / 10.0);
    }
}
