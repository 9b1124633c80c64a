//! Checkpoint evaluation: MMLU, judge-free trait metrics, the paper's judged trait scores and
//! the persona projection shift, run by the trainer at every checkpoint (the base model once as
//! step 0) and by `persona-train eval`.

pub mod choice;
pub mod loglik;
pub mod mmlu;
pub mod trait_score;

use crate::lm::Lm;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::probes::{ProbeSet, Projections};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The recipe's `[eval]` table. Every metric is optional; the projection shift needs a vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate at every checkpoint (and the base model as step 0) during training.
    pub at_checkpoints: bool,
    /// `[eval.mmlu]`: MMLU accuracy.
    pub mmlu: Option<mmlu::MmluConfig>,
    /// `[eval.trait_score]`: judged trait and coherence scores of sampled answers.
    pub trait_score: Option<trait_score::TraitScoreConfig>,
    /// `[[eval.choice]]`: A/B, yes/no and TruthfulQA sets.
    pub choice: Vec<choice::ChoiceConfig>,
    /// The finetuning shift on the evaluation questions (last prompt token and answer average,
    /// checkpoint minus base, projected on `v̂` at every layer).
    pub projection: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            at_checkpoints: true,
            mmlu: None,
            trait_score: None,
            choice: Vec::new(),
            projection: true,
        }
    }
}

impl EvalConfig {
    pub fn is_empty(&self) -> bool {
        self.mmlu.is_none()
            && self.trait_score.is_none()
            && self.choice.is_empty()
            && !self.projection
    }
}

/// What one evaluation found; written as `eval.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    pub step: usize,
    #[serde(rename = "trait")]
    pub trait_name: String,
    /// Every scalar, under its TensorBoard tag (`eval/mmlu_acc`, `eval/<trait>_score`, ...).
    pub scalars: BTreeMap<String, f64>,
}

/// The persona side of an evaluation: trait, vector and the probes on its evaluation questions.
pub struct PersonaEval<'a> {
    /// Names the tags (`eval/<trait>_score`, ...).
    pub trait_name: &'a str,
    /// Needed by trait scores (evaluation questions and rubric).
    pub artifacts: Option<&'a TraitArtifacts>,
    /// The persona vector (`[layers + 1][hidden]`) and its headline layer.
    pub vector: Option<(&'a [Vec<f32>], usize)>,
    /// Probes of the evaluation questions with the base model's projections, for the shift.
    pub probes: Option<&'a ProbeSet>,
}

/// Runs every configured metric on `lm` (its adapters, none = the base model, and inference-time
/// steering); full reports go to `out_dir` (`eval.json`, `mmlu.json`, `trait_score.json`,
/// `choice.json`).
pub fn evaluate(
    lm: Lm,
    tokenizer: &Tokenizer,
    persona: &PersonaEval,
    cfg: &EvalConfig,
    step: usize,
    out_dir: &Path,
) -> Result<EvalSummary> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let name = persona.trait_name;
    let mut scalars = BTreeMap::new();
    if let Some(m) = &cfg.mmlu {
        let (test, dev) = mmlu::load(&m.source)?;
        let report = mmlu::evaluate(lm, tokenizer, &test, dev.as_deref(), m)?;
        scalars.insert("eval/mmlu_acc".to_string(), report.micro);
        scalars.insert("eval/mmlu_macro_acc".to_string(), report.macro_);
        crate::atomic::write_json(&out_dir.join("mmlu.json"), &report)?;
    }
    if !cfg.choice.is_empty() {
        let mut all = BTreeMap::new();
        for c in &cfg.choice {
            let set = choice::load(&c.path)?;
            let report = choice::evaluate(lm, tokenizer, &set, c)?;
            for (metric, value) in &report.metrics {
                scalars.insert(format!("eval/{metric}"), *value);
            }
            all.insert(c.path.display().to_string(), report);
        }
        crate::atomic::write_json(&out_dir.join("choice.json"), &all)?;
    }
    if let Some(t) = &cfg.trait_score {
        let artifacts = persona.artifacts.context(
            "eval.trait_score needs the trait's artifacts (steering.trait / steering.artifacts)",
        )?;
        let judge = t.judge.build(&lm.device())?;
        let vector = persona
            .vector
            .map(|(rows, layer)| (layer, rows[layer].as_slice()));
        let report = trait_score::evaluate(lm, tokenizer, artifacts, judge.as_ref(), vector, t)?;
        if let Some(s) = report.trait_score {
            scalars.insert(format!("eval/{name}_score"), s);
        }
        if let Some(c) = report.coherence {
            scalars.insert("eval/coherence".to_string(), c);
        }
        if let Some(p) = report.projection {
            scalars.insert(format!("eval/{name}_answer_projection"), p);
        }
        scalars.insert(
            "eval/judge_scored_fraction".to_string(),
            report.scored as f64 / report.total.max(1) as f64,
        );
        crate::atomic::write_json(&out_dir.join("trait_score.json"), &report)?;
    }
    if let (true, Some(probes)) = (cfg.projection, persona.probes) {
        let p = probes.measure(lm.with_steering(None))?;
        scalars.extend(projection_scalars(probes, &p));
    }
    let summary = EvalSummary {
        step,
        trait_name: name.to_string(),
        scalars,
    };
    crate::atomic::write_json(&out_dir.join("eval.json"), &summary)?;
    Ok(summary)
}

/// `eval/projection_shift/<trait>/{prompt_last,response_avg}/layer_<l>` and the headline
/// `eval/projection_shift/<trait>` (last prompt token at the main layer).
fn projection_scalars(probes: &ProbeSet, p: &Projections) -> Vec<(String, f64)> {
    let t = &probes.trait_name;
    let mut out = Vec::new();
    for (k, &l) in probes.layers.iter().enumerate() {
        let last = (p.prompt_last[k] - probes.base.prompt_last[k]) as f64;
        let avg = (p.response_avg[k] - probes.base.response_avg[k]) as f64;
        out.push((
            format!("eval/projection_shift/{t}/prompt_last/layer_{l}"),
            last,
        ));
        out.push((
            format!("eval/projection_shift/{t}/response_avg/layer_{l}"),
            avg,
        ));
    }
    out.push((
        format!("eval/projection_shift/{t}"),
        probes.main_shift(p) as f64,
    ));
    out
}
