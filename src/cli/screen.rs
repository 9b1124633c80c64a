//! Commands that measure data and prompts against persona vectors: `screen` (training data
//! before fine-tuning) and `monitor` (prompts at deployment).

use super::args::ModelArgs;
use crate::persona::monitor::{self, MonitorJob};
use crate::persona::screen::{self, cache_dir, ScreenConfig, ScreenJob};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    #[arg(long)]
    vector: PathBuf,
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
    /// Hidden-state index to project at; default: the file's recommended layer, else 2/3 of the
    /// depth.
    #[arg(long)]
    layer: Option<usize>,
    /// Chat JSONL file(s) to screen; repeat to compare several side by side.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Ranked samples (JSONL, highest score first); the summary goes beside it as
    /// NAME.summary.json and the histogram as NAME.png.
    #[arg(long)]
    out: PathBuf,
    /// Screen only the first N chats of each file.
    #[arg(long)]
    limit: Option<usize>,
    /// Length of the base model's greedy answers.
    #[arg(long, default_value_t = ScreenConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Prompts generated (and chats measured) together.
    #[arg(long, default_value_t = ScreenConfig::default().batch_size)]
    batch_size: usize,
    /// Average over at most this many response tokens (dataset and base answers alike).
    #[arg(long)]
    max_response_tokens: Option<usize>,
    /// Only the proxy (response minus last-prompt-token projection): no generation, fast.
    #[arg(long)]
    no_generate: bool,
    /// Where base answers and projections are cached; default `$PERSONA_TRAIN_CACHE/screen`
    /// (`~/.cache/persona-train/screen`).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Neither read nor write the cache (everything is generated and measured again).
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,
    /// Drop the K highest-scoring samples (by ΔP; by the proxy with --no-generate).
    #[arg(long)]
    drop_top: Option<usize>,
    /// Drop samples scoring above T (ΔP; the proxy with --no-generate).
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// Write the kept lines (unchanged, in their original order) of the one --data file here.
    #[arg(long)]
    write_filtered: Option<PathBuf>,
}

pub fn screen(a: ScreenArgs) -> Result<()> {
    screen::run(&ScreenJob {
        model: a.model.spec(),
        vector: a.vector,
        vector_kind: a.vector_kind,
        layer: a.layer,
        data: a.data,
        out: a.out,
        limit: a.limit,
        scoring: ScreenConfig {
            max_new_tokens: a.max_new_tokens,
            batch_size: a.batch_size,
            generate: !a.no_generate,
            max_response_tokens: a.max_response_tokens,
            cache: (!a.no_cache).then(|| a.cache.unwrap_or_else(cache_dir)),
        },
        drop_top: a.drop_top,
        threshold: a.threshold,
        write_filtered: a.write_filtered,
    })
}

#[derive(Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf); repeat to monitor
    /// several traits in the same pass.
    #[arg(long, required = true)]
    vector: Vec<PathBuf>,
    /// Which of the file's vectors to project on (the paper monitors with the response-average
    /// persona vector).
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
    /// Hidden-state index to project at (every vector); default: each file's recommended layer,
    /// else 2/3 of the depth.
    #[arg(long)]
    layer: Option<usize>,
    /// Alert when a projection is above this. One value for every vector, or one per `--vector`
    /// in the same order.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Vec<f32>,
    /// Prompts file (see the module docs for the accepted line forms); `-` reads stdin.
    #[arg(long)]
    prompts: String,
    /// Write the JSON lines here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Exit with an error when any prompt alerts (for pipelines).
    #[arg(long)]
    fail_on_alert: bool,
}

pub fn monitor(a: MonitorArgs) -> Result<()> {
    monitor::run(&MonitorJob {
        model: a.model.spec(),
        vector: a.vector,
        vector_kind: a.vector_kind,
        layer: a.layer,
        threshold: a.threshold,
        prompts: a.prompts,
        out: a.out,
        batch_size: a.batch_size,
        fail_on_alert: a.fail_on_alert,
    })
}
