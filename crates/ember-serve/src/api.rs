//! The OpenAI API's request and response bodies, as far as the server speaks it, and
//! its error object.
//!
//! Requests are deserialized ([`parse`] turns serde's complaint into a 400 that names
//! the problem); responses are serialized, with the field names OpenAI's clients read.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::FinishReason;

/// A failed request, answered as OpenAI answers: a status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error` or `server_error`.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`, naming the field at fault if there is one.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// The same error with a machine-readable `code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The same error answered with `status`.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// A 401: the API key is missing or wrong.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// A 404: the request names a model this server does not have.
    pub fn unknown_model(requested: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{}` does not exist; this server has `{served}`",
                clip(requested)
            ),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        }
    }

    /// A 503 `server_error`: the server cannot answer now (shutting down, generation failed).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// A 500 `server_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The error object, also sent as a stream's last event.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.map(str::to_string),
                code: self.code.map(str::to_string),
            },
        }
    }
}

/// The longest piece of a request (in characters) that an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `text` as an error message quotes it: at most [`MAX_QUOTED_CHARS`] characters, the
/// rest replaced by an ellipsis (a client's megabyte of `model` is not sent back).
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

/// An error response's body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, or null.
    pub param: Option<String>,
    /// A machine-readable code, or null.
    pub code: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(untagged)]
pub enum Stop {
    /// No stop string.
    #[default]
    None,
    /// One string.
    One(String),
    /// A list of strings.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings, as a list.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Stop::None => Vec::new(),
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share (`top_k` is an extension, as in vLLM).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Sampling {
    /// The most tokens to generate.
    pub max_tokens: Option<usize>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// Sampling temperature in [0, 2] (default 1; 0 is greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the most likely tokens up to this probability, in (0, 1].
    pub top_p: Option<f64>,
    /// Keep only the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Strings that end the reply (not included in it).
    #[serde(default)]
    pub stop: Stop,
    /// The sampler's seed (default: a different one per request).
    pub seed: Option<u64>,
    /// Number of choices: only 1 is supported.
    pub n: Option<usize>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Options of a streamed answer.
    #[serde(default)]
    pub stream_options: StreamOptions,
}

/// The most alternatives per token: OpenAI's limits for its two APIs.
pub const MAX_TOP_LOGPROBS_CHAT: usize = 20;
/// See [`MAX_TOP_LOGPROBS_CHAT`].
pub const MAX_LOGPROBS_COMPLETION: usize = 5;

/// `logprobs` and `top_logprobs`, which mean different things in the two APIs.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct LogprobFields {
    /// Chat: `true` to return the tokens' log probabilities. Completions: how many
    /// alternatives to return per token (0 to 5), the tokens' own always.
    pub logprobs: Option<Value>,
    /// Chat: how many alternatives per token (0 to 20); needs `logprobs: true`.
    pub top_logprobs: Option<Value>,
}

impl LogprobFields {
    /// For a chat: `None` for no log probabilities, else the alternatives per token.
    pub fn for_chat(&self) -> Result<Option<usize>, ApiError> {
        let wanted = match &self.logprobs {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    Some("logprobs"),
                    "logprobs must be true or false in a chat completion",
                ));
            }
        };
        let top = count("top_logprobs", &self.top_logprobs, MAX_TOP_LOGPROBS_CHAT)?;
        match (wanted, top) {
            (false, Some(n)) if n > 0 => Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            )),
            (false, _) => Ok(None),
            (true, top) => Ok(Some(top.unwrap_or(0))),
        }
    }

    /// For a completion: `None` for no log probabilities, else the alternatives per
    /// token.
    pub fn for_completion(&self) -> Result<Option<usize>, ApiError> {
        if !matches!(self.top_logprobs, None | Some(Value::Null)) {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs is a chat completions field; completions take logprobs: N alternatives",
            ));
        }
        count("logprobs", &self.logprobs, MAX_LOGPROBS_COMPLETION)
    }
}

/// An optional whole number from 0 to `most`, else a 400 naming `field`.
fn count(
    field: &'static str,
    value: &Option<Value>,
    most: usize,
) -> Result<Option<usize>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .filter(|&n| n <= most)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    Some(field),
                    format!("{field} must be a whole number from 0 to {most}"),
                )
            }),
    }
}

