//! An OpenAI-compatible HTTP server (axum on tokio) and a chat page, for any model Ember
//! loads; the `ember serve` command is a thin wrapper around it.
//!
//! - `GET /` the chat page (one static file, no build step), `GET /health`,
//!   `GET /metrics` (Prometheus' text format: requests by endpoint and status, running
//!   and waiting sequences, tokens, time to first token, inter-token latency, request
//!   durations, connections);
//! - `GET /v1/models`, `POST /v1/chat/completions` (messages rendered with the model's
//!   chat template, or the book's Alpaca prompt), `POST /v1/completions`; streamed as
//!   server-sent events in OpenAI's chunk format when `stream` is true;
//! - with [`ServerOptions::api_key`], `/v1/*` needs `Authorization: Bearer KEY` (`/`,
//!   `/health` and `/metrics` do not: Prometheus scrapers seldom have a key).
//!
//! # Hardening
//!
//! - The API key is compared in constant time (as SHA-256 digests), the `Bearer`
//!   scheme in any case; an empty key is an error ([`ServeError::EmptyApiKey`]), not a
//!   server that refuses everything.
//! - A request field the server does not implement (`tools`, `response_format` other
//!   than text, non-zero penalties, `echo`, ...) is refused with a 400
//!   naming it (`"param"`), never ignored ([`api::Unsupported`]).
//! - `POST` bodies must be `Content-Type: application/json` (else 415).
//! - On a loopback address, a request whose `Host` is not `localhost`, `127.x.x.x` or
//!   `[::1]` (with any port) is refused with a 403, against DNS rebinding, unless
//!   [`ServerOptions::allowed_hosts`] names it.
//! - No CORS headers unless [`ServerOptions::cors_origins`] names origins.
//!
//! # A server that cannot be stalled
//!
//! - Parsing a body, rendering the chat template and tokenizing (which take seconds for
//!   bodies of megabytes) run on tokio's blocking threads, one per core at most: the
//!   async threads keep answering `/health` and streaming tokens.
//! - [`Server::serve`] accepts connections itself (hyper's HTTP/1.1): a request's head
//!   must arrive within [`ServerOptions::header_timeout`] (10 s; a new connection's
//!   from the start), and its body may not pause longer (else a 408); a kept-alive
//!   connection may wait [`ServerOptions::idle_timeout`] (60 s) for its next request,
//!   and an answer as long for its client to read it.
//! - At most [`ServerOptions::max_connections`] (512, fewer if the open-files limit
//!   is lower) are served at once: the next connection waits to be accepted, and an
//!   idle connection is closed to make room for it.
//! - When the shutdown future completes, idle connections and half-sent heads are
//!   closed at once, responses in flight get [`ServerOptions::shutdown_grace`] (10 s)
//!   to finish, then `serve` returns anyway.
//!
//! One generation thread serves every request at once, batched continuously ([`engine`]
//! says why; [`BatchLimits`] bounds the batch, the KV cache and the prompt chunks); the
//! HTTP side only parses, checks and streams. When the shutdown future given to
//! [`Server::serve`] completes, the running generations stop, queued requests are
//! refused and the server closes once responses are out (or the grace period is over).
//!
//! # Embedding the server
//!
//! ```no_run
//! use std::path::Path;
//!
//! use burn::prelude::Device;
//! use ember_serve::{Server, ServerOptions};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let device = Device::ndarray();
//!     let loaded = ember_model::load_model(Path::new("models/qwen3-0.6b"), None, &device)?;
//!     let tokenizer = ember_model::model_tokenizer(&loaded)?;
//!     let options = ServerOptions {
//!         model_id: "qwen3-0.6b".into(),
//!         ..ServerOptions::default()
//!     };
//!     // Starts the generation thread, which owns the model.
//!     let server = Server::start(loaded.model, tokenizer, device, options);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     // Serves until Ctrl-C or SIGTERM. `server.router()` gives the axum `Router`
//!     // instead, to merge with other routes or serve some other way.
//!     server.serve(listener, ember_serve::shutdown_signal()).await?;
//!     Ok(())
//! }
//! ```
//!
//! The request and response bodies are plain serde types in [`api`]:
//!
//! ```
//! use ember_serve::api::{ChatRequest, parse};
//!
//! let request: ChatRequest = parse(
//!     br#"{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stop": "\n"}"#,
//! )
//! .unwrap();
//! assert_eq!(request.messages[0].role, "user");
//! assert_eq!(request.sampling.stop.strings(), ["\n"]);
//!
//! // A bad request is answered with OpenAI's error object.
//! let error = parse::<ChatRequest>(b"{").unwrap_err();
//! let body = serde_json::to_value(error.body()).unwrap();
//! assert_eq!(body["error"]["type"], "invalid_request_error");
//! ```

