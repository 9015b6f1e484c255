//! The `--tokenizer` argument of the tokenizing commands, and standard input as text.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ember_tokenizer::Gpt2Tokenizer;

/// Read all of stdin as UTF-8.
pub fn read_stdin_text() -> Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read standard input")?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "standard input is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `gpt2` (embedded) or a path to a Hugging Face `tokenizer.json`.
pub fn load_tokenizer(name: &str) -> Result<Gpt2Tokenizer> {
    if name == "gpt2" {
        return Ok(Gpt2Tokenizer::gpt2()?);
    }
    let path = Path::new(name);
    if !path.exists() {
        bail!("unknown tokenizer \"{name}\": use gpt2 or the path of a tokenizer.json");
    }
    Gpt2Tokenizer::from_file(path).with_context(|| format!("cannot load the tokenizer {name}"))
}
