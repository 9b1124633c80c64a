//! Layer sweep: steer with a persona vector at one layer at a time, answer the trait's
//! evaluation questions, and let a judge say at which layer steering expresses the trait most
//! while the answers stay coherent.
//!
//! Every layer answers each (question, rollout) with the same sampling seed as the unsteered
//! baseline, so differences between rows come from steering, not from sampling.

use crate::generate::Sampling;
use crate::judge::Judge;
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::persona::activations::activation_averages;
use crate::persona::answers::{chat, generate_answers, judge_answers, mix_seed, response_span};
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::vector::{project, PersonaVector};
use crate::plot::{LineChart, Series};
use crate::progress::Progress;
use crate::steering::{Positions, SteerLayers, Steering};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything `persona-train sweep` can be told. Defaults are the `Default` impl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Hidden-state indices to steer (1..=layers); `None`: [`default_layers`].
    pub layers: Option<Vec<usize>>,
    pub coef: f32,
    /// How many evaluation questions to ask, from the first.
    pub questions: usize,
    /// Sampled answers per question.
    pub rollouts: usize,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Prompts generated together.
    pub batch_size: usize,
    /// Only layers whose mean coherence reaches this are recommended, unless none does.
    pub min_coherence: f32,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            layers: None,
            coef: 1.0,
            questions: 10,
            rollouts: 1,
            sampling: Sampling {
                max_new_tokens: 64,
                temperature: 1.0,
                ..Sampling::default()
            },
            batch_size: 16,
            min_coherence: 50.0,
        }
    }
}

/// Every second layer from 2 to `num_layers - 1`: the embedding output cannot be steered and the
/// last hidden state is taken after the final norm, so neither is worth a row.
pub fn default_layers(num_layers: usize) -> Vec<usize> {
    (2..num_layers).step_by(2).collect()
}

/// `4,8,12`, `1..30` (both ends included) or a mix of the two, sorted and deduplicated.
pub fn parse_layers(spec: &str) -> Result<Vec<usize>> {
    let index = |s: &str| {
        s.trim()
            .parse::<usize>()
            .with_context(|| format!("layers {spec:?}: {:?} is not a layer index", s.trim()))
    };
    let mut layers = Vec::new();
    for part in spec.split(',') {
        match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b.trim_start_matches('='))?);
                ensure!(a <= b, "layers {spec:?}: the range {a}..{b} is empty");
                layers.extend(a..=b);
            }
            None => layers.push(index(part)?),
        }
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(layers)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepAnswer {
    pub question: usize,
    pub rollout: usize,
    /// The sampling seed, shared by this (question, rollout) at every layer.
    pub seed: u64,
    pub prompt: String,
    pub answer: String,
    pub trait_score: Option<f32>,
    pub coherence: Option<f32>,
    /// Response-average hidden state at the steered layer, measured without steering, projected
    /// on v̂[layer]; `None` for the baseline (see [`SweepRow::baseline_projection`]) and for an
    /// empty answer.
    pub projection: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// The steered hidden-state index; `None` for the unsteered baseline.
    pub layer: Option<usize>,
    /// Mean over the answers the judge scored.
    pub mean_trait: Option<f32>,
    /// Answers the judge gave no trait score.
    pub trait_unscored: usize,
    pub mean_coherence: Option<f32>,
    pub coherence_unscored: usize,
    pub mean_projection: Option<f32>,
    /// The baseline answers' mean projection at this layer: where steering moved it from.
    pub baseline_projection: Option<f32>,
    pub answers: Vec<SweepAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub layer: usize,
    /// False when no layer reached the coherence bar and the most trait-expressing one was taken
    /// anyway.
    pub coherent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub trait_name: String,
    pub judge: String,
    pub config: SweepConfig,
    pub baseline: SweepRow,
    pub layers: Vec<SweepRow>,
    /// `None` when the judge scored no steered answer.
    pub recommendation: Option<Recommendation>,
}

