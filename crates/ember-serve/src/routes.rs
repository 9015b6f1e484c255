//! The HTTP side: parse and check a request, queue it, and answer with one JSON body or
//! a stream of server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use ember_model::GenerationConfig;
use ember_tokenizer::{ChatMessage, ModelTokenizer};
use futures_util::{Stream, StreamExt, stream};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::unbounded_channel;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{
    ApiError, AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatRequest,
    CompletionRequest, Delta, Health, ModelCard, ModelList, Sampling, TextChoice, TextCompletion,
    Usage, clip, parse,
};
use crate::engine::{Engine, Event, FinishReason, Job, TokenLogprob};
use crate::logprobs::{CharOffsets, chat_logprobs, completion_logprobs};
use crate::metrics::{self, Metrics};
use crate::middleware::{
    BodyStalled, Guard, check_host, cors, limit_body_pauses, measure, refuse_announced_oversize,
    require_json, require_key,
};

/// The chat page: one file, no build step, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Most stop strings a request may give.
const MAX_STOP_STRINGS: usize = 16;

/// The longest sequence served (prompt and reply), and why.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub(crate) tokens: usize,
    /// The KV cache budget, not the model's context, sets it.
    pub(crate) by_budget: bool,
}

/// What every handler shares.
pub(crate) struct AppState {
    engine: Engine,
    tokenizer: Arc<ModelTokenizer>,
    model_id: String,
    context: Context,
    /// The SHA-256 digest of the API key, if there is one: keys are compared as
    /// digests, in constant time, so neither the key's bytes nor its length show in
    /// how long a refusal takes.
    pub(crate) api_key: Option<[u8; 32]>,
    created: u64,
    requests: AtomicU64,
    /// Turning request bodies into prompt tokens (parsing, the chat template,
    /// tokenizing) runs on tokio's blocking threads, at most this many at once: one
    /// per core, so that large bodies neither stall the async threads (which answer
    /// `/health` and stream tokens) nor pile up threads.
    preparing: Arc<Semaphore>,
}

impl AppState {
    pub(crate) fn new(
        engine: Engine,
        tokenizer: Arc<ModelTokenizer>,
        model_id: String,
        context: Context,
        api_key: Option<&str>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            tokenizer,
            model_id,
            context,
            api_key: api_key.map(|key| Sha256::digest(key.as_bytes()).into()),
            created: unix_time(),
            requests: AtomicU64::new(0),
            preparing: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        })
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        self.engine.metrics()
    }

    /// Runs `work` (parsing a body, rendering a chat template, tokenizing: CPU work
    /// that grows with the body) on tokio's blocking threads, one per core at most, so
    /// that the async threads stay free to answer other requests.
    async fn off_the_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self
            .preparing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the work is done, even if the client has left meanwhile.
            let _permit = permit;
            work(&state)
        })
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
    }

    fn check_model(&self, requested: &str) -> Result<(), ApiError> {
        if requested == self.model_id {
            Ok(())
        } else {
            Err(ApiError::unknown_model(requested, &self.model_id))
        }
    }

    fn next_id(&self, prefix: &str) -> (String, u64) {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        (format!("{prefix}-{:x}{n:06x}", self.created), n)
    }

    /// The generation settings of a request of `prompt_tokens` tokens (from the field
    /// `prompt_field`), every field checked; `default_max` new tokens when it gives
    /// none.
    fn settings(
        &self,
        sampling: &Sampling,
        prompt_field: &'static str,
        prompt_tokens: usize,
        default_max: usize,
        request: u64,
    ) -> Result<(GenerationConfig, Vec<String>), ApiError> {
        if prompt_tokens == 0 {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        let context = self.context.tokens;
        let limit = if self.context.by_budget {
            "the server's KV cache budget holds"
        } else {
            "the model's context is"
        };
        if prompt_tokens >= context {
            return Err(ApiError::invalid(
                Some(prompt_field),
                format!(
                    "the prompt has {prompt_tokens} tokens; {limit} {context} tokens, which must also hold the reply"
                ),
            )
            .with_code("context_length_exceeded"));
        }
        if sampling.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(Some("n"), "only n = 1 is supported"));
        }
        let (requested, max_field) = match sampling.max_completion_tokens {
            Some(n) => (Some(n), "max_completion_tokens"),
            None => (sampling.max_tokens, "max_tokens"),
        };
        if requested == Some(0) {
            return Err(ApiError::invalid(
                Some(max_field),
                format!("{max_field} must be at least 1"),
            ));
        }
        // A reply asked for that cannot fit is refused up front, as OpenAI's API does:
        // started, it would be cut off where the client did not ask it to end.
        let room = context - prompt_tokens;
        if let Some(n) = requested.filter(|&n| n > room) {
            return Err(ApiError::invalid(
                Some(max_field),
                format!(
                    "the prompt has {prompt_tokens} tokens and {max_field} is {n}; {limit} {context} tokens in all"
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let temperature = sampling.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("temperature {temperature} is outside [0, 2]"),
            ));
        }
        if let Some(p) = sampling.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("top_p {p} is outside (0, 1]"),
            ));
        }
        if sampling.top_k == Some(0) {
            return Err(ApiError::invalid(Some("top_k"), "top_k must be at least 1"));
        }
        let stops = sampling.stop.strings();
        if stops.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("at most {MAX_STOP_STRINGS} stop strings"),
            ));
        }
        // Without `max_tokens`, the reply may take what is left of the context, and one
        // that reaches its end finishes with "length".
        let config = GenerationConfig {
            max_new_tokens: requested.unwrap_or(default_max).min(room),
            temperature,
            top_k: sampling.top_k,
            // 1 keeps every token: the sampler's "off".
            top_p: sampling.top_p.filter(|&p| p < 1.0),
            // Without a seed, each request samples differently.
            seed: sampling
                .seed
                .unwrap_or(self.created ^ request.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            stop_tokens: self.tokenizer.eos_ids().to_vec(),
            use_kv_cache: true,
        };
        config
            .validate()
            .map_err(|e| ApiError::invalid(None, e.to_string()))?;
        Ok((config, stops))
    }
}