#![warn(missing_docs)]

pub mod api;
mod batch;
pub mod engine;
mod listen;
mod logprobs;
mod metrics;
mod middleware;
mod prefix_cache;
mod routes;
mod stop_text;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use burn::prelude::Device;
use ember_model::{CausalLm, Dtype, LanguageModel};
use ember_tokenizer::ModelTokenizer;

pub use api::ApiError;
pub use engine::{BatchLimits, Engine, FinishReason, KvBudget, default_kv_cache_bytes};

/// The largest request body accepted by default (a conversation filling a long context
/// fits easily).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// How long a request's head may take to arrive, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive connection may wait for its next request, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most connections served at once, by default (lowered to what the open-files
/// limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// How long responses in flight may take to finish after the shutdown future
/// completes, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the server is reached and what it calls its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Address to listen on, for [`Server::bind`] (loopback by default: other machines
    /// cannot connect).
    pub host: String,
    /// Port, for [`Server::bind`] (0 picks a free one).
    pub port: u16,
    /// When set, `/v1/*` needs `Authorization: Bearer KEY`; an empty key is an error.
    pub api_key: Option<String>,
    /// The model's id in the API, which clients send as `model`.
    pub model_id: String,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Host names (`Host` header, any port) answered besides `localhost`, `127.x.x.x`
    /// and `[::1]` when the server listens on a loopback address (on another address
    /// every `Host` is answered); `*` allows any. Empty by default, which keeps web
    /// pages from reaching a local server through DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://app.example`, or `*` for any) whose web pages may call the
    /// API from a browser: their requests get CORS headers and preflights are
    /// answered. Empty by default: no CORS headers.
    pub cors_origins: Vec<String>,
    /// How long a request's head may take to arrive: a new connection's first request
    /// from the moment it is accepted, a later one from its first byte. A connection
    /// that has not sent it whole by then is closed. It is also the longest pause
    /// allowed while a request's body comes (then the answer is a 408).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request (and a
    /// response may wait for its client to read it) before it is closed.
    pub idle_timeout: Duration,
    /// The most connections served at once; the next wait to be accepted, and an
    /// idle one is closed to make room (lowered to what the open-files limit allows).
    pub max_connections: usize,
    /// After the shutdown future completes, how long responses in flight may take to
    /// finish; [`Server::serve`] then closes what is still open and returns.
    pub shutdown_grace: Duration,
    /// How many sequences are generated at once, within what KV cache budget, and how
    /// long a prompt chunk is.
    pub batch: BatchLimits,
    /// The arithmetic of the matrix products ([`ember_kernels::autocast()`]): f32, or
    /// bf16 (activations rounded to bf16 against bf16 weights, as transformers' bf16
    /// models and llama.cpp compute: on CPUs with AVX512_BF16 twice the multiply-adds
    /// per instruction, so batches and prompts go faster; replies differ a little from
    /// f32's, and are still the same alone or batched).
    pub precision: Dtype,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            model_id: "ember".into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            batch: BatchLimits::default(),
            precision: Dtype::F32,
        }
    }
}

