//! The recipe: one TOML file that describes a training run. These structs are its schema; every
//! default lives in their `Default` impls, and `recipes/README.md` documents them field by field.

pub use crate::eval::EvalConfig;
pub use crate::loader::ModelSpec;
use crate::model::lora::LoraConfig;
use crate::steering::Positions;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    /// Run name: outputs go to `<checkpoint.dir>/<name>/`. Default: the recipe file's stem.
    pub name: String,
    pub model: ModelSpec,
    pub data: DataConfig,
    pub lora: LoraConfig,
    pub optim: OptimConfig,
    pub steering: SteeringConfig,
    pub monitor: MonitorConfig,
    pub logging: LoggingConfig,
    pub checkpoint: CheckpointConfig,
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// JSONL files of `{"messages": [{"role": ..., "content": ...}, ...]}` chats.
    pub train: Vec<PathBuf>,
    /// Fraction of the chats held out for validation loss (0 disables it).
    pub held_out: f32,
    /// Longer chats are truncated to this many tokens.
    pub max_seq_len: usize,
    /// Seeds the held-out split and the per-epoch shuffle.
    pub shuffle_seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: Vec::new(),
            held_out: 0.05,
            max_seq_len: 512,
            shuffle_seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate (AdamW on the adapter weights only).
    pub lr: f64,
    /// After warmup: `constant`, `linear` decay to 0, or `cosine` decay to 0 (as transformers).
    pub schedule: Schedule,
    /// Optimizer steps of linear warmup from 0.
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Clip the global gradient norm to this (0 disables clipping).
    pub grad_clip: f64,
    /// Chats per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the loss is averaged over all their response tokens.
    pub grad_accum: usize,
    pub epochs: usize,
    /// Stops after this many optimizer steps when set (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Seeds adapter initialisation and dropout.
    pub seed: u64,
    /// Recompute memory-bound activations in the backward pass instead of keeping them (burn's
    /// balanced checkpointing): less memory for long sequences and large models, more compute.
    pub gradient_checkpointing: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            grad_clip: 1.0,
            batch_size: 4,
            grad_accum: 1,
            epochs: 1,
            max_steps: None,
            seed: 0,
            gradient_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteeringMode {
    /// No intervention during training (the vector, if given, is still monitored).
    Off,
    /// Add `coef * (v[l] - v[l-1])` at the output of every block `l-1`.
    AllLayers,
    /// Add `coef * v[layer]` at the output of block `layer - 1`.
    SingleLayer,
    /// Remove the component along `v̂` (at `layer`, or at every layer when `layer` is unset).
    Ablate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteeringConfig {
    pub mode: SteeringMode,
    /// Persona-vector file; extracted first (with `persona-train extract` defaults) when missing.
    pub vector: Option<PathBuf>,
    /// Trait name: names the TensorBoard tags and, by default, the artifacts file.
    #[serde(rename = "trait")]
    pub trait_name: String,
    /// Trait artifacts (evaluation questions for probes, questions for extraction).
    /// Default: `datasets/traits/<trait>.json`.
    pub artifacts: Option<PathBuf>,
    /// Which vector of the file: `response_avg`, `prompt_avg` or `prompt_last`.
    pub vector_kind: String,
    /// Hidden-state row for `single_layer` (required) and `ablate` (optional).
    pub layer: Option<usize>,
    pub coef: f32,
    /// `all` tokens, or only the `response` (assistant) tokens of each chat.
    pub positions: Positions,
}

impl Default for SteeringConfig {
    fn default() -> Self {
        Self {
            mode: SteeringMode::Off,
            vector: None,
            trait_name: String::new(),
            artifacts: None,
            vector_kind: "response_avg".into(),
            layer: None,
            coef: 0.0,
            positions: Positions::All,
        }
    }
}

impl SteeringConfig {
    pub fn artifacts_path(&self) -> PathBuf {
        self.artifacts
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("datasets/traits/{}.json", self.trait_name)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Probe prompts, a JSON list of strings; default: the trait's evaluation questions.
    pub prompts: Option<PathBuf>,
    /// At most this many probe prompts are used (the first ones).
    pub max_prompts: usize,
    /// Optimizer steps between probes (0 disables probing).
    pub probe_every: usize,
    /// Hidden-state rows whose projections are logged; default: every layer.
    pub layers: Vec<usize>,
    /// The trait's headline layer; default: the vector's recommended layer, else 2/3 of the depth.
    pub main_layer: Option<usize>,
    /// Length of the base model's greedy answers that probe response averages are taken over.
    pub response_tokens: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            prompts: None,
            max_prompts: 20,
            probe_every: 10,
            layers: Vec::new(),
            main_layer: None,
            response_tokens: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// TensorBoard directory; default `<run dir>/tensorboard`.
    pub tensorboard_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Parent of run directories.
    pub dir: PathBuf,
    /// Optimizer steps between checkpoints (the last step is always saved).
    pub every_n_steps: usize,
    /// Older `step-*` directories are deleted beyond this many (0 keeps all).
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("checkpoints"),
            every_n_steps: 50,
            keep_last: 3,
        }
    }
}