pub(crate) fn router(
    state: Arc<AppState>,
    guard: Arc<Guard>,
    max_body: usize,
    body_pause: Duration,
) -> Router {
    // The key is checked first (a request without it learns nothing else), then the
    // body's type.
    let api = Router::new()
        .route("/models", get(models))
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route_layer(middleware::from_fn(require_json))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        // Like /health, without the API key (Prometheus scrapers seldom have one), but
        // behind the Host check.
        .route("/metrics", get(prometheus))
        .nest("/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            max_body,
            refuse_announced_oversize,
        ))
        .layer(middleware::from_fn_with_state(
            body_pause,
            limit_body_pauses,
        ))
        // The outermost layers: a request for another host is refused before anything
        // else, then CORS answers preflights and marks the answers; every request is
        // counted, refused ones included.
        .layer(middleware::from_fn_with_state(guard.clone(), cors))
        .layer(middleware::from_fn_with_state(guard, check_host))
        .layer(middleware::from_fn_with_state(state.clone(), measure))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(Health {
        status: "ok".into(),
        model: state.model_id.clone(),
        waiting: state.engine.waiting(),
    })
}

/// `GET /metrics`: Prometheus' text format.
async fn prometheus(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        state
            .metrics()
            .render(&state.model_id, state.engine.waiting()),
    )
}

async fn not_found() -> ApiError {
    ApiError::invalid(
        None,
        "no such endpoint (see GET /v1/models, POST /v1/chat/completions, POST /v1/completions)",
    )
    .with_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed() -> ApiError {
    ApiError::invalid(None, "method not allowed on this endpoint")
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

async fn models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.model_id.clone(),
            object: "model".into(),
            created: state.created,
            owned_by: "ember".into(),
        }],
    })
}

/// The body, or the 413/400 its reading failed with.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        // A body that stopped coming: 408, with the reason.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
        while let Some(error) = source {
            if let Some(stalled) = error.downcast_ref::<BodyStalled>() {
                return ApiError::invalid(None, stalled.to_string())
                    .with_status(StatusCode::REQUEST_TIMEOUT);
            }
            source = error.source();
        }
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is too large".to_string()
        } else {
            format!("cannot read the request body: {rejection}")
        };
        ApiError::invalid(None, message).with_status(status)
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    respond(state, raw, Kind::Chat, prepare_chat).await
}

