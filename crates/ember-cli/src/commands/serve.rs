//! `ember serve`: the flags of the OpenAI-compatible server of [`ember_serve`], which
//! does the serving; here the model is loaded (as every command loads one) and the
//! server runs until Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result};
use burn::prelude::Device;
use ember_serve::{BatchLimits, Server, ServerOptions};

use crate::args::model::ModelArgs;

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
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $EMBER_API_KEY if set;
    /// an empty key is an error).
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// On a loopback address, also answer requests for this Host name (any port;
    /// repeatable; `*`: any). Without it only localhost, 127.x.x.x and [::1] are
    /// answered, which keeps web pages out through DNS rebinding.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// Let web pages from this origin (`https://app.example`, or `*`) call the API from
    /// a browser: CORS headers and preflights (repeatable; default: no CORS).
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// The model's id in the API (default: the model directory's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Seconds a request's head may take to arrive (a new connection's from the
    /// start), and the longest pause while its body comes; slower clients are cut off.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub header_timeout: Duration,
    /// Seconds a kept-alive connection may wait for its next request (and an answer
    /// for its client to read it) before it is closed.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = seconds)]
    pub idle_timeout: Duration,
    /// The most connections served at once; more wait, and an idle one is closed to
    /// make room (lowered to what `ulimit -n` allows).
    #[arg(long, value_name = "N", default_value_t = ember_serve::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// On Ctrl-C or SIGTERM, seconds the responses in flight get to finish; then the
    /// server closes what is still open and exits.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub shutdown_grace: Duration,
    /// The most sequences generated at once (continuous batching); more requests wait.
    #[arg(long, value_name = "N", default_value_t = ember_serve::engine::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// MiB the keys and values of all running sequences may take together (default:
    /// 40% of the memory available at start). It also bounds one request's prompt and
    /// reply; longer ones are refused.
    #[arg(long, value_name = "MIB")]
    pub kv_cache_mb: Option<usize>,
    /// A prompt is read at most this many tokens per step, between the running
    /// sequences' decoding steps.
    #[arg(long, value_name = "TOKENS", default_value_t = ember_serve::engine::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: usize,
    /// Do not keep prompts' keys and values for later prompts that begin the same way
    /// (prefix caching; on by default, within --kv-cache-mb).
    #[arg(long)]
    pub no_prefix_cache: bool,
}

/// A duration in seconds (decimals allowed).
fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("`{text}`: seconds must be zero or more (and finite)"))
}

impl ServeArgs {
    /// The server's options these flags give.
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            host: self.host.clone(),
            port: self.port,
            // Set but empty, the variable is an empty key (an error), not "no key".
            api_key: self.api_key.clone().or_else(|| {
                std::env::var_os("EMBER_API_KEY")
                    .filter(|v| v.is_empty())
                    .map(|_| String::new())
            }),
            model_id: self
                .model_id
                .clone()
                .unwrap_or_else(|| ember_serve::model_name(&self.model.model)),
            allowed_hosts: self.allowed_host.clone(),
            cors_origins: self.cors_origin.clone(),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
            batch: BatchLimits {
                max_batch: self.max_batch,
                kv_cache_bytes: self.kv_cache_mb.map(|mib| mib.saturating_mul(1 << 20)),
                prefill_chunk: self.prefill_chunk,
                prefix_cache: !self.no_prefix_cache,
            },
            precision: self.model.precision,
            ..ServerOptions::default()
        }
    }
}

/// Loads the model, starts the generation thread and serves until a signal.
pub fn run(args: &ServeArgs, device: &Device) -> Result<()> {
    let options = args.options();
    // Bad options and a bad --host are refused before the model is loaded.
    options.check().map_err(|e| match e {
        ember_serve::ServeError::EmptyApiKey => anyhow::anyhow!(
            "--api-key (or EMBER_API_KEY) is empty: give a key, or neither to serve without one"
        ),
        // "allowed host" is --allowed-host, "CORS origin" --cors-origin.
        ember_serve::ServeError::BadOption {
            option,
            value,
            reason,
        } => anyhow::anyhow!(
            "--{} {value}: {reason}",
            option.to_lowercase().replace(' ', "-")
        ),
        e => anyhow::anyhow!("{e}"),
    })?;
    options
        .address()
        .map_err(|_| anyhow::anyhow!("--host {}: not an address to listen on", args.host))?;
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let server = Server::start(loaded.model, tokenizer, device.clone(), options);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served: Result<()> = runtime.block_on(async move {
        let listener = server.bind().await?;
        server
            .serve(listener, ember_serve::shutdown_signal())
            .await?;
        Ok(())
    });
    // A request body still being tokenized on a blocking thread is not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served
}