/// The layer with the highest mean trait score among those with mean coherence ≥
/// `min_coherence`, or among all layers when none is that coherent. Ties go to the shallower
/// layer. Rows without a layer (the baseline) or a trait score are never recommended.
pub fn recommend(rows: &[SweepRow], min_coherence: f32) -> Option<Recommendation> {
    let best = |coherent_only: bool| {
        rows.iter()
            .filter_map(|r| Some((r.layer?, r.mean_trait?, r.mean_coherence)))
            .filter(|(_, _, c)| !coherent_only || c.is_some_and(|c| c >= min_coherence))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(layer, ..)| layer)
    };
    best(true)
        .map(|layer| Recommendation {
            layer,
            coherent: true,
        })
        .or_else(|| {
            best(false).map(|layer| Recommendation {
                layer,
                coherent: false,
            })
        })
}

/// One (question, rollout) to answer, the same at every layer.
struct Slot {
    question: usize,
    rollout: usize,
    seed: u64,
    prompt: Vec<u32>,
}

/// Answers the first `cfg.questions` evaluation questions (no system prompt) unsteered, then
/// steered at each layer; judges every answer for the trait and for coherence; and projects each
/// steered answer on the vector at its layer. `vector` is `[layers + 1][hidden]`.
pub fn sweep(
    m: &LoadedModel,
    artifacts: &TraitArtifacts,
    vector: &[Vec<f32>],
    judge: &dyn Judge,
    cfg: &SweepConfig,
) -> Result<SweepReport> {
    let layers = layers_to_sweep(m.model.config().num_layers, artifacts, cfg)?;
    // Built before anything runs, so a vector that does not fit fails at once.
    let steerings = steerings(m, vector, &layers, cfg.coef)?;
    let run = Run::new(m, artifacts, vector, cfg, layers)?;
    let runs: Vec<Option<&Steering>> = std::iter::once(None)
        .chain(steerings.iter().map(Some))
        .collect();
    let total = (run.slots.len() * runs.len()) as u64;

    // Every slot answered unsteered, then steered at each layer.
    let bar = Progress::new(total, "generating");
    let mut rows = runs
        .iter()
        .map(|&steering| run.answer(steering, &bar))
        .collect::<Result<Vec<_>>>()?;
    bar.finish();

    // Every answer judged for the trait and for coherence.
    let bar = Progress::new(total, "judging");
    for answers in &mut rows {
        score(judge, &artifacts.eval_prompt, answers)?;
        bar.inc(answers.len() as u64);
    }
    bar.finish();

    // Every answer projected, unsteered: the baseline's at every layer, the others at theirs.
    let bar = Progress::new(total, "projections");
    let baseline_projections = run.baseline_projections(&rows[0], &bar)?;
    for (answers, &l) in rows[1..].iter_mut().zip(&run.layers) {
        run.project(answers, l, &bar)?;
    }
    bar.finish();

    Ok(run.report(judge, rows, baseline_projections))
}

/// The layers to steer, checked against the model's depth, once it is clear there is something
/// to ask.
fn layers_to_sweep(
    num_layers: usize,
    artifacts: &TraitArtifacts,
    cfg: &SweepConfig,
) -> Result<Vec<usize>> {
    let layers = cfg
        .layers
        .clone()
        .unwrap_or_else(|| default_layers(num_layers));
    ensure!(!layers.is_empty(), "no layers to sweep");
    if let Some(&l) = layers.iter().find(|&&l| !(1..=num_layers).contains(&l)) {
        anyhow::bail!(
            "layer {l} is out of range: the model steers hidden-state indices 1..={num_layers} \
             (0 is the embedding output)"
        );
    }
    ensure!(
        cfg.questions > 0 && cfg.rollouts > 0,
        "need at least one question and one rollout"
    );
    ensure!(
        !artifacts.eval_questions.is_empty(),
        "trait {} has no evaluation questions",
        artifacts.trait_name
    );
    Ok(layers)
}