/// A request's body prepared by `prepare` off the async threads, then answered.
async fn respond(
    state: Arc<AppState>,
    raw: Result<Bytes, BytesRejection>,
    kind: Kind,
    prepare: fn(&AppState, &[u8]) -> Result<Prepared, ApiError>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let raw = body(raw)?;
    let prepared = state
        .off_the_runtime(move |state| prepare(state, &raw))
        .await?;
    answer(state, kind, prepared, arrived).await
}

/// A chat request, parsed, checked, rendered with the chat template and tokenized.
fn prepare_chat(state: &AppState, raw: &[u8]) -> Result<Prepared, ApiError> {
    let request: ChatRequest = parse(raw)?;
    state.check_model(&request.model)?;
    request.unsupported.check()?;
    let logprobs = request.logprobs.for_chat()?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::invalid(
                Some("messages"),
                format!(
                    "unknown role \"{}\" (system, developer, user, assistant)",
                    clip(&m.role)
                ),
            ));
        }
        // OpenAI's newer name for the system role; templates know "system".
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        let content = match &m.content {
            Some(c) => c.text()?,
            None => String::new(),
        };
        messages.push(ChatMessage::new(role, content));
    }
    let prompt = ember_data::conversation_prompt(&state.tokenizer, &messages).map_err(|e| {
        ApiError::invalid(
            Some("messages"),
            format!("cannot render the conversation: {e}"),
        )
    })?;
    let prompt_ids = state
        .tokenizer
        .encode_rendered(&prompt)
        .map_err(|e| ApiError::internal(format!("cannot tokenize the conversation: {e}")))?;
    let (id, n) = state.next_id("chatcmpl");
    let (config, stops) = state.settings(
        &request.sampling,
        "messages",
        prompt_ids.len(),
        usize::MAX,
        n,
    )?;
    Ok(Prepared::new(
        id,
        prompt_ids,
        config,
        stops,
        &request.sampling,
        logprobs,
    ))
}

async fn completions(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    respond(state, raw, Kind::Completion, prepare_completion).await
}

/// A completion request, parsed, checked and tokenized.
fn prepare_completion(state: &AppState, raw: &[u8]) -> Result<Prepared, ApiError> {
    let request: CompletionRequest = parse(raw)?;
    state.check_model(&request.model)?;
    request.unsupported.check()?;
    let logprobs = request.logprobs.for_completion()?;
    let prompt_ids = state
        .tokenizer
        .encode(&request.prompt.text()?)
        .map_err(|e| ApiError::internal(format!("cannot tokenize the prompt: {e}")))?;
    let (id, n) = state.next_id("cmpl");
    // OpenAI's default for completions.
    let (config, stops) = state.settings(&request.sampling, "prompt", prompt_ids.len(), 16, n)?;
    Ok(Prepared::new(
        id,
        prompt_ids,
        config,
        stops,
        &request.sampling,
        logprobs,
    ))
}

/// A request ready for the generation thread.
struct Prepared {
    id: String,
    prompt_ids: Vec<u32>,
    config: GenerationConfig,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    /// Alternatives per token, when log probabilities are asked for.
    logprobs: Option<usize>,
}

