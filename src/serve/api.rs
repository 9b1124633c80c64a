//! The OpenAI chat-completions wire format: requests as they arrive (with the `steering`
//! extension), errors shaped as OpenAI's, and the JSON of replies and stream chunks.

use super::engine::{Finish, Reading, TokenLogprob};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// `POST /v1/chat/completions` as far as this server reads it; other fields are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub n: Option<usize>,
    /// Extension: steer this request's reply with one of the served persona vectors.
    pub steering: Option<SteeringRequest>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or an array of parts of which the text parts are read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    _ => Err(ApiError::invalid(
                        format!(
                            "content parts of type {:?} are not supported (only text)",
                            p.kind
                        ),
                        "messages",
                    )),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn strings(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `"steering": {"vector": "evil", "layer": 20 | "all", "coef": 1.5, "positions": "response"}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringRequest {
    /// Trait name of a served `--vector`.
    pub vector: String,
    /// A hidden-state index (1..=layers), or `"all"` for the layer-incremental vectors at every
    /// block; default: the vector's monitoring layer.
    pub layer: Option<SteerLayer>,
    pub coef: f32,
    /// `all`, `prompt` or `response` (default).
    pub positions: Option<crate::steering::Positions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SteerLayer {
    Index(usize),
    Name(String),
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()).filter(|p: &String| !p.is_empty()),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Parses a request body, naming the field at fault in the error.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else {
            format!("invalid request: {inner} (at {path})")
        };
        let param = match path.as_str() {
            "." | "?" => String::new(),
            _ => path,
        };
        ApiError::invalid(message, param)
    })
}

/// `{"<trait>": {"layer", "projection", "threshold", "alert"}}`
pub fn persona_json(readings: &[Reading]) -> Value {
    Value::Object(
        readings
            .iter()
            .map(|r| {
                (
                    r.trait_name.clone(),
                    json!({
                        "layer": r.layer,
                        "projection": r.projection,
                        "threshold": r.threshold,
                        "alert": r.alert,
                    }),
                )
            })
            .collect(),
    )
}

/// Adds the persona readings to a reply or its first chunk, if the server monitors any trait.
pub fn add_persona(v: &mut Value, persona: &[Reading]) {
    if !persona.is_empty() {
        v["persona"] = persona_json(persona);
    }
}

pub fn logprobs_json(entries: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": e.top.iter().map(|(t, l, b)| json!({
                    "token": t, "logprob": l, "bytes": b,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content })
}

pub fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Identity of one completion, shared by its reply or all of its chunks.
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub logprobs: bool,
}

/// A whole reply as the engine reported it, for a non-streamed completion.
pub struct Reply {
    pub content: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Completion {
    /// A `chat.completion` with one choice, and the prompt's persona readings if any.
    pub fn reply(&self, reply: &Reply, persona: &[Reading]) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "logprobs": self.logprobs.then(|| logprobs_json(&reply.logprobs)),
                "finish_reason": reply.finish.as_str(),
            }],
            "usage": usage_json(reply.prompt_tokens, reply.completion_tokens),
        });
        add_persona(&mut v, persona);
        v
    }

    /// A `chat.completion.chunk` with one choice.
    pub fn chunk(
        &self,
        delta: Value,
        logprobs: Option<&[TokenLogprob]>,
        finish: Option<Finish>,
    ) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": logprobs.filter(|_| self.logprobs).map(logprobs_json),
                "finish_reason": finish.map(Finish::as_str),
            }],
        })
    }

    /// The last chunk when `stream_options.include_usage` asks for it: no choices, only usage.
    pub fn usage_chunk(&self, prompt_tokens: usize, completion_tokens: usize) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(prompt_tokens, completion_tokens),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse(br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"), "{}", e.message);
        let e = parse(b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn content_parts_and_stop_forms_are_read() {
        let r = parse(
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "stop": "x", "steering": {"vector": "evil", "layer": "all", "coef": 2}}"#,
        )
        .unwrap();
        assert_eq!(
            r.messages[0].content.as_ref().unwrap().text().unwrap(),
            "ab"
        );
        assert_eq!(r.stop.unwrap().strings(), vec!["x"]);
        assert!(matches!(r.steering.unwrap().layer, Some(SteerLayer::Name(n)) if n == "all"));
    }
}
