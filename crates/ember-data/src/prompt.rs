//! How a model is asked something: its chat template when it has one (Llama 3, Qwen3
//! and most instruction-tuned models), else the book's Alpaca format (chapter 7's
//! GPT-2 models). Fine-tuning, `ember chat` and the server all prompt through here, so
//! a model is asked the way it was trained.

use ember_tokenizer::{ChatMessage, ModelTokenizer, TokenizerError};

use crate::instruction::{InstructionEntry, format_input, format_prompt};

/// The user message of an instruction entry: the instruction, and its input after a
/// blank line when there is one.
pub fn instruction_message(entry: &InstructionEntry) -> ChatMessage {
    let content = if entry.input.is_empty() {
        entry.instruction.clone()
    } else {
        format!("{}\n\n{}", entry.instruction, entry.input)
    };
    ChatMessage::new("user", content)
}

/// The text a model continues to answer `entry`: the chat template with the generation
/// prompt, or the Alpaca prompt with its response header.
pub fn instruction_prompt(
    tokenizer: &ModelTokenizer,
    entry: &InstructionEntry,
) -> Result<String, TokenizerError> {
    match tokenizer.render_chat(&[instruction_message(entry)], true) {
        Some(rendered) => rendered,
        None => Ok(format_prompt(entry)),
    }
}

/// The text of a whole conversation, ending where the assistant's next answer begins.
/// Without a chat template, the book's format: a system message goes before the
/// instruction, earlier turns become instruction/response pairs.
pub fn conversation_prompt(
    tokenizer: &ModelTokenizer,
    messages: &[ChatMessage],
) -> Result<String, TokenizerError> {
    if let Some(rendered) = tokenizer.render_chat(messages, true) {
        return rendered;
    }
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let mut text = String::new();
    let mut pending: Option<String> = None;
    for message in messages.iter().filter(|m| m.role != "system") {
        match message.role.as_str() {
            "assistant" => {
                if let Some(instruction) = pending.take() {
                    text.push_str(&format_prompt(&InstructionEntry::question(instruction)));
                }
                text.push_str(&message.content);
                text.push_str("\n\n");
            }
            _ => {
                let instruction = match system.as_slice() {
                    [] => message.content.clone(),
                    parts => format!("{}\n\n{}", parts.join("\n"), message.content),
                };
                pending = Some(instruction);
            }
        }
    }
    let last = pending.unwrap_or_default();
    let entry = InstructionEntry::question(last);
    text.push_str(&format_input(&entry));
    text.push_str(crate::RESPONSE_HEADER);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_models_take_the_alpaca_prompt() {
        let tokenizer = ModelTokenizer::gpt2().unwrap();
        let entry = InstructionEntry::question("Name a colour.");
        assert_eq!(
            instruction_prompt(&tokenizer, &entry).unwrap(),
            format_prompt(&entry)
        );
        let said = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Name a colour."),
        ];
        assert_eq!(
            conversation_prompt(&tokenizer, &said).unwrap(),
            format_prompt(&InstructionEntry::question("Be brief.\n\nName a colour."))
        );
    }

    #[test]
    fn chat_models_take_their_template() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-qwen3");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let tokenizer = ModelTokenizer::from_dir(&dir, &config, false).unwrap();
        let entry = InstructionEntry {
            instruction: "Translate.".into(),
            input: "Hallo".into(),
            output: String::new(),
            model_response: None,
        };
        assert_eq!(
            instruction_prompt(&tokenizer, &entry).unwrap(),
            "<|im_start|>user\nTranslate.\n\nHallo<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
