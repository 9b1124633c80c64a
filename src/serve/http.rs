//! The HTTP routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, and
//! OpenAI-shaped JSON errors for everything else (axum's own rejections are plain text).

use super::api::{self, ApiError, ChatRequest, Completion, SteerLayer};
use super::engine::{Event, Finish, Job, Stats, TokenLogprob};
use super::OnAlert;
use crate::generate::Sampling;
use crate::model::ModelConfig;
use crate::persona::vector::TraitDirection;
use crate::steering::{Positions, SteerLayers, Steering};
use crate::tokenizer::{ChatMessage, Tokenizer};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Requests larger than this are refused (413) before parsing.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// The header that names the traits whose projection crossed its threshold.
pub const ALERT_HEADER: &str = "x-persona-alert";

pub struct AppState {
    pub jobs: std::sync::mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
    pub tokenizer: Arc<Tokenizer>,
    /// Trait name → vector, for monitoring and for requests that steer.
    pub directions: BTreeMap<String, TraitDirection>,
    pub model_config: ModelConfig,
    pub served_name: String,
    pub default_max_tokens: usize,
    pub on_alert: OnAlert,
    pub created: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `{"status": "ok", "running", "peak_batch", "finished"}`: the engine's counters.
async fn health(State(app): State<Arc<AppState>>) -> Response {
    let s = &app.stats;
    api::json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "running": s.running.load(Ordering::Relaxed),
            "peak_batch": s.peak_batch.load(Ordering::Relaxed),
            "finished": s.finished.load(Ordering::Relaxed),
        }),
    )
}

async fn models(State(app): State<Arc<AppState>>) -> Response {
    api::json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{
            "id": app.served_name,
            "object": "model",
            "created": app.created,
            "owned_by": "persona-train",
        }]}),
    )
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::invalid(format!("no route {}", uri.path()), "")
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
        .into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::invalid(format!("{method} is not allowed on {}", uri.path()), "")
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .into_response()
}

async fn chat_completions(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat(app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// What a validated request becomes: the engine's job plus how to reply.
struct Prepared {
    job: Job,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

async fn chat(
    app: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::invalid(e.body_text(), "").with_status(e.status()))?;
    let request = api::parse(&body)?;
    let (tx, mut events) = unbounded_channel();
    let prepared = prepare(&app, request, tx)?;
    app.jobs
        .send(prepared.job)
        .map_err(|_| ApiError::internal("the engine has stopped"))?;
    let completion = Completion {
        id: completion_id(),
        created: now(),
        model: app.served_name.clone(),
        logprobs: prepared.logprobs,
    };
    let persona = match events.recv().await {
        Some(Event::Started { persona, .. }) => persona,
        Some(Event::Failed(why)) => return Err(ApiError::internal(why)),
        _ => return Err(ApiError::internal("the engine dropped the request")),
    };
    let alerts: Vec<&str> = persona
        .iter()
        .filter(|r| r.alert)
        .map(|r| r.trait_name.as_str())
        .collect();
    let alert_header = (!alerts.is_empty())
        .then(|| HeaderValue::from_str(&alerts.join(",")).ok())
        .flatten();

    let mut response = if prepared.stream {
        let mut first = completion.chunk(json!({"role": "assistant", "content": ""}), None, None);
        if !persona.is_empty() {
            first["persona"] = api::persona_json(&persona);
        }
        let stream = ChunkStream {
            events,
            queue: VecDeque::from([SseEvent::default().data(first.to_string())]),
            completion,
            include_usage: prepared.include_usage,
            finished: false,
        };
        Sse::new(stream).into_response()
    } else {
        let (text, logprobs, finish, prompt_tokens, completion_tokens) =
            collect(&mut events).await?;
        let reply = completion.reply(
            &text,
            &logprobs,
            finish,
            prompt_tokens,
            completion_tokens,
            &persona,
        );
        api::json_response(StatusCode::OK, &reply)
    };
    if let Some(h) = alert_header {
        response.headers_mut().insert(ALERT_HEADER, h);
    }
    Ok(response)
}

/// A non-streamed reply: every delta until `Done`.
async fn collect(
    events: &mut UnboundedReceiver<Event>,
) -> Result<(String, Vec<TokenLogprob>, Finish, usize, usize), ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    loop {
        match events.recv().await {
            Some(Event::Delta {
                text: t,
                logprobs: l,
            }) => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => return Ok((text, logprobs, finish, prompt_tokens, completion_tokens)),
            Some(Event::Failed(why)) => return Err(ApiError::internal(why)),
            Some(Event::Started { .. }) | None => {
                return Err(ApiError::internal("the engine dropped the request"))
            }
        }
    }
}

/// Checks a request against the model and the served vectors and turns it into a job.
fn prepare(
    app: &AppState,
    r: ChatRequest,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<Prepared, ApiError> {
    if let Some(model) = &r.model {
        if model != &app.served_name {
            return Err(ApiError::invalid(
                format!(
                    "the model {model:?} does not exist; this server serves {:?}",
                    app.served_name
                ),
                "model",
            )
            .with_status(StatusCode::NOT_FOUND)
            .with_code("model_not_found"));
        }
    }
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is supported", "n"));
    }
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages"));
    }
    let messages = r
        .messages
        .iter()
        .map(|m| {
            Ok(ChatMessage {
                role: m.role.clone(),
                content: match &m.content {
                    Some(c) => c.text()?,
                    None => String::new(),
                },
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    crate::tokenizer::chat::check_chat(&messages)
        .map_err(|e| ApiError::invalid(format!("{e:#}"), "messages"))?;
    let prompt = app
        .tokenizer
        .encode_chat(&messages, true)
        .map_err(|e| {
            ApiError::invalid(format!("cannot apply the chat template: {e:#}"), "messages")
        })?
        .ids;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the messages render to no tokens",
            "messages",
        ));
    }
    let context = app.model_config.max_position_embeddings;
    let room = context.saturating_sub(prompt.len());
    let max_tokens = match r.max_completion_tokens.or(r.max_tokens) {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1",
                "max_tokens",
            ))
        }
        Some(n) => n,
        None => app.default_max_tokens.min(room),
    };
    // Checked: a request's max_tokens can be as large as u64::MAX.
    if max_tokens == 0
        || prompt
            .len()
            .checked_add(max_tokens)
            .is_none_or(|n| n > context)
    {
        let param = match (r.max_completion_tokens, r.max_tokens) {
            (Some(_), _) => "max_completion_tokens",
            (None, Some(_)) => "max_tokens",
            (None, None) => "messages",
        };
        return Err(ApiError::invalid(
            format!(
                "the prompt ({} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {context} tokens",
                prompt.len()
            ),
            param,
        )
        .with_code("context_length_exceeded"));
    }
    let temperature = r.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature must be between 0 and 2",
            "temperature",
        ));
    }
    let top_p = r.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p must be in (0, 1]", "top_p"));
    }
    let logprobs = r.logprobs.unwrap_or(false);
    let top_logprobs = match (r.top_logprobs, logprobs) {
        (Some(k), _) if k > 20 => {
            return Err(ApiError::invalid(
                "top_logprobs must be between 0 and 20",
                "top_logprobs",
            ))
        }
        (Some(_), false) => {
            return Err(ApiError::invalid(
                "top_logprobs needs logprobs: true",
                "top_logprobs",
            ))
        }
        (k, true) => Some(k.unwrap_or(0)),
        (None, false) => None,
    };
    let stop = r.stop.map(api::Stop::strings).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty strings",
            "stop",
        ));
    }
    let steering = match r.steering {
        Some(s) => Some(steering(app, s)?),
        None => None,
    };
    let seed = r.seed.map_or_else(rand::random::<u64>, |s| s as u64);
    Ok(Prepared {
        job: Job {
            prompt,
            max_tokens,
            sampling: Sampling {
                max_new_tokens: max_tokens,
                temperature,
                top_p,
                seed,
            },
            stop,
            logprobs: top_logprobs,
            steering,
            events,
        },
        stream: r.stream.unwrap_or(false),
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
        logprobs,
    })
}

