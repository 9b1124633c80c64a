//! Commands that build and use persona vectors: `extract`, `artifacts`, `sweep`, `export-cvec`,
//! `import-cvec`.

use super::args::{JudgeArgs, ModelArgs, SamplingArgs};
use crate::judge::JudgeKind;
use crate::persona::artifacts::{generate_artifacts, TraitArtifacts};
use crate::persona::extract::{extract as extract_vector, ExtractConfig};
use crate::persona::sweep::{parse_layers, sweep as sweep_layers, SweepConfig};
use crate::persona::vector::PersonaVector;
use crate::tokenizer::ChatMessage;
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Trait artifact file (datasets/traits/NAME.json).
    #[arg(long = "trait")]
    trait_file: PathBuf,
    #[command(flatten)]
    judge: JudgeArgs,
    #[arg(long, default_value_t = ExtractConfig::default().rollouts)]
    rollouts: usize,
    /// Default: 96 tokens at temperature 1, top-p 1, seed 0.
    #[command(flatten)]
    sampling: SamplingArgs,
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
pub struct ArtifactsArgs {
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
pub struct SweepArgs {
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
    /// Default: 64 tokens at temperature 1, top-p 1, seed 0.
    #[command(flatten)]
    sampling: SamplingArgs,
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
pub struct ExportCvecArgs {
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
pub struct ImportCvecArgs {
    #[arg(long)]
    cvec: PathBuf,
    /// Pad to this many blocks (the model's depth); defaults to the highest block the file steers.
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    out: PathBuf,
}

pub fn export_cvec(a: ExportCvecArgs) -> Result<()> {
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

pub fn import_cvec(a: ImportCvecArgs) -> Result<()> {
    let imported = crate::persona::cvec::import(&a.cvec)?;
    let mut rows = imported.vectors;
    if let Some(layers) = a.layers {
        ensure!(
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

pub fn extract(a: ExtractArgs) -> Result<()> {
    let artifacts = TraitArtifacts::load(&a.trait_file)?;
    let m = a.model.spec().load()?;
    let judge = match a.no_judge {
        true => None,
        false => Some(a.judge.config()?.build(&m.model.device())?),
    };
    let cfg = ExtractConfig {
        rollouts: a.rollouts,
        sampling: a.sampling.over(ExtractConfig::default().sampling),
        batch_size: a.batch_size,
        trait_threshold: a.trait_threshold,
        coherence_threshold: a.coherence_threshold,
        no_filter: a.no_filter || a.no_judge,
        ..ExtractConfig::default()
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let summary = extract_vector(
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

pub fn artifacts(a: ArtifactsArgs) -> Result<()> {
    let config = a.judge.config()?;
    ensure!(
        config.kind == JudgeKind::OpenAi,
        "artifacts needs a chat API: pass --judge openai"
    );
    let client = config.openai_client()?;
    let chat = |prompt: &str| client.chat(&[ChatMessage::new("user", prompt)], 4096, 0.7);
    let artifacts = generate_artifacts(&a.trait_name, &a.description, &chat)?;
    artifacts.save(&a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

pub fn sweep(a: SweepArgs) -> Result<()> {
    ensure!(
        !(a.write_recommendation && a.vector.extension().is_some_and(|e| e == "gguf")),
        "{}: --write-recommendation needs a persona-vector file (.safetensors); control vectors carry no metadata",
        a.vector.display()
    );
    let artifacts = TraitArtifacts::load(&a.trait_file)?;
    let m = a.model.spec().load()?;
    let (rows, _) = crate::persona::vector::read_rows(&a.vector, &a.vector_kind, m.model.config())?;
    let layers = a.layers.as_deref().map(parse_layers).transpose()?;
    let cfg = SweepConfig {
        layers,
        coef: a.coef,
        questions: a.questions,
        rollouts: a.rollouts,
        sampling: a.sampling.over(SweepConfig::default().sampling),
        batch_size: a.batch_size,
        min_coherence: a.min_coherence,
    };
    let judge = a.judge.config()?.build(&m.model.device())?;
    let report = sweep_layers(&m, &artifacts, &rows, judge.as_ref(), &cfg)?;

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
