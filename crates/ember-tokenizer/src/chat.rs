//! Chat templates: a model's `tokenizer_config.json` `chat_template`, the Jinja
//! template transformers renders a conversation with, rendered with minijinja (the
//! Jinja engine of the Rust LLM ecosystem), Python's string methods included, when the
//! `chat-template` feature (on by default) is built in.
//!
//! Without the feature a template is still read and kept, so a model that has one is
//! never prompted as if it had none, but rendering it is a
//! [`TokenizerError::MissingFeature`].

use serde::{Deserialize, Serialize};

use crate::TokenizerError;

#[cfg(feature = "chat-template")]
mod jinja;

/// Without the `chat-template` feature: a template is kept unchecked, and rendering it
/// is an error naming the feature.
#[cfg(not(feature = "chat-template"))]
mod jinja {
    use super::{ChatMessage, ChatTemplate};
    use crate::TokenizerError;

    pub(super) fn environment(_template: &ChatTemplate) -> Result<(), TokenizerError> {
        Ok(())
    }

    pub(super) fn render(
        _template: &ChatTemplate,
        _messages: &[ChatMessage],
        _add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        Err(TokenizerError::MissingFeature {
            feature: "chat-template",
            what: "rendering a chat template",
        })
    }
}

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
    /// It is compiled once here, so a template that does not parse is refused early
    /// (without the `chat-template` feature it is only kept).
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
        jinja::environment(&template)?;
        Ok(template)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value of `bos_token` in the template.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The value of `eos_token` in the template.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The conversation as the model reads it; with `add_generation_prompt`, followed by
    /// what opens the assistant's answer. Without the `chat-template` feature, a
    /// [`TokenizerError::MissingFeature`].
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        jinja::render(self, messages, add_generation_prompt)
    }
}

/// The rendering tests are jinja.rs's; these are of a build without it.
#[cfg(all(test, not(feature = "chat-template")))]
mod tests {
    use super::*;

    /// Without the `chat-template` feature a template is kept, and rendering it is an
    /// error naming the feature (never a prompt without the template).
    #[test]
    fn rendering_without_the_feature_is_an_error_naming_it() {
        let template = ChatTemplate::new("{{ messages[0].content }}", "", "").unwrap();
        assert_eq!(template.source(), "{{ messages[0].content }}");
        let err = template
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err();
        assert!(
            matches!(
                err,
                TokenizerError::MissingFeature {
                    feature: "chat-template",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("`chat-template`"), "{err}");
    }
}