impl Prepared {
    fn new(
        id: String,
        prompt_ids: Vec<u32>,
        config: GenerationConfig,
        stops: Vec<String>,
        sampling: &Sampling,
        logprobs: Option<usize>,
    ) -> Self {
        Self {
            id,
            prompt_ids,
            config,
            stops,
            stream: sampling.stream,
            include_usage: sampling.stream_options.include_usage,
            logprobs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// Queues the request and answers it, whole or streamed.
async fn answer(
    state: Arc<AppState>,
    kind: Kind,
    prepared: Prepared,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let Prepared {
        id,
        prompt_ids,
        config,
        stops,
        stream,
        include_usage,
        logprobs,
    } = prepared;
    let (events, receiver) = unbounded_channel();
    let prompt_tokens = prompt_ids.len();
    let job = Job {
        id: id.clone(),
        prompt_ids,
        config,
        stop_strings: stops,
        events,
        arrived,
        logprobs,
    };
    if !state.engine.submit(job) {
        return Err(ApiError::unavailable("the generation thread has stopped"));
    }
    let chunks = Chunks {
        kind,
        id,
        created: unix_time(),
        model: state.model_id.clone(),
        logprobs,
    };
    if stream {
        let stream = sse_stream(chunks, receiver, prompt_tokens, include_usage);
        // A client that left is noticed only when a write to it fails; the comment
        // lines sent every second bound that delay even while no text is produced.
        let keep_alive = KeepAlive::new().interval(Duration::from_secs(1));
        return Ok(Sse::new(stream).keep_alive(keep_alive).into_response());
    }
    // Dropping this future (the client left) drops `receiver`, which cancels the job.
    let mut receiver = receiver;
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Text(piece, logprobs) => {
                text.push_str(&piece);
                tokens.extend(logprobs);
            }
            Event::Done {
                finish_reason,
                completion_tokens,
                cached_tokens,
            } => {
                let usage = Usage::new(prompt_tokens, completion_tokens, cached_tokens);
                return Ok(chunks.whole(text, &tokens, finish_reason, usage));
            }
            Event::Failed(message) => return Err(ApiError::unavailable(message)),
        }
    }
    Err(ApiError::internal("the generation ended without an answer"))
}

/// The shapes of one response's bodies.
struct Chunks {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// Alternatives per token, when log probabilities were asked for.
    logprobs: Option<usize>,
}

impl Chunks {
    /// The whole answer; `tokens` are the log probabilities of its tokens.
    fn whole(
        &self,
        text: String,
        tokens: &[TokenLogprob],
        finish: FinishReason,
        usage: Usage,
    ) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.whole_json(text, tokens, finish, usage),
        )
            .into_response()
    }

    fn whole_json(
        &self,
        text: String,
        tokens: &[TokenLogprob],
        finish: FinishReason,
        usage: Usage,
    ) -> String {
        match self.kind {
            Kind::Chat => to_json(&self.chat(
                "chat.completion",
                vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                    },
                    logprobs: self.logprobs.map(|_| chat_logprobs(tokens)),
                    finish_reason: finish,
                }],
                Some(usage),
            )),
            Kind::Completion => to_json(&self.text(
                vec![TextChoice {
                    index: 0,
                    text,
                    logprobs:
                        self.logprobs.map(|top| {
                            completion_logprobs(tokens, top, &mut CharOffsets::default())
                        }),
                    finish_reason: Some(finish),
                }],
                Some(usage),
            )),
        }
    }

    /// One streamed chunk: a piece of text (`None`: the opening chunk of a chat, which
    /// names the role) with its tokens' log probabilities (`offsets` counts the
    /// characters sent before), or the end.
    fn chunk(
        &self,
        text: Option<&str>,
        tokens: &[TokenLogprob],
        offsets: &mut CharOffsets,
        finish: Option<FinishReason>,
    ) -> String {
        let asked = self.logprobs.filter(|_| !tokens.is_empty());
        match self.kind {
            Kind::Chat => {
                let delta = match (text, finish) {
                    (_, Some(_)) => Delta::default(),
                    (None, None) => Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    (Some(t), None) => Delta {
                        role: None,
                        content: Some(t.to_string()),
                    },
                };
                let choice = ChatChunkChoice {
                    index: 0,
                    delta,
                    logprobs: asked.map(|_| chat_logprobs(tokens)),
                    finish_reason: finish,
                };
                to_json(&self.chat("chat.completion.chunk", vec![choice], None))
            }
            Kind::Completion => to_json(&self.text(
                vec![TextChoice {
                    index: 0,
                    text: text.unwrap_or("").to_string(),
                    logprobs: asked.map(|top| completion_logprobs(tokens, top, offsets)),
                    finish_reason: finish,
                }],
                None,
            )),
        }
    }

    /// The last chunk of a stream with `include_usage`: no choices, the token counts.
    fn usage(&self, usage: Usage) -> String {
        match self.kind {
            Kind::Chat => to_json(&self.chat::<ChatChunkChoice>(
                "chat.completion.chunk",
                Vec::new(),
                Some(usage),
            )),
            Kind::Completion => to_json(&self.text(Vec::new(), Some(usage))),
        }
    }

    fn chat<C>(
        &self,
        object: &'static str,
        choices: Vec<C>,
        usage: Option<Usage>,
    ) -> ChatCompletion<C> {
        ChatCompletion {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn text(&self, choices: Vec<TextChoice>, usage: Option<Usage>) -> TextCompletion {
        TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("a response body serializes")
}

fn data(json: String) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(json))
}

