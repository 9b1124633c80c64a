//! Evaluating adapters as a recipe's `[eval]` table says, outside a training run: the
//! `persona-train eval` command (a checkpoint, any PEFT adapter, or the base model).

use crate::eval::{EvalSummary, PersonaEval};
use crate::lm::Lm;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::steer::SteerSpec;
use crate::persona::vector::PersonaVector;
use crate::recipe::Recipe;
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;

/// Everything one evaluation needs.
pub struct EvalJob {
    /// Its `[model]`, `[steering]` (vector, trait) and `[eval]` tables are used.
    pub recipe: Recipe,
    /// A PEFT LoRA adapter directory; `None` evaluates the base model.
    pub adapter: Option<PathBuf>,
    /// Inference-time steering during the evaluation (post-hoc mitigation).
    pub steering: Option<SteerSpec>,
    /// Where eval.json and the detailed reports go.
    pub out: PathBuf,
    /// The step the summary is recorded at (a checkpoint's).
    pub step: usize,
}

/// Loads the model, adapter and steering and runs every metric the recipe enables.
pub fn run(job: &EvalJob) -> Result<EvalSummary> {
    let recipe = &job.recipe;
    ensure!(
        !recipe.eval.is_empty(),
        "nothing to evaluate: the recipe's [eval] enables no metric (e.g. --set eval.mmlu.per_subject=5)"
    );
    let lm = recipe.model.load()?;
    let config = lm.model.config();
    let adapters = match &job.adapter {
        Some(dir) => Some(crate::loader::peft::load(dir, config, &lm.model.device())?),
        None => None,
    };
    let steering = job.steering.as_ref().map(|s| s.build(config)).transpose()?;
    let out = &job.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let s = &recipe.steering;
    let vector = s.vector.as_deref().map(PersonaVector::load).transpose()?;
    let rows = match &vector {
        Some(v) => Some(
            v.get(&s.vector_kind, config.num_layers, config.hidden_size)?
                .to_vec(),
        ),
        None => None,
    };
    let probes = match &rows {
        Some(rows) if recipe.eval.projection => {
            Some(super::probe_set(recipe, &lm, &vector, rows, out)?)
        }
        _ => None,
    };
    let artifacts = match recipe.eval.trait_score {
        Some(_) => Some(TraitArtifacts::load(&s.artifacts_path())?),
        None => None,
    };
    let persona = PersonaEval {
        trait_name: &s.trait_name,
        artifacts: artifacts.as_ref(),
        vector: rows.as_deref().zip(probes.as_ref().map(|p| p.main_layer)),
        probes: probes.as_ref(),
    };
    let model = Lm::new(&lm.model)
        .with_adapters(adapters.as_ref())
        .with_steering(steering.as_ref());
    crate::eval::evaluate(model, &lm.tokenizer, &persona, &recipe.eval, job.step, out)
}