impl ServerOptions {
    /// Checks the options that can be wrong whatever the address: an empty API key,
    /// an empty allowed host, a CORS origin that no browser sends, a zero timeout or
    /// connection cap. [`Server::bind`] and [`Server::serve`] call it; a program can
    /// call it before loading a model.
    pub fn check(&self) -> Result<(), ServeError> {
        for (option, value) in [
            ("header timeout", self.header_timeout),
            ("idle timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ServeError::BadOption {
                    option,
                    value: format!("{}", value.as_secs_f64()),
                    reason: "it must be longer than zero",
                });
            }
        }
        for (option, value) in [
            ("max batch", self.batch.max_batch),
            ("prefill chunk", self.batch.prefill_chunk),
            ("KV cache MB", self.batch.kv_cache_bytes.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(ServeError::BadOption {
                    option,
                    value: "0".into(),
                    reason: "it must be at least 1",
                });
            }
        }
        if !matches!(self.precision, Dtype::F32 | Dtype::Bf16) {
            return Err(ServeError::BadOption {
                option: "precision",
                value: self.precision.to_string(),
                reason: "products compute in f32 or bf16",
            });
        }
        if self.max_connections == 0 {
            return Err(ServeError::BadOption {
                option: "max connections",
                value: "0".into(),
                reason: "at least one connection must be served",
            });
        }
        if let Some(key) = &self.api_key {
            if key.trim().is_empty() {
                return Err(ServeError::EmptyApiKey);
            }
            if key.trim() != key || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ServeError::BadOption {
                    option: "api key",
                    value: "(hidden)".into(),
                    reason: "it must be printable ASCII without spaces around it, as an HTTP header carries it",
                });
            }
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(ServeError::BadOption {
                    option: "allowed host",
                    value: host.clone(),
                    reason: "a host name (as in the Host header, `name` or `name:port`), or `*`",
                });
            }
        }
        for origin in &self.cors_origins {
            if !is_origin(origin) {
                return Err(ServeError::BadOption {
                    option: "CORS origin",
                    value: origin.clone(),
                    reason: "an origin as browsers send it: `scheme://host` or `scheme://host:port`, no path (or `*`)",
                });
            }
        }
        Ok(())
    }

    /// The socket address of `host` and `port` (a host name is resolved).
    pub fn address(&self) -> Result<SocketAddr, ServeError> {
        if let Ok(address) = format!("{}:{}", self.host, self.port).parse() {
            return Ok(address);
        }
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ServeError::Address {
                host: self.host.clone(),
            })
    }
}

/// `*`, or `scheme://host[:port]` without a path, as a browser's `Origin` header is.
fn is_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
        && axum::http::HeaderValue::from_str(origin).is_ok()
}