/// The SSE events of a streamed answer: (for a chat) the role, the text as it comes,
/// the finish reason, the usage if asked for, and `[DONE]`. An error after the stream
/// began is sent as an error object, then `[DONE]`.
fn sse_stream(
    chunks: Chunks,
    receiver: tokio::sync::mpsc::UnboundedReceiver<Event>,
    prompt_tokens: usize,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let chunks = Arc::new(chunks);
    let mut offsets = CharOffsets::default();
    let opening = match chunks.kind {
        Kind::Chat => vec![data(chunks.chunk(None, &[], &mut offsets, None))],
        Kind::Completion => Vec::new(),
    };
    let body = UnboundedReceiverStream::new(receiver).flat_map(move |event| {
        let events = match event {
            Event::Text(piece, logprobs) => vec![data(chunks.chunk(
                Some(&piece),
                &logprobs,
                &mut offsets,
                None,
            ))],
            Event::Done {
                finish_reason,
                completion_tokens,
                cached_tokens,
            } => {
                let mut events = vec![data(chunks.chunk(
                    None,
                    &[],
                    &mut offsets,
                    Some(finish_reason),
                ))];
                if include_usage {
                    events.push(data(chunks.usage(Usage::new(
                        prompt_tokens,
                        completion_tokens,
                        cached_tokens,
                    ))));
                }
                events.push(Ok(SseEvent::default().data("[DONE]")));
                events
            }
            Event::Failed(message) => vec![
                data(to_json(&ApiError::unavailable(message).body())),
                Ok(SseEvent::default().data("[DONE]")),
            ],
        };
        stream::iter(events)
    });
    stream::iter(opening).chain(body)
}

