//! `ember chat`: a conversation with a model, in a terminal or one message at a time.

use std::io::{BufRead, Write};

use anyhow::Result;
use burn::prelude::*;
use ember_model::{check_prompt, generate};
use ember_tokenizer::{ChatMessage, TextStream};

use crate::args::model::ModelArgs;
use crate::args::sampling::SamplingArgs;

/// Options of `ember chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message before the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// One turn without a terminal: answer this message and exit.
    #[arg(long)]
    pub message: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// With --message: print `{"prompt_ids", "generated_ids", "text"}`.
    #[arg(long, requires = "message")]
    pub json: bool,
}

/// `ember chat`: a conversation rendered with the model's chat template (the book's
/// Alpaca prompt for GPT-2 models without one); each answer streams until an
/// end-of-text token, the token limit or the end of the context. Interactive: an empty
/// line, `exit` or the end of input quits. With `--message`: one turn.
pub fn run(args: &ChatArgs, device: &Device) -> Result<()> {
    args.sampling.config(256, Vec::new()).validate()?;
    let _autocast = args.model.autocast()?;
    let (loaded, tokenizer) = args.model.load_with_tokenizer(device)?;
    let config = args.sampling.config(256, tokenizer.eos_ids().to_vec());
    let mut messages: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.clone()))
        .collect();
    let mut out = std::io::stdout().lock();
    let answer = |messages: &[ChatMessage],
                  stream: bool,
                  out: &mut dyn Write|
     -> Result<(Vec<u32>, Vec<u32>, String)> {
        let prompt = ember_data::conversation_prompt(&tokenizer, messages)?;
        let ids = tokenizer.encode_rendered(&prompt)?;
        check_prompt(&loaded.model, &ids)?;
        let mut utf8 = TextStream::new(&tokenizer);
        let generated = generate(&loaded.model, &ids, &config, device, |id| {
            if stream && !tokenizer.eos_ids().contains(&id) {
                let text = utf8.push(id);
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        })?;
        if stream {
            let rest = utf8.finish();
            writeln!(out, "{rest}")?;
        }
        let spoken: Vec<u32> = generated
            .iter()
            .copied()
            .filter(|id| !tokenizer.eos_ids().contains(id))
            .collect();
        Ok((ids, generated, tokenizer.decode(&spoken)?))
    };
    if let Some(message) = &args.message {
        messages.push(ChatMessage::new("user", message.clone()));
        let (prompt_ids, generated_ids, text) = answer(&messages, !args.json, &mut out)?;
        if args.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "prompt_ids": prompt_ids,
                    "generated_ids": generated_ids,
                    "text": text,
                })
            )?;
        }
        return Ok(());
    }
    let stdin = std::io::stdin();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(());
        }
        let message = line.trim();
        if message.is_empty() || message == "exit" || message == "quit" {
            return Ok(());
        }
        messages.push(ChatMessage::new("user", message));
        let (_, _, text) = answer(&messages, true, &mut out)?;
        messages.push(ChatMessage::new("assistant", text));
    }
}