/// What can fail when the server starts or runs.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The API key is empty (or only spaces): no client could send it, so the server
    /// would refuse every request.
    #[error("the API key is empty: give a key, or none to serve without one")]
    EmptyApiKey,
    /// An option the server cannot work with.
    #[error("{option} {value}: {reason}")]
    BadOption {
        /// Which option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// The host is neither an address nor a name that resolves.
    #[error("{host}: not an address to listen on")]
    Address {
        /// The host given.
        host: String,
    },
    /// The address could not be bound (in use, not ours, no permission).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Accepting or serving connections failed.
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A model behind the API: its generation thread and what the HTTP handlers share.
pub struct Server {
    engine: Engine,
    state: Arc<routes::AppState>,
    options: ServerOptions,
    context: usize,
}

impl Server {
    /// Starts the generation thread, which owns `model`; nothing listens yet.
    pub fn start(
        model: LanguageModel,
        tokenizer: ModelTokenizer,
        device: Device,
        options: ServerOptions,
    ) -> Self {
        let model_context = CausalLm::context_length(&model);
        let tokenizer = Arc::new(tokenizer);
        let engine = Engine::start(
            model,
            tokenizer.clone(),
            device,
            options.batch,
            options.precision,
        );
        // A sequence longer than the KV cache budget could never run: the budget is
        // the context then.
        let budget = engine.kv_budget().positions();
        let context = model_context.min(budget);
        if budget < model_context {
            tracing::info!(
                "prompt and reply together are limited to {budget} tokens by the KV cache budget (the model's context is {model_context})"
            );
        }
        let state = routes::AppState::new(
            engine.clone(),
            tokenizer,
            options.model_id.clone(),
            routes::Context {
                tokens: context,
                by_budget: budget < model_context,
            },
            options.api_key.as_deref(),
        );
        Self {
            engine,
            state,
            options,
            context,
        }
    }

    /// The server's routes (the page, `/health` and `/v1/*`), to serve or to merge into
    /// another axum application.
    ///
    /// `Host` is checked (see [`ServerOptions::allowed_hosts`]) when
    /// [`ServerOptions::host`] is a loopback address or a name that resolves to one (or
    /// does not resolve): set it to the address the router is served on.
    /// [`Server::serve`] checks the address it really listens on instead.
    ///
    /// The router prepares requests off the async threads, answers a stalled body
    /// with a 408 and serves `/metrics`; the connection limits (header and idle
    /// timeouts, the connection cap, the shutdown grace period) are
    /// [`Server::serve`]'s, which accepts the connections.
    pub fn router(&self) -> axum::Router {
        let loopback = self
            .options
            .address()
            .map_or(true, |address| middleware::is_loopback(address.ip()));
        self.router_on(loopback)
    }

    /// The routes of a server listening on a loopback address or not.
    fn router_on(&self, loopback: bool) -> axum::Router {
        routes::router(
            self.state.clone(),
            middleware::Guard::new(&self.options, loopback),
            self.options.max_body_bytes,
            self.options.header_timeout,
        )
    }

    /// The generation thread's handle ([`Engine::shut_down`] stops generating).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The options it was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The longest sequence served, in tokens (prompt and reply together): the model's
    /// context length, or what the KV cache budget holds if that is less.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// Binds [`ServerOptions::host`] and [`ServerOptions::port`] (after
    /// [`ServerOptions::check`]).
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, ServeError> {
        self.options.check()?;
        let address = self.options.address()?;
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })
    }

    /// Serves on `listener` until `shutdown` completes; then stops generating, refuses
    /// queued requests, closes idle connections, and returns once the responses in
    /// flight are out, or after [`ServerOptions::shutdown_grace`] at most (closing what
    /// is still open). Fails at once if [`ServerOptions::check`] does. `Host` is
    /// checked when the listener's address is a loopback one.
    ///
    /// Connections are served with [`ServerOptions::header_timeout`],
    /// [`ServerOptions::idle_timeout`] and [`ServerOptions::max_connections`]
    /// (HTTP/1.1). Work that grows with a request's body (parsing, the chat template,
    /// tokenizing) runs on tokio's blocking threads: a runtime that serves must let
    /// them finish, or be shut down with a timeout (`Runtime::shutdown_timeout`).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        self.options.check()?;
        let bound = listener.local_addr().map_err(ServeError::Serve)?;
        tracing::info!(
            model = %self.options.model_id,
            context = self.context,
            auth = self.options.api_key.is_some(),
            "listening on http://{bound}"
        );
        let engine = self.engine.clone();
        let router = self.router_on(middleware::is_loopback(bound.ip()));
        let limits = listen::Limits {
            header_timeout: self.options.header_timeout,
            idle_timeout: self.options.idle_timeout,
            max_connections: listen::connection_cap(self.options.max_connections),
            shutdown_grace: self.options.shutdown_grace,
        };
        let metrics = self.engine.metrics().clone();
        listen::serve(listener, router, limits, metrics, async move {
            shutdown.await;
            tracing::info!("shutting down: finishing responses in flight");
            engine.shut_down();
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM: a shutdown future for [`Server::serve`].
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The API's name for a model loaded from `path`: its directory's name (`ember` when
/// there is none).
pub fn model_name(path: &Path) -> String {
    let path: PathBuf = ember_model::resolve_model_path(path);
    let path = if path.is_file() {
        path.parent().map(PathBuf::from).unwrap_or(path)
    } else {
        path
    };
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "ember".to_string())
}