pub(crate) fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parsed(json: String) -> Value {
        serde_json::from_str(&json).unwrap()
    }

    /// The bodies are the ones the server wrote with `json!` before they were typed.
    #[test]
    fn response_bodies_have_openai_s_shape() {
        let usage = Usage::new(3, 2, 0);
        let chat = Chunks {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            logprobs: None,
        };
        let envelope = |object: &str, choices: Value| json!({"id": "chatcmpl-1", "object": object, "created": 7, "model": "m", "choices": choices});
        let mut whole = envelope(
            "chat.completion",
            json!([{"index": 0, "message": {"role": "assistant", "content": "hi"},
                    "logprobs": null, "finish_reason": "stop"}]),
        );
        whole["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}});
        assert_eq!(
            parsed(chat.whole_json("hi".into(), &[], FinishReason::Stop, usage)),
            whole
        );
        let chunk = |delta: Value, finish: Value| {
            envelope(
                "chat.completion.chunk",
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            )
        };
        assert_eq!(
            parsed(chat.chunk(None, &[], &mut CharOffsets::default(), None)),
            chunk(json!({"role": "assistant", "content": ""}), Value::Null)
        );
        assert_eq!(
            parsed(chat.chunk(Some("x"), &[], &mut CharOffsets::default(), None)),
            chunk(json!({"content": "x"}), Value::Null)
        );
        assert_eq!(
            parsed(chat.chunk(
                None,
                &[],
                &mut CharOffsets::default(),
                Some(FinishReason::Length)
            )),
            chunk(json!({}), json!("length"))
        );
        let mut last = envelope("chat.completion.chunk", json!([]));
        last["usage"] = json!(usage);
        assert_eq!(parsed(chat.usage(usage)), last);

        let text = Chunks {
            kind: Kind::Completion,
            id: "chatcmpl-1".into(),
            ..chat
        };
        let mut whole = envelope(
            "text_completion",
            json!([{"index": 0, "text": "hi", "logprobs": null, "finish_reason": "length"}]),
        );
        whole["usage"] = json!(usage);
        assert_eq!(
            parsed(text.whole_json("hi".into(), &[], FinishReason::Length, usage)),
            whole
        );
        assert_eq!(
            parsed(text.chunk(Some("x"), &[], &mut CharOffsets::default(), None)),
            envelope(
                "text_completion",
                json!([{"index": 0, "text": "x", "logprobs": null, "finish_reason": null}])
            )
        );
        assert_eq!(
            parsed(text.chunk(
                None,
                &[],
                &mut CharOffsets::default(),
                Some(FinishReason::Stop)
            )),
            envelope(
                "text_completion",
                json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}])
            )
        );
        let mut last = envelope("text_completion", json!([]));
        last["usage"] = json!(usage);
        assert_eq!(parsed(text.usage(usage)), last);

        let error = ApiError::unknown_model("a", "b");
        assert_eq!(
            serde_json::to_value(error.body()).unwrap(),
            json!({"error": {"message": error.message, "type": "invalid_request_error",
                             "param": "model", "code": "model_not_found"}})
        );
        let error = ApiError::internal("x");
        assert_eq!(
            serde_json::to_value(error.body()).unwrap(),
            json!({"error": {"message": "x", "type": "server_error", "param": null, "code": null}})
        );
    }

    /// Log probabilities as OpenAI shapes them: a chat's `content` entries (with
    /// `bytes` and the alternatives), a completion's parallel lists with character
    /// offsets that carry across streamed chunks; null in a chunk without tokens.
    #[test]
    fn log_probabilities_have_openai_s_shape() {
        let token = |bytes: &[u8], logprob: f64, top: &[(&[u8], f64)]| TokenLogprob {
            bytes: bytes.to_vec(),
            logprob,
            top: top.iter().map(|(b, lp)| (b.to_vec(), *lp)).collect(),
        };
        let tokens = [
            token(b"Hi", -0.5, &[(b"Hi", -0.5), (b"Yo", -1.5)]),
            token(&[0xc3], -0.25, &[(&[0xc3], -0.25), (b"!", -2.0)]),
            token(&[0xa9], -1.0, &[(&[0xa9], -1.0), (b"?", -3.0)]),
        ];
        let usage = Usage::new(3, 3, 0);
        let chat = Chunks {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            logprobs: Some(2),
        };
        let whole =
            parsed(chat.whole_json("Hi\u{e9}".into(), &tokens, FinishReason::Length, usage));
        let entry = |t: &str, lp: f64, b: Value| json!({"token": t, "logprob": lp, "bytes": b});
        let mut first = entry("Hi", -0.5, json!([72, 105]));
        first["top_logprobs"] = json!([
            entry("Hi", -0.5, json!([72, 105])),
            entry("Yo", -1.5, json!([89, 111]))
        ]);
        assert_eq!(whole["choices"][0]["logprobs"]["content"][0], first);
        assert_eq!(whole["choices"][0]["logprobs"]["refusal"], Value::Null);
        let second = &whole["choices"][0]["logprobs"]["content"][1];
        assert_eq!(second["token"], "bytes:\\xc3");
        assert_eq!(second["bytes"], json!([0xc3]));
        let mut offsets = CharOffsets::default();
        let piece = parsed(chat.chunk(Some("Hi"), &tokens[..1], &mut offsets, None));
        assert_eq!(piece["choices"][0]["logprobs"]["content"][0], first);
        let end = parsed(chat.chunk(None, &[], &mut offsets, Some(FinishReason::Stop)));
        assert_eq!(end["choices"][0]["logprobs"], Value::Null);

        let text = Chunks {
            kind: Kind::Completion,
            ..chat
        };
        let whole =
            parsed(text.whole_json("Hi\u{e9}".into(), &tokens, FinishReason::Length, usage));
        assert_eq!(
            whole["choices"][0]["logprobs"],
            json!({
                "tokens": ["Hi", "bytes:\\xc3", "bytes:\\xa9"],
                "token_logprobs": [-0.5, -0.25, -1.0],
                "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}, {"bytes:\\xc3": -0.25, "!": -2.0},
                                 {"bytes:\\xa9": -1.0, "?": -3.0}],
                "text_offset": [0, 2, 2]
            })
        );
        // Streamed, the offsets go on from chunk to chunk.
        let mut offsets = CharOffsets::default();
        let a = parsed(text.chunk(Some("Hi"), &tokens[..1], &mut offsets, None));
        let b = parsed(text.chunk(Some("\u{e9}"), &tokens[1..], &mut offsets, None));
        assert_eq!(a["choices"][0]["logprobs"]["text_offset"], json!([0]));
        assert_eq!(b["choices"][0]["logprobs"]["text_offset"], json!([2, 2]));
        let none = Chunks {
            logprobs: Some(0),
            ..text
        };
        let zero = parsed(none.whole_json("Hi".into(), &tokens[..1], FinishReason::Stop, usage));
        assert_eq!(zero["choices"][0]["logprobs"]["top_logprobs"], Value::Null);
    }
}
