//! `persona-train serve`: an OpenAI-compatible HTTP server with continuous batching,
//! per-request steering and persona monitoring.
//!
//! - [`api`]: the wire format (requests, OpenAI-shaped errors, replies and stream chunks);
//! - [`engine`]: the thread that owns the model and runs the continuous batch;
//! - [`http`]: the axum routes, which validate a request, hand it to the engine and relay
//!   what it reports.

pub mod api;
pub mod engine;
pub mod http;

use crate::loader::LoadedModel;
use crate::model::{Adapters, ModelConfig};
use crate::persona::vector::TraitDirection;
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::Device;
use engine::Engine;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What an alert does: `warn` (an `x-persona-alert` header and `alert: true`) or `refuse` (no
/// reply; `finish_reason: "content_filter"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAlert {
    Warn,
    Refuse,
}

impl std::str::FromStr for OnAlert {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "warn" => Ok(Self::Warn),
            "refuse" => Ok(Self::Refuse),
            _ => Err(format!("expected warn or refuse, got {s:?}")),
        }
    }
}

/// Everything `serve` needs besides the model.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port (see [`Server::addr`]).
    pub port: u16,
    pub adapter: Option<PathBuf>,
    pub vectors: Vec<PathBuf>,
    pub vector_kind: String,
    pub layer: Option<usize>,
    /// `[TRAIT=]T` as on the command line.
    pub thresholds: Vec<String>,
    pub on_alert: OnAlert,
    pub max_batch: usize,
    pub default_max_tokens: usize,
    pub served_model_name: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            adapter: None,
            vectors: Vec::new(),
            vector_kind: "response_avg".into(),
            layer: None,
            thresholds: Vec::new(),
            on_alert: OnAlert::Warn,
            max_batch: 16,
            default_max_tokens: 512,
            served_model_name: None,
        }
    }
}

/// A running server: its address, and a way to stop it.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<Result<()>>>,
    engine: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the base URL OpenAI clients take.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Blocks until the server stops (it stops only on error or [`Server::shutdown`]).
    pub fn wait(mut self) -> Result<()> {
        let result = match self.http.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| bail!("the HTTP thread panicked")),
            None => Ok(()),
        };
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
        result
    }

    /// Stops accepting connections, lets requests in flight finish, and waits for both threads.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait()
    }
}

/// Starts serving `lm` as `config` says: loads the adapter and vectors (any error is returned
/// before the port is bound), binds the port, and runs the engine and the HTTP server on their
/// own threads.
pub fn start(lm: LoadedModel, config: ServeConfig) -> Result<Server> {
    // What the command line names, checked before the port is taken.
    ensure!(config.max_batch >= 1, "--max-batch must be at least 1");
    // Every route that generates is a chat route.
    ensure!(
        lm.tokenizer.has_chat_template(),
        "the server answers chat completions only, through the model's chat template, and {} \
         has none (a base model?)",
        lm.files.path().display()
    );
    let model_config = lm.model.config().clone();
    let adapters = load_adapter(config.adapter.as_deref(), &model_config, &lm.model.device())?;
    let monitors = Monitors::load(&config, &model_config)?;
    let served_name = config.served_model_name.clone().unwrap_or_else(|| {
        lm.files
            .path()
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    // The port (0 picks a free one), non-blocking for the async runtime that will accept on it.
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // The engine's thread, which owns the model.
    let tokenizer = Arc::new(lm.tokenizer);
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let stats = Arc::new(engine::Stats::default());
    let engine = Engine {
        stats: stats.clone(),
        model: lm.model,
        adapters,
        tokenizer: tokenizer.clone(),
        thresholds: monitors.thresholds,
        monitors: monitors.directions.clone(),
        refuse_on_alert: config.on_alert == OnAlert::Refuse,
        max_batch: config.max_batch,
    };
    let engine = std::thread::Builder::new()
        .name("serve-engine".into())
        .spawn(move || engine.run(jobs_rx))?;
    // The HTTP server's thread, which hands requests to the engine.
    let state = http::AppState {
        jobs: jobs_tx,
        stats,
        tokenizer,
        directions: monitors
            .directions
            .into_iter()
            .map(|d| (d.trait_name.clone(), d))
            .collect(),
        model_config,
        served_name,
        default_max_tokens: config.default_max_tokens,
        on_alert: config.on_alert,
        created: http::now(),
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let http = spawn_http(listener, state, shutdown_rx)?;
    Ok(Server {
        addr,
        shutdown: Some(shutdown_tx),
        http: Some(http),
        engine: Some(engine),
    })
}

fn load_adapter(
    dir: Option<&Path>,
    model_config: &ModelConfig,
    device: &Device,
) -> Result<Option<Adapters>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let adapters = crate::loader::peft::load(dir, model_config, device)
        .with_context(|| format!("loading the adapter {}", dir.display()))?;
    Ok(Some(adapters))
}

/// Runs the HTTP server on its own single-threaded runtime until `shutdown` fires, then lets the
/// requests in flight finish.
fn spawn_http(
    listener: std::net::TcpListener,
    state: http::AppState,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let state = Arc::new(state);
    let thread = std::thread::Builder::new()
        .name("serve-http".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, http::router(state))
                    .with_graceful_shutdown(async move {
                        let _ = shutdown.await;
                    })
                    .await?;
                Ok(())
            })
        })?;
    Ok(thread)
}