/// Steering on the answer's tokens at one layer each.
fn steerings(
    m: &LoadedModel,
    vector: &[Vec<f32>],
    layers: &[usize],
    coef: f32,
) -> Result<Vec<Steering>> {
    let (num_layers, hidden) = (m.model.config().num_layers, m.model.config().hidden_size);
    layers
        .iter()
        .map(|&l| {
            let at = SteerLayers::Single(l);
            Steering::new(vector, at, coef, Positions::Response, num_layers, hidden)
        })
        .collect()
}

/// What every run of the sweep shares: the model, the trait, the vector, the settings, the layers
/// steered, and the slots every run answers.
struct Run<'a> {
    m: &'a LoadedModel,
    artifacts: &'a TraitArtifacts,
    vector: &'a [Vec<f32>],
    cfg: &'a SweepConfig,
    layers: Vec<usize>,
    questions: &'a [String],
    slots: Vec<Slot>,
}

impl<'a> Run<'a> {
    fn new(
        m: &'a LoadedModel,
        artifacts: &'a TraitArtifacts,
        vector: &'a [Vec<f32>],
        cfg: &'a SweepConfig,
        layers: Vec<usize>,
    ) -> Result<Self> {
        let asked = cfg.questions.min(artifacts.eval_questions.len());
        let questions = &artifacts.eval_questions[..asked];
        let mut slots = Vec::new();
        for (question, text) in questions.iter().enumerate() {
            let prompt = m.tokenizer.encode_chat(&chat(None, text, None), true)?.ids;
            for rollout in 0..cfg.rollouts {
                slots.push(Slot {
                    question,
                    rollout,
                    seed: mix_seed(cfg.sampling.seed, &[question as u64, rollout as u64]),
                    prompt: prompt.clone(),
                });
            }
        }
        Ok(Self {
            m,
            artifacts,
            vector,
            cfg,
            layers,
            questions,
            slots,
        })
    }

    /// Every slot's answer under one steering (or none), in batches.
    fn answer(&self, steering: Option<&Steering>, bar: &Progress) -> Result<Vec<SweepAnswer>> {
        let lm = Lm::new(&self.m.model).with_steering(steering);
        let mut answers = Vec::with_capacity(self.slots.len());
        for chunk in self.slots.chunks(self.cfg.batch_size.max(1)) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|s| s.prompt.clone()).collect();
            let seeds: Vec<u64> = chunk.iter().map(|s| s.seed).collect();
            let texts =
                generate_answers(lm, &self.m.tokenizer, &prompts, &seeds, &self.cfg.sampling)?;
            for (s, answer) in chunk.iter().zip(texts) {
                answers.push(SweepAnswer {
                    question: s.question,
                    rollout: s.rollout,
                    seed: s.seed,
                    prompt: self.questions[s.question].clone(),
                    answer,
                    trait_score: None,
                    coherence: None,
                    projection: None,
                });
            }
            bar.inc(chunk.len() as u64);
        }
        Ok(answers)
    }

    /// The unsteered answers' mean projection at each layer: where steering moved it from.
    fn baseline_projections(
        &self,
        baseline: &[SweepAnswer],
        bar: &Progress,
    ) -> Result<Vec<Option<f32>>> {
        let mut sums = vec![(0.0, 0); self.layers.len()];
        for a in baseline {
            if let Some(h) = response_average(self.m, a)? {
                for ((sum, n), &l) in sums.iter_mut().zip(&self.layers) {
                    *sum += project(&h[l], &self.vector[l]);
                    *n += 1;
                }
            }
            bar.inc(1);
        }
        Ok(sums
            .into_iter()
            .map(|(sum, n)| (n > 0).then(|| sum / n as f32))
            .collect())
    }

    /// Each answer's projection at `layer`, where it was steered.
    fn project(&self, answers: &mut [SweepAnswer], layer: usize, bar: &Progress) -> Result<()> {
        for a in answers {
            a.projection =
                response_average(self.m, a)?.map(|h| project(&h[layer], &self.vector[layer]));
            bar.inc(1);
        }
        Ok(())
    }

    /// The rows (unsteered first) as a report, with the recommended layer.
    fn report(
        self,
        judge: &dyn Judge,
        mut rows: Vec<Vec<SweepAnswer>>,
        baseline_projections: Vec<Option<f32>>,
    ) -> SweepReport {
        let baseline = row(None, rows.remove(0), None);
        let layer_rows: Vec<SweepRow> = rows
            .into_iter()
            .zip(&self.layers)
            .zip(baseline_projections)
            .map(|((answers, &l), p)| row(Some(l), answers, p))
            .collect();
        SweepReport {
            trait_name: self.artifacts.trait_name.clone(),
            judge: judge.describe(),
            config: SweepConfig {
                layers: Some(self.layers),
                ..self.cfg.clone()
            },
            recommendation: recommend(&layer_rows, self.cfg.min_coherence),
            baseline,
            layers: layer_rows,
        }
    }
}

