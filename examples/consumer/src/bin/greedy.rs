use burn::prelude::*;
use ember_model::{GenerationConfig, generate, load_model, model_tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: greedy MODEL_DIR")?;
    let device = Device::flex();
    let loaded = load_model(dir.as_ref(), None, &device)?;
    let tokenizer = model_tokenizer(&loaded)?;
    let prompt = tokenizer.encode("Every effort moves you")?;
    let config = GenerationConfig { max_new_tokens: 12, ..Default::default() };
    let ids = generate(&loaded.model, &prompt, &config, &device, |_| {})?;
    println!("{}", tokenizer.decode(&ids)?);
    Ok(())
}
