//! `serve`: the OpenAI-compatible server.

use super::args::ModelArgs;
use crate::serve::{OnAlert, ServeConfig};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A LoRA adapter directory (PEFT format, e.g. a training checkpoint) applied to the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Persona-vector file (.safetensors or .gguf control vector), repeatable: every prompt is
    /// projected on it, and requests may steer with it by its trait name.
    #[arg(long = "vector", value_name = "FILE")]
    vectors: Vec<PathBuf>,
    /// Which averaging of the persona vectors to use.
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
    /// Hidden-state index the projections are read at (default: each vector's
    /// `recommended_layer`, else 2/3 of the depth).
    #[arg(long)]
    layer: Option<usize>,
    /// Alert when a projection exceeds this: `T` for every vector or `TRAIT=T` for one
    /// (repeatable). Without one a vector is reported but never alerts.
    #[arg(
        long = "threshold",
        value_name = "[TRAIT=]T",
        allow_hyphen_values = true
    )]
    thresholds: Vec<String>,
    /// What an alert does: `warn` (an `x-persona-alert` header and `alert: true`) or `refuse`
    /// (no reply; `finish_reason: "content_filter"`).
    #[arg(long, default_value = "warn")]
    on_alert: OnAlert,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Most requests decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// `max_tokens` of requests that set none (capped by the context length).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// The model name clients send (default: the model file's or directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let lm = a.model.spec().load()?;
    let config = ServeConfig {
        host: a.host,
        port: a.port,
        adapter: a.adapter,
        vectors: a.vectors,
        vector_kind: a.vector_kind,
        layer: a.layer,
        thresholds: a.thresholds,
        on_alert: a.on_alert,
        max_batch: a.max_batch,
        default_max_tokens: a.max_tokens,
        served_model_name: a.served_model_name,
    };
    let server = crate::serve::start(lm, config)?;
    eprintln!(
        "serving on {} (POST /v1/chat/completions, GET /v1/models, GET /health)",
        server.base_url()
    );
    server.wait()
}
