//! Chat templates: a model's `tokenizer_config.json` `chat_template`, the Jinja
//! template transformers renders a conversation with, rendered here with minijinja
//! (the Jinja engine of the Rust LLM ecosystem), Python's string methods included.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::TokenizerError;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template with the special tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template `source` (Jinja), with the values of `bos_token` and `eos_token`.
    /// It is compiled once here, so a template that does not parse is refused early.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, TokenizerError> {
        let template = Self {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        template.environment()?;
        Ok(template)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn environment(&self) -> Result<Environment<'_>, TokenizerError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Hub templates call this to refuse conversations they cannot render.
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        Ok(env)
    }

    /// The conversation as the model reads it; with `add_generation_prompt`, followed by
    /// what opens the assistant's answer.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChatML and Llama 3 templates of the reference fixtures give transformers'
    /// text; Python methods and `raise_exception` work as Hub templates use them.
    #[test]
    fn renders_like_transformers() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for (model, bos, eos) in [
            ("tiny-qwen3", "", "<|im_end|>"),
            ("tiny-llama3", "<|begin_of_text|>", "<|eot_id|>"),
        ] {
            let config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(root.join(model).join("tokenizer_config.json")).unwrap(),
            )
            .unwrap();
            let cases: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(root.join(model).join("cases.json")).unwrap(),
            )
            .unwrap();
            let template =
                ChatTemplate::new(config["chat_template"].as_str().unwrap(), bos, eos).unwrap();
            let messages: Vec<ChatMessage> =
                serde_json::from_value(cases["chat"]["messages"].clone()).unwrap();
            let text = template.render(&messages, true).unwrap();
            assert_eq!(text, cases["chat"]["text"].as_str().unwrap(), "{model}");
        }
        let python = ChatTemplate::new(
            "{% for m in messages %}{% if m.role not in ['user'] %}{{ raise_exception('only users') }}{% endif %}{{ m.content.strip().upper() }}|{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let said = [ChatMessage::new("user", "  hi ")];
        assert_eq!(python.render(&said, false).unwrap(), "HI|");
        let err = python
            .render(&[ChatMessage::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only users"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
