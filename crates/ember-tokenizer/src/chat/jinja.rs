//! Chat templates rendered with minijinja, Python's string methods and Hub templates'
//! `raise_exception` included (the `chat-template` feature).

use minijinja::{Environment, ErrorKind, Value, context};

use super::{ChatMessage, ChatTemplate};
use crate::TokenizerError;

/// An environment holding `template` as `chat`: an error if it does not parse.
pub(super) fn environment(template: &ChatTemplate) -> Result<Environment<'_>, TokenizerError> {
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
    env.add_template("chat", template.source())
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
    Ok(env)
}

/// Template steps a render may take: a base, and more for each message. The Hub's chat
/// templates take tens to hundreds per message; a template that loops much longer
/// (`range(100000)` inside another) is refused instead of holding the thread.
fn fuel(messages: usize) -> u64 {
    200_000 + 20_000 * messages as u64
}

/// [`ChatTemplate::render`].
pub(super) fn render(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String, TokenizerError> {
    let mut env = environment(template)?;
    let fuel = fuel(messages.len());
    env.set_fuel(Some(fuel));
    env.get_template("chat")
        .map_err(|e| TokenizerError::Template(e.to_string()))?
        .render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &template.bos_token,
            eos_token => &template.eos_token,
        })
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => TokenizerError::Template(format!(
                "the chat template did not finish within {fuel} steps for {} messages (a loop that runs too long?)",
                messages.len()
            )),
            _ => TokenizerError::Template(e.to_string()),
        })
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

    /// A template that loops ten billion times is refused after its step budget, in
    /// well under a second, naming the limit.
    #[test]
    fn a_template_that_runs_too_long_is_refused() {
        let endless = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = endless
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish within 220000 steps"), "{err}");
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{:?}",
            started.elapsed()
        );
    }
}
