//! `ember serve`: the flags of the OpenAI-compatible server of [`ember_serve`], which
//! does the serving; here the model is loaded (as every command loads one) and the
//! server runs until Ctrl-C or SIGTERM.

use anyhow::{Context, Result};
use burn::prelude::Device;
use ember_serve::{Server, ServerOptions};

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
    runtime.block_on(async move {
        let listener = server.bind().await?;
        server
            .serve(listener, ember_serve::shutdown_signal())
            .await?;
        Ok(())
    })
}
