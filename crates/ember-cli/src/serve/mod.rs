//! `ember serve`: an OpenAI-compatible HTTP server (axum on tokio) and a chat page, for
//! any model Ember loads.
//!
//! - `GET /` the chat page (one static file, no build step), `GET /health`;
//! - `GET /v1/models`, `POST /v1/chat/completions` (messages rendered with the model's
//!   chat template, or the book's Alpaca prompt), `POST /v1/completions`; streamed as
//!   server-sent events in OpenAI's chunk format when `stream` is true;
//! - with `--api-key` (or `EMBER_API_KEY`), `/v1/*` needs `Authorization: Bearer KEY`.
//!
//! Requests are answered one at a time by one generation thread ([`engine`] says why);
//! the HTTP side only parses, checks and streams. Ctrl-C or SIGTERM stops the current
//! generation, refuses queued requests and closes the server once responses are out.

pub mod api;
pub mod engine;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use burn::prelude::Device;

use crate::model_arg::ModelArgs;
use engine::Engine;

/// Options of `ember serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (loopback by default: other machines cannot connect).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is logged).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $EMBER_API_KEY if set).
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model's id in the API (default: the model directory's name).
    #[arg(long)]
    pub model_id: Option<String>,
}

/// Largest request body accepted (a conversation filling a long context fits easily).
const MAX_BODY_BYTES: usize = 4 << 20;

/// Loads the model, starts the generation thread and serves until a signal.
pub fn run(args: &ServeArgs, device: &Device) -> Result<()> {
    let address: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (args.host.as_str(), args.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|()| anyhow::anyhow!("--host {}: not an address to listen on", args.host))?;
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let model_id = args
        .model_id
        .clone()
        .unwrap_or_else(|| model_name(&args.model.model));
    let context = ember_model::CausalLm::context_length(&loaded.model);
    let tokenizer = Arc::new(tokenizer);
    let engine = Engine::start(loaded.model, tokenizer.clone(), device.clone());
    let state = routes::AppState::new(
        engine.clone(),
        tokenizer,
        model_id.clone(),
        context,
        args.api_key.clone(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(
            model = %model_id,
            context,
            auth = args.api_key.is_some(),
            "listening on http://{bound}"
        );
        let app = routes::router(state, MAX_BODY_BYTES);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal(engine))
            .await
            .context("the server failed")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The API's name for a model: its directory's name.
fn model_name(path: &std::path::Path) -> String {
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

/// Waits for Ctrl-C or SIGTERM, then stops generating.
async fn shutdown_signal(engine: Engine) {
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
    tracing::info!("shutting down: finishing responses in flight");
    engine.shut_down();
}