/// Fields of OpenAI's API that this server does not implement. None is ignored: a
/// value that would change the answer is refused with a 400 naming the field
/// ([`Unsupported::check`]); the value that asks for what happens anyway
/// (`presence_penalty: 0`, `response_format: {"type": "text"}`, ...) and null
/// are accepted, since some clients send them by default. Other fields this server
/// does not know (`user`, `metadata`, `store`, ...) change nothing and are accepted.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Unsupported {
    /// Function calling: refused.
    pub tools: Option<Value>,
    /// Accepted only as `"none"`.
    pub tool_choice: Option<Value>,
    /// The older function calling: refused.
    pub functions: Option<Value>,
    /// Accepted only as `"none"`.
    pub function_call: Option<Value>,
    /// Accepted only as `{"type": "text"}` (no JSON mode, no structured outputs).
    pub response_format: Option<Value>,
    /// Accepted only as `{}`.
    pub logit_bias: Option<Value>,
    /// Not implemented: accepted only as 0.
    pub presence_penalty: Option<Value>,
    /// Not implemented: accepted only as 0.
    pub frequency_penalty: Option<Value>,
    /// (Completions) the prompt is not echoed: accepted only as `false`.
    pub echo: Option<Value>,
    /// (Completions) accepted only as 1.
    pub best_of: Option<Value>,
    /// (Completions) accepted only as `""`.
    pub suffix: Option<Value>,
}

impl Unsupported {
    /// The first field given a value this server cannot honour, as a 400 naming it.
    pub fn check(&self) -> Result<(), ApiError> {
        // A field, its value, whether the value is harmless, why it is refused.
        type Check<'a> = (&'static str, &'a Option<Value>, fn(&Value) -> bool, &'a str);
        let checks: [Check; 11] = [
            (
                "tools",
                &self.tools,
                |_| false,
                "tools (function calling) are not supported",
            ),
            (
                "tool_choice",
                &self.tool_choice,
                |v| v == "none",
                "tool_choice is not supported (tools are not)",
            ),
            (
                "functions",
                &self.functions,
                |_| false,
                "functions (function calling) are not supported",
            ),
            (
                "function_call",
                &self.function_call,
                |v| v == "none",
                "function_call is not supported (functions are not)",
            ),
            (
                "response_format",
                &self.response_format,
                |v| {
                    v.as_object()
                        .is_some_and(|o| o.len() == 1 && o.get("type").is_some_and(|t| t == "text"))
                },
                "response_format other than {\"type\": \"text\"} is not supported (no JSON mode or structured outputs)",
            ),
            (
                "logit_bias",
                &self.logit_bias,
                |v| v.as_object().is_some_and(|o| o.is_empty()),
                "logit_bias is not supported",
            ),
            (
                "presence_penalty",
                &self.presence_penalty,
                |v| v.as_f64() == Some(0.0),
                "presence_penalty is not supported (only 0)",
            ),
            (
                "frequency_penalty",
                &self.frequency_penalty,
                |v| v.as_f64() == Some(0.0),
                "frequency_penalty is not supported (only 0)",
            ),
            ("echo", &self.echo, |v| v == false, "echo is not supported"),
            (
                "best_of",
                &self.best_of,
                |v| v.as_f64() == Some(1.0),
                "best_of is not supported (only 1)",
            ),
            (
                "suffix",
                &self.suffix,
                |v| v == "",
                "suffix is not supported",
            ),
        ];
        for (field, value, harmless, message) in checks {
            if let Some(value) = value
                && !harmless(value)
            {
                return Err(ApiError::invalid(Some(field), message));
            }
        }
        Ok(())
    }
}

/// A message's `content`: a string, or a list of parts of which the text ones count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// A list of parts.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// The part's type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

impl Content {
    /// The text; parts other than text are refused.
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            Content::Text(s) => Ok(s.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::invalid(
                        Some("messages"),
                        format!(
                            "content parts of type \"{}\" are not supported (text only)",
                            clip(kind)
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| texts.concat()),
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Absent or null for an assistant message that only called tools.
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model's id, which must be the served one.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// How to generate.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Log probabilities to return.
    #[serde(flatten)]
    pub logprobs: LogprobFields,
    /// Fields refused unless harmless.
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

/// `POST /v1/completions`: one prompt (a list of one string is accepted too).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The model's id, which must be the served one.
    pub model: String,
    /// The text to continue.
    pub prompt: Prompt,
    /// How to generate.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Log probabilities to return.
    #[serde(flatten)]
    pub logprobs: LogprobFields,
    /// Fields refused unless harmless.
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

/// A completion's `prompt`: a string, or a list (of exactly one string).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One string.
    One(String),
    /// A list of strings.
    Many(Vec<String>),
}

impl Prompt {
    /// The one prompt; a list of several is refused.
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            Prompt::One(s) => Ok(s.clone()),
            Prompt::Many(v) if v.len() == 1 => Ok(v[0].clone()),
            Prompt::Many(_) => Err(ApiError::invalid(
                Some("prompt"),
                "one prompt per request (a list of exactly one string is accepted)",
            )),
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt (after the chat template).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// How the prompt's tokens were read.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt's tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Tokens whose keys and values came from the prefix cache (an earlier prompt that
    /// began the same way) rather than being read again.
    pub cached_tokens: usize,
}

impl Usage {
    /// The counts of a request; `total_tokens` is their sum.
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// The served model's id.
    pub model: String,
    /// Requests queued and not yet started.
    pub waiting: usize,
}

/// `GET /v1/models`: `{"object": "list", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models (this server has one).
    pub data: Vec<ModelCard>,
}

/// One model of [`ModelList`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The id clients send as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// When the server started (Unix seconds).
    pub created: u64,
    /// Always `ember`.
    pub owned_by: String,
}