impl Recipe {
    /// Reads `path`, applies `overrides` (`section.field=value`, the value in TOML syntax or a
    /// bare string) and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read recipe {}", path.display()))?;
        let stem = path
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
        Self::parse(&text, &stem, overrides).with_context(|| format!("recipe {}", path.display()))
    }

    /// A recipe from TOML text (possibly empty: every default) and overrides; `name` is the
    /// run name when the text sets none.
    pub fn parse(text: &str, name: &str, overrides: &[String]) -> Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).context("not valid TOML")?;
        for o in overrides {
            apply_override(&mut doc, o).with_context(|| format!("--set {o}"))?;
        }
        reject_non_finite(&doc, "")?;
        let mut recipe: Recipe = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().message().trim().to_string();
            match path.as_str() {
                "." | "" => anyhow::anyhow!("{message}"),
                _ => anyhow::anyhow!("{path}: {message}"),
            }
        })?;
        if recipe.name.is_empty() {
            recipe.name = name.to_string();
        }
        recipe.validate()?;
        Ok(recipe)
    }

    /// Checks what every use of a recipe needs; training also needs `data.train`.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..1.0).contains(&self.data.held_out),
            "data.held_out must be in [0, 1), got {}",
            self.data.held_out
        );
        ensure!(
            self.data.max_seq_len >= 2,
            "data.max_seq_len must be at least 2"
        );
        self.lora.validate().context("lora")?;
        let o = &self.optim;
        ensure!(o.lr > 0.0, "optim.lr must be positive");
        ensure!(
            o.weight_decay >= 0.0 && o.lr * o.weight_decay < 1.0,
            "optim.weight_decay must be at least 0 and lr × weight_decay below 1 (got {})",
            o.weight_decay
        );
        ensure!(o.eps > 0.0, "optim.eps must be positive");
        ensure!(
            o.grad_clip >= 0.0,
            "optim.grad_clip must be at least 0 (0 disables clipping)"
        );
        ensure!(
            o.max_steps != Some(0),
            "optim.max_steps must be at least 1 (leave it unset to train optim.epochs epochs)"
        );
        ensure!(o.batch_size > 0, "optim.batch_size must be at least 1");
        ensure!(o.grad_accum > 0, "optim.grad_accum must be at least 1");
        ensure!(
            o.epochs > 0 || o.max_steps.is_some(),
            "optim.epochs is 0 and optim.max_steps is unset"
        );
        ensure!(
            o.betas.iter().all(|b| (0.0..1.0).contains(b)),
            "optim.betas must be in [0, 1)"
        );
        let s = &self.steering;
        if s.mode != SteeringMode::Off {
            ensure!(
                s.vector.is_some(),
                "steering.vector is required when steering.mode is not \"off\""
            );
        }
        if s.mode == SteeringMode::SingleLayer {
            ensure!(
                s.layer.is_some(),
                "steering.layer is required for mode \"single_layer\""
            );
        }
        if s.vector.is_some() {
            ensure!(
                !s.trait_name.is_empty(),
                "steering.trait is required with a steering.vector (it names the logged tags)"
            );
        }
        ensure!(
            self.checkpoint.every_n_steps > 0,
            "checkpoint.every_n_steps must be at least 1"
        );
        if self.name.contains('/') || self.name.starts_with('.') {
            bail!("name {:?} must be a plain directory name", self.name);
        }
        Ok(())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.checkpoint.dir.join(&self.name)
    }

    pub fn tensorboard_dir(&self) -> PathBuf {
        self.logging
            .tensorboard_dir
            .clone()
            .unwrap_or_else(|| self.run_dir().join("tensorboard"))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the recipe")
    }
}

/// TOML allows `nan` and `inf`, but no field of a recipe means anything with them: training on
/// one gives a NaN loss. Checked on the document, so the error names the key as written.
fn reject_non_finite(table: &toml::Table, prefix: &str) -> Result<()> {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        check_finite(value, &path)?;
    }
    Ok(())
}

fn check_finite(value: &toml::Value, path: &str) -> Result<()> {
    match value {
        toml::Value::Float(f) => ensure!(f.is_finite(), "{path} must be a finite number, got {f}"),
        toml::Value::Table(t) => reject_non_finite(t, &format!("{path}."))?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_finite(item, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `a.b.c=value`: sets `doc[a][b][c]`, creating tables on the way. The value is parsed as TOML
/// (`2e-5`, `true`, `[1, 2]`, `"text"`) and taken as a plain string when it does not parse.
fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .context("expected KEY=VALUE, e.g. optim.lr=2e-5")?;
    let path: Vec<&str> = key.trim().split('.').collect();
    ensure!(
        path.iter().all(|p| !p.is_empty()),
        "bad key {key:?}: expected dotted names like optim.lr"
    );
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path.split_last().expect("split yields at least one part");
    let mut table = doc;
    for p in parents {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .with_context(|| format!("{p} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}
