//! What a model directory says about its text: the tokenizer (`tokenizer.json`), the
//! tokens that begin and end a text (`config.json`, `generation_config.json`,
//! `tokenizer_config.json`; the end may be several tokens) and the chat template
//! (`tokenizer_config.json`).

use std::path::Path;

use serde_json::Value;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::{END_OF_TEXT, END_OF_TEXT_ID, HubTokenizer, TokenizerError};

/// A model's tokenizer with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct ModelTokenizer {
    tokenizer: HubTokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    end_of_turn: Option<u32>,
    chat_template: Option<ChatTemplate>,
    tokenizer_config: Option<Value>,
    generation_config: Option<Value>,
}

/// The content of a token given as a string or as `{"content": ...}`.
fn token_content(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Token ids given as a number or a list of numbers.
fn ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = crate::bounded::read_bounded(path, crate::bounded::MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TokenizerError::parse(path.display().to_string(), e.to_string()))
}

impl ModelTokenizer {
    /// GPT-2's embedded tokenizer: `<|endoftext|>` ends a text, no chat template (the
    /// book's models take the Alpaca prompt).
    pub fn gpt2() -> Result<Self, TokenizerError> {
        Ok(Self {
            tokenizer: HubTokenizer::gpt2()?,
            bos: None,
            eos: vec![END_OF_TEXT_ID],
            end_of_turn: Some(END_OF_TEXT_ID),
            chat_template: None,
            tokenizer_config: None,
            generation_config: None,
        })
    }