/// The body of a whole (not streamed) `POST /v1/chat/completions` answer
/// (`object`: `chat.completion`), and of each streamed chunk (`chat.completion.chunk`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion<C> {
    /// The request's id (`chatcmpl-...`), the same in every chunk of a stream.
    pub id: String,
    /// `chat.completion` or `chat.completion.chunk`.
    pub object: &'static str,
    /// When the answer began (Unix seconds).
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The one choice ([`ChatChoice`] or [`ChatChunkChoice`]; none in a stream's usage chunk).
    pub choices: Vec<C>,
    /// Token counts: always in a whole answer; in a stream, only in its usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The choice of a whole chat answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    /// Always 0.
    pub index: usize,
    /// The reply.
    pub message: AssistantMessage,
    /// The reply's tokens' log probabilities, when asked for; else null.
    pub logprobs: Option<ChatLogprobs>,
    /// Why the reply ended.
    pub finish_reason: FinishReason,
}

/// The assistant's reply in a [`ChatChoice`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// The choice of a streamed chat chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunkChoice {
    /// Always 0.
    pub index: usize,
    /// What this chunk adds.
    pub delta: Delta,
    /// The log probabilities of this chunk's tokens, when asked for; else null.
    pub logprobs: Option<ChatLogprobs>,
    /// Null until the last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// A chat reply's log probabilities (`choices[0].logprobs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatLogprobs {
    /// One entry per token of the text.
    pub content: Vec<ChatTokenLogprob>,
    /// Always null.
    pub refusal: Option<String>,
}

/// One token of a chat reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    /// Its text, or `bytes:\xNN..` when its bytes are not UTF-8 alone.
    pub token: String,
    /// ln p(token), under the model's own distribution (before temperature, top-k and
    /// top-p).
    pub logprob: f64,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at its position, most likely first (`top_logprobs` of
    /// them).
    pub top_logprobs: Vec<TopLogprob>,
}

/// An alternative at a position of a chat reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    /// Its text, as [`ChatTokenLogprob::token`].
    pub token: String,
    /// ln p(token).
    pub logprob: f64,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// A completion's log probabilities (the legacy API's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    /// The tokens' texts.
    pub tokens: Vec<String>,
    /// ln p(token) of each.
    pub token_logprobs: Vec<f64>,
    /// The `logprobs` most likely tokens at each position, text to log probability;
    /// null when `logprobs` is 0.
    pub top_logprobs: Option<Vec<serde_json::Map<String, Value>>>,
    /// Characters of the completion before each token.
    pub text_offset: Vec<usize>,
}

/// A streamed chat chunk's addition: the role (first chunk), some text, or nothing
/// (the last chunk); absent fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The next piece of text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The body of a `POST /v1/completions` answer, whole or one streamed chunk (`object`
/// is `text_completion` in both).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextCompletion {
    /// The request's id (`cmpl-...`).
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// When the answer began (Unix seconds).
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The one choice (none in a stream's usage chunk).
    pub choices: Vec<TextChoice>,
    /// Token counts: always in a whole answer; in a stream, only in its usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The choice of a text completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextChoice {
    /// Always 0.
    pub index: usize,
    /// The text (a piece of it, in a stream).
    pub text: String,
    /// Its tokens' log probabilities, when asked for; else null.
    pub logprobs: Option<CompletionLogprobs>,
    /// Why the text ended; null in a stream until its last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// Parses a request body, turning serde's complaint into a 400 that names the problem.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            None,
            "the request has no body; send JSON",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "the body is not valid JSON"
            }
            serde_json::error::Category::Io => "the body could not be read",
            serde_json::error::Category::Data => "the request's fields are wrong",
        };
        ApiError::invalid(None, format!("{what}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_the_sdk_sends_them_and_errors_say_why() {
        let chat: ChatRequest = parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
                "max_tokens":5,"stop":"\n","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(
            chat.messages[0].content.as_ref().unwrap().text().unwrap(),
            "hi"
        );
        assert_eq!(chat.sampling.stop.strings(), ["\n"]);
        assert!(chat.sampling.stream && chat.sampling.stream_options.include_usage);
        let e = parse::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert!(
            e.message.starts_with("the body is not valid JSON"),
            "{}",
            e.message
        );
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":"hi"}"#).unwrap_err();
        assert!(
            e.message.starts_with("the request's fields are wrong"),
            "{}",
            e.message
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse::<CompletionRequest>(br#"{"model":"m","prompt":"x","max_tokens":"9"}"#)
            .unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }
}
