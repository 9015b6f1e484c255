//! `ember generate`: a prompt continued, streamed as it is generated.

use std::io::Write;

use anyhow::Result;
use burn::prelude::*;
use ember_model::{check_prompt, generate};
use ember_tokenizer::TextStream;

use crate::args::model::ModelArgs;
use crate::args::sampling::SamplingArgs;

/// Options of `ember generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt, encoded as the model's tokenizer does by default.
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep going past every end-of-text token of the model.
    #[arg(long)]
    pub no_stop: bool,
    /// Print `{"prompt_ids", "generated_ids", "text"}` instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// Writes and flushes; a closed stdout (a pipe to `head`) does not stop generation.
fn emit(out: &mut impl Write, text: &str) {
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `ember generate`
pub fn run(args: &GenerateArgs, device: &Device) -> Result<()> {
    // Every setting is checked before anything is printed.
    args.sampling.config(50, Vec::new()).validate()?;
    let _autocast = args.model.autocast()?;
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let prompt_ids = tokenizer.encode(&args.prompt)?;
    check_prompt(&loaded.model, &prompt_ids)?;
    let stops = if args.no_stop {
        Vec::new()
    } else {
        tokenizer.eos_ids().to_vec()
    };
    let config = args.sampling.config(50, stops);
    let mut out = std::io::stdout().lock();
    let mut stream = TextStream::new(&tokenizer);
    if !args.json {
        emit(&mut out, &args.prompt);
    }
    let generated = generate(&loaded.model, &prompt_ids, &config, device, |id| {
        if !args.json {
            let text = stream.push(id);
            emit(&mut out, &text);
        }
    })?;
    if args.json {
        let text = tokenizer.decode(&generated)?;
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "text": text,
            })
        )?;
    } else {
        let rest = stream.finish();
        emit(&mut out, &format!("{rest}\n"));
    }
    Ok(())
}