/// The persona vectors every prompt is read on (`--vector`, one per trait), with each one's
/// alert threshold.
struct Monitors {
    directions: Vec<TraitDirection>,
    thresholds: Vec<Option<f32>>,
}

impl Monitors {
    fn load(config: &ServeConfig, model_config: &ModelConfig) -> Result<Self> {
        let thresholds = Thresholds::parse(&config.thresholds)?;
        let mut directions: Vec<TraitDirection> = Vec::new();
        for path in &config.vectors {
            let d = TraitDirection::load(path, &config.vector_kind, config.layer, model_config)
                .with_context(|| format!("--vector {}", path.display()))?;
            ensure!(
                directions.iter().all(|o| o.trait_name != d.trait_name),
                "--vector {}: a vector for trait {:?} is already served",
                path.display(),
                d.trait_name
            );
            directions.push(d);
        }
        thresholds.check_traits(&directions)?;
        Ok(Self {
            thresholds: directions
                .iter()
                .map(|d| thresholds.get(&d.trait_name))
                .collect(),
            directions,
        })
    }
}

/// `--threshold T` (every trait) and `--threshold TRAIT=T`.
struct Thresholds {
    all: Option<f32>,
    per_trait: Vec<(String, f32)>,
}

impl Thresholds {
    fn parse(specs: &[String]) -> Result<Self> {
        let mut t = Thresholds {
            all: None,
            per_trait: Vec::new(),
        };
        for spec in specs {
            let (name, value) = match spec.split_once('=') {
                Some((name, value)) => (Some(name.trim()), value),
                None => (None, spec.as_str()),
            };
            let value: f32 = value.trim().parse().with_context(|| {
                format!("--threshold {spec:?}: expected a number or TRAIT=NUMBER")
            })?;
            match name {
                Some(name) => t.per_trait.push((name.to_string(), value)),
                None => t.all = Some(value),
            }
        }
        Ok(t)
    }

    /// Refuses a per-trait threshold for a trait no vector is served for.
    fn check_traits(&self, directions: &[TraitDirection]) -> Result<()> {
        for name in self.per_trait.iter().map(|(n, _)| n) {
            ensure!(
                directions.iter().any(|d| &d.trait_name == name),
                "--threshold {name}=...: no --vector has trait {name:?} (served: {})",
                directions
                    .iter()
                    .map(|d| d.trait_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<f32> {
        self.per_trait
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .or(self.all)
    }
}

#[cfg(test)]
mod tests {
    use super::Thresholds;

    #[test]
    fn thresholds_per_trait_override_the_global_one() {
        let t = Thresholds::parse(&["2.5".into(), "evil=-1".into()]).unwrap();
        assert_eq!(t.get("evil"), Some(-1.0));
        assert_eq!(t.get("sycophancy"), Some(2.5));
        assert!(Thresholds::parse(&["evil=x".into()]).is_err());
    }
}
