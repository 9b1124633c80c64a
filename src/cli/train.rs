//! Commands around training runs: `train`, `eval`, `report`.

use super::args::SteerArgs;
use crate::recipe::Recipe;
use crate::train::evaluate::{self, EvalJob};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TrainArgs {
    /// The recipe (TOML); see recipes/README.md.
    recipe: PathBuf,
    /// Override a recipe field, e.g. `--set optim.lr=2e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue from the run's latest checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
pub struct EvalArgs {
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
pub struct ReportArgs {
    /// Run directories (`checkpoints/<run>`), compared side by side.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where the PNG plots go (default: `<first run>/report`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| crate::history::read_evals(r))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", crate::report::table(&runs));
    let out = a.out.clone().unwrap_or_else(|| a.runs[0].join("report"));
    for path in crate::report::plots(&runs, &out)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

pub fn train(a: TrainArgs) -> Result<()> {
    let recipe = Recipe::load(&a.recipe, &a.set)?;
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

pub fn eval(a: EvalArgs) -> Result<()> {
    let (text, name) = recipe_text(a.recipe.as_deref(), a.checkpoint.as_deref())?;
    let mut recipe =
        Recipe::parse(&text, "eval", &a.set).with_context(|| format!("recipe {name}"))?;
    if let Some(m) = &a.model {
        recipe.model.source = m.clone();
    }
    let job = EvalJob {
        recipe,
        adapter: a.adapter.clone().or_else(|| a.checkpoint.clone()),
        steering: a.steer.spec()?,
        out: a
            .out
            .clone()
            .or_else(|| a.checkpoint.clone())
            .unwrap_or_else(|| PathBuf::from("eval-out")),
        step: a
            .checkpoint
            .as_ref()
            .and_then(|d| d.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok())
            .unwrap_or(0),
    };
    let summary = evaluate::run(&job)?;
    for (tag, value) in &summary.scalars {
        println!("{tag:<60} {value:.4}");
    }
    eprintln!("wrote {}", job.out.join("eval.json").display());
    Ok(())
}

/// The recipe `eval` reads, and its name for errors: `--recipe`, else the checkpoint's
/// recipe.toml, else none (every default).
fn recipe_text(recipe: Option<&Path>, checkpoint: Option<&Path>) -> Result<(String, String)> {
    let path = match (recipe, checkpoint) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(dir)) => dir.join("recipe.toml"),
        (None, None) => return Ok((String::new(), "command line".to_string())),
    };
    let text = std::fs::read_to_string(&path).with_context(|| match recipe {
        Some(_) => format!("cannot read recipe {}", path.display()),
        None => format!(
            "cannot read {} (is {} a training checkpoint?)",
            path.display(),
            checkpoint.unwrap_or(Path::new("")).display()
        ),
    })?;
    Ok((text, path.display().to_string()))
}
