//! Serves a model directory over an OpenAI-compatible API (and a chat page at `/`)
//! until Ctrl-C: `serve-my-model MODEL_DIR [ADDRESS]`.

use burn::prelude::*;
use ember_serve::{Server, ServerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: serve-my-model MODEL_DIR [ADDRESS]")?;
    let address = std::env::args().nth(2).unwrap_or_else(|| "127.0.0.1:8080".into());
    let device = Device::flex();
    let loaded = ember_model::load_model(dir.as_ref(), None, &device)?;
    let tokenizer = ember_model::model_tokenizer(&loaded)?;
    let options = ServerOptions { model_id: "my-model".into(), ..ServerOptions::default() };
    let server = Server::start(loaded.model, tokenizer, device, options);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    server.serve(listener, ember_serve::shutdown_signal()).await?;
    Ok(())
}