    /// The tokenizer of the model in `dir`, whose `config.json` holds `config`.
    /// Without a `tokenizer.json`, a GPT-2 model (`gpt2` true) takes GPT-2's own; any
    /// other model cannot be used.
    pub fn from_dir(dir: &Path, config: &Value, gpt2: bool) -> Result<Self, TokenizerError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.exists() {
            HubTokenizer::from_file(&tokenizer_path)?
        } else if gpt2 {
            HubTokenizer::gpt2()?
        } else {
            return Err(TokenizerError::io(
                &tokenizer_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the model's tokenizer is missing (download it with the weights)",
                ),
            ));
        };
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_json(&dir.join("generation_config.json"))?;
        Self::from_parts(tokenizer, tokenizer_config, generation_config, config, gpt2)
    }

    /// The tokenizer of a model from its parts, as a model directory holds them:
    /// `tokenizer.json`'s tokenizer, `tokenizer_config.json` (special tokens' names, the
    /// chat template), `generation_config.json` (end ids), and `config.json`'s values.
    pub fn from_parts(
        tokenizer: HubTokenizer,
        tokenizer_config: Option<Value>,
        generation_config: Option<Value>,
        config: &Value,
        gpt2: bool,
    ) -> Result<Self, TokenizerError> {
        let named = |key: &str| token_content(tokenizer_config.as_ref().and_then(|c| c.get(key)));
        let id_of =
            |token: &Option<String>| token.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let (bos_token, eos_token) = (named("bos_token"), named("eos_token"));
        let mut eos = ids(generation_config
            .as_ref()
            .and_then(|c| c.get("eos_token_id")));
        eos.extend(ids(config.get("eos_token_id")));
        eos.extend(id_of(&eos_token));
        if gpt2 && eos.is_empty() {
            eos.push(tokenizer.token_to_id(END_OF_TEXT).unwrap_or(END_OF_TEXT_ID));
        }
        let mut seen = std::collections::BTreeSet::new();
        eos.retain(|id| seen.insert(*id));
        let bos = id_of(&bos_token)
            .or_else(|| {
                ids(generation_config
                    .as_ref()
                    .and_then(|c| c.get("bos_token_id")))
                .first()
                .copied()
            })
            .or_else(|| ids(config.get("bos_token_id")).first().copied());
        let chat_template = match tokenizer_config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(Value::as_str)
        {
            Some(source) => Some(ChatTemplate::new(
                source,
                bos_token.clone().unwrap_or_default(),
                eos_token.clone().unwrap_or_default(),
            )?),
            None => None,
        };
        let end_of_turn = id_of(&eos_token);
        Ok(Self {
            tokenizer,
            bos,
            eos,
            end_of_turn,
            chat_template,
            tokenizer_config,
            generation_config,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &HubTokenizer {
        &self.tokenizer
    }

    /// `text` as the tokenizer encodes it by default (transformers' `tokenizer(text)`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer.encode_default(text)
    }

    /// A rendered chat template: its special tokens recognized, none added.
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer.encode_plain(text)
    }

    /// The text of `ids` (incomplete characters replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.tokenizer.decode_bytes(ids)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes of `ids`, for streaming (a character may continue in the next token).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        self.tokenizer.decode_bytes(ids)
    }

    /// Every token that ends generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The token that ends an answer, which fine-tuning teaches the model to emit: the
    /// tokenizer's own `eos_token` (Llama 3's `<|eot_id|>`, Qwen's `<|im_end|>`), else
    /// the first end-of-text token.
    pub fn end_of_turn_id(&self) -> u32 {
        self.end_of_turn
            .unwrap_or_else(|| self.eos.first().copied().unwrap_or(END_OF_TEXT_ID))
    }

    /// The beginning-of-text token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders `messages` with the chat template (`None` without one; a
    /// [`TokenizerError::MissingFeature`] when the model has one and the crate was built
    /// without its `chat-template` feature).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Option<Result<String, TokenizerError>> {
        self.chat_template
            .as_ref()
            .map(|t| t.render(messages, add_generation_prompt))
    }

    /// The files that carry this tokenizer beside a saved model (`tokenizer.json`,
    /// `tokenizer_config.json`, `generation_config.json`), as `(name, content)`, so that
    /// Ember and transformers load the model with the same text handling.
    pub fn files(&self) -> Result<Vec<(&'static str, String)>, TokenizerError> {
        let mut tokenizer_config = self.tokenizer_config.clone().unwrap_or_else(|| {
            serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 1024,
            })
        });
        if self.tokenizer_config.is_none() {
            let name = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
            tokenizer_config["bos_token"] = name(self.bos.or(self.eos.first().copied())).into();
            tokenizer_config["eos_token"] = name(self.eos.first().copied()).into();
            tokenizer_config["unk_token"] = name(self.eos.first().copied()).into();
        }
        let generation_config = self.generation_config.clone().unwrap_or_else(|| {
            serde_json::json!({
                "bos_token_id": self.bos.or(self.eos.first().copied()),
                "eos_token_id": match self.eos.as_slice() {
                    [one] => serde_json::json!(one),
                    many => serde_json::json!(many),
                },
            })
        });
        let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON values serialise");
        Ok(vec![
            ("tokenizer.json", self.tokenizer.to_json()?),
            ("tokenizer_config.json", pretty(&tokenizer_config)),
            ("generation_config.json", pretty(&generation_config)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
    }

    fn config(dir: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    }

    /// Prompt ids as transformers encodes them (Llama 3 adds `<|begin_of_text|>`), the
    /// end-of-text tokens from every file, the chat prompt's ids.
    #[test]
    fn reads_the_reference_models() {
        for (name, eos) in [("tiny-llama3", vec![1u32, 4]), ("tiny-qwen3", vec![2])] {
            let dir = fixture(name);
            let tok = ModelTokenizer::from_dir(&dir, &config(&dir), false).unwrap();
            let cases: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap())
                    .unwrap();
            for prompt in cases["prompts"].as_array().unwrap() {
                let want: Vec<u32> = serde_json::from_value(prompt["ids"].clone()).unwrap();
                assert_eq!(
                    tok.encode(prompt["text"].as_str().unwrap()).unwrap(),
                    want,
                    "{name}"
                );
            }
            let mut got = tok.eos_ids().to_vec();
            got.sort_unstable();
            assert_eq!(got, eos, "{name}");
            let messages: Vec<ChatMessage> =
                serde_json::from_value(cases["chat"]["messages"].clone()).unwrap();
            let rendered = tok.render_chat(&messages, true).expect("a chat template");
            #[cfg(feature = "chat-template")]
            {
                let want: Vec<u32> = serde_json::from_value(cases["chat"]["ids"].clone()).unwrap();
                assert_eq!(
                    tok.encode_rendered(&rendered.unwrap()).unwrap(),
                    want,
                    "{name}"
                );
            }
            // Without the feature the template is still there: rendering names the
            // missing feature instead of prompting the model as if it had none.
            #[cfg(not(feature = "chat-template"))]
            assert!(
                matches!(rendered, Err(TokenizerError::MissingFeature { .. })),
                "{name}: {rendered:?}"
            );
        }
        let err = ModelTokenizer::from_dir(Path::new("/nonexistent"), &Value::Null, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
    }

    #[test]
    fn gpt2_models_without_a_tokenizer_take_gpt2s() {
        let dir = fixture("tiny-gpt2-a");
        let tok = ModelTokenizer::from_dir(&dir, &config(&dir), true).unwrap();
        assert_eq!(tok.eos_ids(), [END_OF_TEXT_ID]);
        assert_eq!(
            tok.encode("Every effort moves you").unwrap(),
            [6109, 3626, 6100, 345]
        );
        assert!(tok.chat_template().is_none());
        let files = tok.files().unwrap();
        assert_eq!(files.len(), 3);
        assert!(
            files[1].1.contains("\"eos_token\": \"<|endoftext|>\""),
            "{}",
            files[1].1
        );
    }
}
