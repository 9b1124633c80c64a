//! The persona side of a training run as the recipe's `[steering]` and `[monitor]` tables say:
//! the vector (extracted first when missing), the training-time steering, and the probes.

use crate::loader::LoadedModel;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::extract::{extract, ExtractConfig};
use crate::persona::probes::{ProbeSet, ProbeSpec};
use crate::persona::vector::PersonaVector;
use crate::recipe::{Recipe, SteeringMode};
use crate::steering::{SteerLayers, Steering};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The recipe's persona vector, extracted first when the file is missing.
pub fn persona_vector(recipe: &Recipe, lm: &LoadedModel) -> Result<Option<PersonaVector>> {
    let Some(path) = &recipe.steering.vector else {
        return Ok(None);
    };
    if !path.exists() {
        let artifacts_path = recipe.steering.artifacts_path();
        eprintln!(
            "{} does not exist: extracting the {} vector first (persona-train extract --no-judge --max-new-tokens 32: every pair kept, no judge)",
            path.display(),
            recipe.steering.trait_name
        );
        let artifacts = TraitArtifacts::load(&artifacts_path)
            .with_context(|| format!("steering.artifacts ({})", artifacts_path.display()))?;
        let mut cfg = ExtractConfig {
            no_filter: true,
            ..ExtractConfig::default()
        };
        cfg.sampling.max_new_tokens = 32;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        extract(lm, &recipe.model.source, &artifacts, None, &cfg, path)?;
    }
    PersonaVector::load(path)
        .with_context(|| format!("steering.vector ({})", path.display()))
        .map(Some)
}

/// The intervention of the training forward pass, or `None` for mode `off`.
pub fn training_steering(
    recipe: &Recipe,
    rows: Option<&[Vec<f32>]>,
    layers: usize,
    hidden: usize,
) -> Result<Option<Steering>> {
    let s = &recipe.steering;
    let Some(rows) = rows.filter(|_| s.mode != SteeringMode::Off) else {
        return Ok(None);
    };
    let where_ = match s.layer {
        Some(l) => SteerLayers::Single(l),
        None => SteerLayers::All,
    };
    let steering = match s.mode {
        SteeringMode::Off => unreachable!("filtered above"),
        SteeringMode::AllLayers => {
            Steering::new(rows, SteerLayers::All, s.coef, s.positions, layers, hidden)
        }
        SteeringMode::SingleLayer => {
            Steering::new(rows, where_, s.coef, s.positions, layers, hidden)
        }
        SteeringMode::Ablate => Steering::ablate(rows, where_, s.positions, layers, hidden),
    };
    steering.context("steering").map(Some)
}

/// The probes of the recipe's `[monitor]` table on `rows`, cached in `dir/probes.jsonl`.
pub fn probe_set(
    recipe: &Recipe,
    lm: &LoadedModel,
    vector: &Option<PersonaVector>,
    rows: &[Vec<f32>],
    dir: &Path,
) -> Result<ProbeSet> {
    let m = &recipe.monitor;
    let num_layers = lm.model.config().num_layers;
    let prompts: Vec<String> = match &m.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read monitor.prompts {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "monitor.prompts {}: expected a JSON list of strings",
                    path.display()
                )
            })?
        }
        None => {
            let path = recipe.steering.artifacts_path();
            TraitArtifacts::load(&path)
                .with_context(|| {
                    format!(
                        "monitor probes: the trait's evaluation questions ({})",
                        path.display()
                    )
                })?
                .eval_questions
        }
    };
    let prompts: Vec<String> = prompts.into_iter().take(m.max_prompts).collect();
    anyhow::ensure!(!prompts.is_empty(), "monitor: no probe prompts");
    let recommended = vector
        .as_ref()
        .and_then(|v| v.metadata.get("recommended_layer"))
        .and_then(|s| s.parse().ok());
    let main_layer = m
        .main_layer
        .or(recommended)
        .unwrap_or((2 * num_layers).div_ceil(3));
    let mut monitored = if m.layers.is_empty() {
        (1..=num_layers).collect()
    } else {
        m.layers.clone()
    };
    if !monitored.contains(&main_layer) {
        monitored.push(main_layer);
    }
    monitored.sort_unstable();
    monitored.dedup();
    if let Some(&bad) = monitored.iter().find(|&&l| l > num_layers) {
        bail!("monitor.layers: layer {bad} is out of range 0..={num_layers}");
    }
    let spec = ProbeSpec {
        trait_name: &recipe.steering.trait_name,
        vector: rows,
        layers: monitored,
        main_layer,
        response_tokens: m.response_tokens,
    };
    ProbeSet::new(
        &lm.model,
        &lm.tokenizer,
        spec,
        &prompts,
        &dir.join("probes.jsonl"),
    )
}