fn score(judge: &dyn Judge, trait_rubric: &str, answers: &mut [SweepAnswer]) -> Result<()> {
    let asked = answers
        .iter()
        .map(|a| (a.prompt.as_str(), a.answer.as_str()));
    let scores = judge_answers(judge, trait_rubric, asked)?;
    for (a, (trait_score, coherence)) in answers.iter_mut().zip(scores) {
        a.trait_score = trait_score;
        a.coherence = coherence;
    }
    Ok(())
}

/// The answer's response-average hidden state at every layer, as extraction measures it: an
/// unsteered forward pass of prompt + answer. `None` when the answer has no tokens.
fn response_average(m: &LoadedModel, a: &SweepAnswer) -> Result<Option<Vec<Vec<f32>>>> {
    let (ids, span) = response_span(&m.tokenizer, &chat(None, &a.prompt, Some(&a.answer)))?;
    if span.is_empty() {
        return Ok(None);
    }
    let mut acts = activation_averages(Lm::new(&m.model), &ids, span)?;
    Ok(acts.remove("response_avg"))
}

fn row(
    layer: Option<usize>,
    answers: Vec<SweepAnswer>,
    baseline_projection: Option<f32>,
) -> SweepRow {
    let (mean_trait, trait_unscored) = mean(answers.iter().map(|a| a.trait_score));
    let (mean_coherence, coherence_unscored) = mean(answers.iter().map(|a| a.coherence));
    let (mean_projection, _) = mean(answers.iter().map(|a| a.projection));
    SweepRow {
        layer,
        mean_trait,
        trait_unscored,
        mean_coherence,
        coherence_unscored,
        mean_projection,
        baseline_projection,
        answers,
    }
}

/// The mean of the present values, and how many were absent.
fn mean(values: impl Iterator<Item = Option<f32>>) -> (Option<f32>, usize) {
    let (mut sum, mut n, mut missing) = (0.0, 0, 0);
    for v in values {
        match v {
            Some(v) => (sum, n) = (sum + v, n + 1),
            None => missing += 1,
        }
    }
    ((n > 0).then(|| sum / n as f32), missing)
}