fn steering(app: &AppState, s: api::SteeringRequest) -> Result<Steering, ApiError> {
    let Some(d) = app.directions.get(&s.vector) else {
        return Err(ApiError::invalid(
            format!(
                "no persona vector {:?} is served (served: {})",
                s.vector,
                app.directions
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "steering.vector",
        ));
    };
    let c = &app.model_config;
    let layers = match s.layer {
        None => SteerLayers::Single(d.layer),
        Some(SteerLayer::Index(l)) if (1..=c.num_layers).contains(&l) => SteerLayers::Single(l),
        Some(SteerLayer::Name(n)) if n == "all" => SteerLayers::All,
        Some(_) => {
            return Err(ApiError::invalid(
                format!(
                    "steering.layer must be a hidden-state index in 1..={} or \"all\"",
                    c.num_layers
                ),
                "steering.layer",
            ))
        }
    };
    if !s.coef.is_finite() {
        return Err(ApiError::invalid(
            "steering.coef must be a finite number",
            "steering.coef",
        ));
    }
    Steering::new(
        &d.rows,
        layers,
        s.coef,
        s.positions.unwrap_or(Positions::Response),
        c.num_layers,
        c.hidden_size,
    )
    .map_err(|e| ApiError::invalid(format!("{e:#}"), "steering"))
}

/// Engine events as SSE chunks: `data: {chunk}` per delta, a final chunk with the finish
/// reason, an optional usage chunk, then `data: [DONE]`. A failure mid-stream is sent as an
/// `{"error": ...}` chunk (the status line is already out).
struct ChunkStream {
    events: UnboundedReceiver<Event>,
    queue: VecDeque<SseEvent>,
    completion: Completion,
    include_usage: bool,
    finished: bool,
}

impl ChunkStream {
    fn push(&mut self, v: Value) {
        self.queue
            .push_back(SseEvent::default().data(v.to_string()));
    }

    fn translate(&mut self, event: Option<Event>) {
        match event {
            Some(Event::Delta { text, logprobs }) => {
                if text.is_empty() && logprobs.is_empty() {
                    return;
                }
                let chunk = self
                    .completion
                    .chunk(json!({"content": text}), Some(&logprobs), None);
                self.push(chunk);
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let chunk = self.completion.chunk(json!({}), None, Some(finish));
                self.push(chunk);
                if self.include_usage {
                    let usage = self
                        .completion
                        .usage_chunk(prompt_tokens, completion_tokens);
                    self.push(usage);
                }
                self.queue.push_back(SseEvent::default().data("[DONE]"));
                self.finished = true;
            }
            Some(Event::Failed(why)) => {
                self.push(ApiError::internal(why).body());
                self.finished = true;
            }
            Some(Event::Started { .. }) | None => {
                self.push(ApiError::internal("the engine dropped the request").body());
                self.finished = true;
            }
        }
    }
}

impl futures_core::Stream for ChunkStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            match self.events.poll_recv(cx) {
                Poll::Ready(event) => self.translate(event),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "chatcmpl-{:x}{:04x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
