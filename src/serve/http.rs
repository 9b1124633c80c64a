//! The HTTP routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, and
//! OpenAI-shaped JSON errors for everything else (axum's own rejections are plain text).

use super::api::{self, ApiError, ChatRequest, Completion, Reply, SteerLayer};
use super::engine::{Event, Job, Reading, Stats};
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
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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
    // The request, checked and handed to the engine.
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
    // The persona readings come first: they decide the alert header, sent before any reply.
    let persona = started(&mut events).await?;
    let alert_header = alert_header(&persona);
    // The reply, streamed as the engine reports it or whole once it is done.
    let mut response = if prepared.stream {
        let mut first = completion.chunk(json!({"role": "assistant", "content": ""}), None, None);
        api::add_persona(&mut first, &persona);
        let stream = ChunkStream {
            events,
            queue: VecDeque::from([SseEvent::default().data(first.to_string())]),
            completion,
            include_usage: prepared.include_usage,
            finished: false,
        };
        Sse::new(stream).into_response()
    } else {
        let reply = collect(&mut events).await?;
        api::json_response(StatusCode::OK, &completion.reply(&reply, &persona))
    };
    if let Some(h) = alert_header {
        response.headers_mut().insert(ALERT_HEADER, h);
    }
    Ok(response)
}

/// The persona readings of the engine's first event about a request.
async fn started(events: &mut UnboundedReceiver<Event>) -> Result<Vec<Reading>, ApiError> {
    match events.recv().await {
        Some(Event::Started { persona, .. }) => Ok(persona),
        Some(Event::Failed(why)) => Err(ApiError::internal(why)),
        _ => Err(ApiError::internal("the engine dropped the request")),
    }
}

/// The traits whose reading crossed its threshold, comma-separated; `None` when none did.
fn alert_header(persona: &[Reading]) -> Option<HeaderValue> {
    let alerts: Vec<&str> = persona
        .iter()
        .filter(|r| r.alert)
        .map(|r| r.trait_name.as_str())
        .collect();
    (!alerts.is_empty())
        .then(|| HeaderValue::from_str(&alerts.join(",")).ok())
        .flatten()
}

/// A non-streamed reply: every delta until `Done`.
async fn collect(events: &mut UnboundedReceiver<Event>) -> Result<Reply, ApiError> {
    let mut content = String::new();
    let mut logprobs = Vec::new();
    loop {
        match events.recv().await {
            Some(Event::Delta { text, logprobs: l }) => {
                content.push_str(&text);
                logprobs.extend(l);
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                return Ok(Reply {
                    content,
                    logprobs,
                    finish,
                    prompt_tokens,
                    completion_tokens,
                })
            }
            Some(Event::Failed(why)) => return Err(ApiError::internal(why)),
            Some(Event::Started { .. }) | None => {
                return Err(ApiError::internal("the engine dropped the request"))
            }
        }
    }
}

/// Checks a request against the model and the served vectors and turns it into a job. The
/// checks run in this order, so a request with several faults is told of the first.
fn prepare(
    app: &AppState,
    r: ChatRequest,
    events: UnboundedSender<Event>,
) -> Result<Prepared, ApiError> {
    check_model(app, &r)?;
    let prompt = prompt(app, &r.messages)?;
    let max_tokens = max_tokens(app, &r, prompt.len())?;
    let sampling = sampling(&r, max_tokens)?;
    let logprobs = r.logprobs.unwrap_or(false);
    let top_logprobs = top_logprobs(r.top_logprobs, logprobs)?;
    let stop = stop_strings(r.stop)?;
    let steering = match r.steering {
        Some(s) => Some(steering(app, s)?),
        None => None,
    };
    Ok(Prepared {
        job: Job {
            prompt,
            max_tokens,
            sampling,
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

/// The request is for the served model, and for one reply.
fn check_model(app: &AppState, r: &ChatRequest) -> Result<(), ApiError> {
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
    Ok(())
}

/// The messages as prompt tokens, under the model's chat template.
fn prompt(app: &AppState, messages: &[api::Message]) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", "messages"));
    }
    let messages = messages
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
    Ok(prompt)
}

/// The reply's length limit: the request's, or by default as much as the context leaves (up
/// to `--default-max-tokens`). Prompt and reply must fit the model's context.
fn max_tokens(app: &AppState, r: &ChatRequest, prompt_len: usize) -> Result<usize, ApiError> {
    let context = app.model_config.max_position_embeddings;
    let room = context.saturating_sub(prompt_len);
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
        || prompt_len
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
                "the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {context} tokens"
            ),
            param,
        )
        .with_code("context_length_exceeded"));
    }
    Ok(max_tokens)
}

/// Temperature (OpenAI's default 1), top-p and the seed (random when the request has none).
fn sampling(r: &ChatRequest, max_tokens: usize) -> Result<Sampling, ApiError> {
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
    Ok(Sampling {
        max_new_tokens: max_tokens,
        temperature,
        top_p,
        seed: r.seed.map_or_else(rand::random::<u64>, |s| s as u64),
    })
}

/// How many alternatives each token's logprob lists; `None` when logprobs are not asked for.
fn top_logprobs(top: Option<usize>, logprobs: bool) -> Result<Option<usize>, ApiError> {
    match (top, logprobs) {
        (Some(k), _) if k > 20 => Err(ApiError::invalid(
            "top_logprobs must be between 0 and 20",
            "top_logprobs",
        )),
        (Some(_), false) => Err(ApiError::invalid(
            "top_logprobs needs logprobs: true",
            "top_logprobs",
        )),
        (k, true) => Ok(Some(k.unwrap_or(0))),
        (None, false) => Ok(None),
    }
}

fn stop_strings(stop: Option<api::Stop>) -> Result<Vec<String>, ApiError> {
    let stop = stop.map(api::Stop::strings).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty strings",
            "stop",
        ));
    }
    Ok(stop)
}

/// The steering a request asks for, with one of the served vectors.
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
    let layers = steer_layers(s.layer, d.layer, c.num_layers)?;
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

/// `steering.layer`: a hidden-state index, `"all"`, or by default the vector's own layer.
fn steer_layers(
    layer: Option<SteerLayer>,
    default: usize,
    num_layers: usize,
) -> Result<SteerLayers, ApiError> {
    match layer {
        None => Ok(SteerLayers::Single(default)),
        Some(SteerLayer::Index(l)) if (1..=num_layers).contains(&l) => Ok(SteerLayers::Single(l)),
        Some(SteerLayer::Name(n)) if n == "all" => Ok(SteerLayers::All),
        Some(_) => Err(ApiError::invalid(
            format!("steering.layer must be a hidden-state index in 1..={num_layers} or \"all\""),
            "steering.layer",
        )),
    }
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

/// Seconds since the Unix epoch, as OpenAI's `created` fields count time.
pub(super) fn now() -> u64 {
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