impl SweepReport {
    /// The per-layer table and the recommendation, as printed by `persona-train sweep`.
    pub fn table(&self) -> String {
        let cell = |v: Option<f32>, decimals: usize| {
            v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
        };
        let line = |c: [&str; 6]| {
            format!(
                "{:>8} {:>7} {:>9} {:>10} {:>11} {:>11}\n",
                c[0], c[1], c[2], c[3], c[4], c[5]
            )
        };
        let mut out = line([
            "layer",
            "trait",
            "no score",
            "coherence",
            "projection",
            "unsteered",
        ]);
        for r in std::iter::once(&self.baseline).chain(&self.layers) {
            out += &line([
                &r.layer.map_or("baseline".to_owned(), |l| l.to_string()),
                &cell(r.mean_trait, 1),
                &r.trait_unscored.to_string(),
                &cell(r.mean_coherence, 1),
                &cell(r.mean_projection, 2),
                &cell(r.baseline_projection, 2),
            ]);
        }
        let min = self.config.min_coherence;
        out += &match &self.recommendation {
            Some(r) if r.coherent => {
                format!("recommended: layer {} (highest mean trait score with mean coherence ≥ {min})\n", r.layer)
            }
            Some(r) => {
                // Only when the unsteered answers clear the bar is steering to blame.
                let hint = if self.baseline.mean_coherence.is_some_and(|c| c >= min) {
                    "try a smaller --coef"
                } else {
                    "the unsteered answers fall short too: the judge or the model is too weak to tell"
                };
                format!(
                    "recommended: layer {}, but no layer kept mean coherence ≥ {min}: it only has the \
                     highest trait score; {hint}\n",
                    r.layer
                )
            }
            None => "no recommendation: the judge scored no steered answer\n".to_owned(),
        };
        out
    }

    /// Trait score and coherence against the steered layer, the baseline's as dashed lines.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let layer_line = |score: fn(&SweepRow) -> Option<f32>| -> Vec<(f64, f64)> {
            self.layers
                .iter()
                .filter_map(|r| Some((r.layer? as f64, f64::from(score(r)?))))
                .collect()
        };
        let xs = self.layers.iter().filter_map(|r| r.layer).map(|l| l as f64);
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        let flat =
            |y: Option<f32>| y.map_or(vec![], |y| vec![(lo, f64::from(y)), (hi, f64::from(y))]);
        let series = vec![
            Series {
                label: "trait".into(),
                points: layer_line(|r| r.mean_trait),
                color: 0,
                dashed: false,
                scatter: false,
            },
            Series {
                label: "coherence".into(),
                points: layer_line(|r| r.mean_coherence),
                color: 1,
                dashed: false,
                scatter: false,
            },
            Series {
                label: "trait, unsteered".into(),
                points: flat(self.baseline.mean_trait),
                color: 0,
                dashed: true,
                scatter: false,
            },
            Series {
                label: "coherence, unsteered".into(),
                points: flat(self.baseline.mean_coherence),
                color: 1,
                dashed: true,
                scatter: false,
            },
        ];
        LineChart {
            title: format!(
                "{}: steering with coef {} at one layer",
                self.trait_name, self.config.coef
            ),
            x_label: "steered layer (hidden-state index)".into(),
            y_label: "mean judge score (0-100)".into(),
            y_range: Some(0.0..100.0),
            series,
        }
        .save_png(path)
    }

    /// Records the recommended layer, and the coefficient it was found with, in the vector file's
    /// metadata, where `generate --steer` looks for a layer when none is given.
    pub fn write_recommendation(&self, vector_path: &Path) -> Result<()> {
        let rec = self
            .recommendation
            .as_ref()
            .context("no layer to recommend: the judge scored no steered answer")?;
        let mut v = PersonaVector::load(vector_path)?;
        v.metadata
            .insert("recommended_layer".into(), rec.layer.to_string());
        v.metadata
            .insert("recommended_coef".into(), self.config.coef.to_string());
        v.save(vector_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_specs() {
        assert_eq!(parse_layers("4,8,12").unwrap(), [4, 8, 12]);
        assert_eq!(parse_layers("3..5, 1").unwrap(), [1, 3, 4, 5]);
        assert_eq!(parse_layers("2..=3,3").unwrap(), [2, 3]);
        assert!(parse_layers("5..2")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(parse_layers("4,x")
            .unwrap_err()
            .to_string()
            .contains("\"x\""));
        assert_eq!(default_layers(30), (2..=28).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn means_skip_missing_scores() {
        assert_eq!(
            mean([Some(10.0), None, Some(30.0)].into_iter()),
            (Some(20.0), 1)
        );
        assert_eq!(mean([None, None].into_iter()), (None, 2));
    }
}
