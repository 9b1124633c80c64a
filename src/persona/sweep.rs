//! Layer sweep: steer with a persona vector at one layer at a time, answer the trait's
//! evaluation questions, and let a judge say at which layer steering expresses the trait most
//! while the answers stay coherent.
//!
//! Every layer answers each (question, rollout) with the same sampling seed as the unsteered
//! baseline, so differences between rows come from steering, not from sampling.

use crate::generate::{generate_seeded, Sampling, Specials};
use crate::judge::{rubric, Judge};
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::persona::activations::activation_averages;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::vector::{project, PersonaVector};
use crate::plot::{LineChart, Series};
use crate::progress::Progress;
use crate::steering::{Positions, SteerLayers, Steering};
use crate::tokenizer::ChatMessage;
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
                top_p: 1.0,
                seed: 0,
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
    let (num_layers, hidden) = (m.model.config().num_layers, m.model.config().hidden_size);
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
    // Built before anything runs, so a vector that does not fit fails at once.
    let steerings = layers
        .iter()
        .map(|&l| {
            Steering::new(
                vector,
                SteerLayers::Single(l),
                cfg.coef,
                Positions::Response,
                num_layers,
                hidden,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let questions = &artifacts.eval_questions[..cfg.questions.min(artifacts.eval_questions.len())];
    let mut slots = Vec::new();
    for (question, text) in questions.iter().enumerate() {
        let prompt = m.tokenizer.encode_chat(&chat(text, None), true)?.ids;
        for rollout in 0..cfg.rollouts {
            slots.push(Slot {
                question,
                rollout,
                seed: answer_seed(cfg.sampling.seed, question, rollout),
                prompt: prompt.clone(),
            });
        }
    }
    let runs: Vec<Option<&Steering>> = std::iter::once(None)
        .chain(steerings.iter().map(Some))
        .collect();
    let total = (slots.len() * runs.len()) as u64;

    let bar = Progress::new(total, "generating");
    let mut rows = Vec::with_capacity(runs.len());
    for steering in &runs {
        rows.push(answer(m, questions, &slots, *steering, cfg, &bar)?);
    }
    bar.finish();

    let bar = Progress::new(total, "judging");
    for answers in &mut rows {
        score(judge, &artifacts.eval_prompt, answers)?;
        bar.inc(answers.len() as u64);
    }
    bar.finish();

    let bar = Progress::new(total, "projections");
    let mut baseline_sums = vec![(0.0, 0); layers.len()];
    for a in &rows[0] {
        if let Some(h) = response_average(m, a)? {
            for ((sum, n), &l) in baseline_sums.iter_mut().zip(&layers) {
                *sum += project(&h[l], &vector[l]);
                *n += 1;
            }
        }
        bar.inc(1);
    }
    for (answers, &l) in rows[1..].iter_mut().zip(&layers) {
        for a in answers.iter_mut() {
            a.projection = response_average(m, a)?.map(|h| project(&h[l], &vector[l]));
            bar.inc(1);
        }
    }
    bar.finish();

    let baseline = row(None, rows.remove(0), None);
    let layer_rows: Vec<SweepRow> = rows
        .into_iter()
        .zip(&layers)
        .zip(baseline_sums)
        .map(|((answers, &l), (sum, n))| row(Some(l), answers, (n > 0).then(|| sum / n as f32)))
        .collect();
    Ok(SweepReport {
        trait_name: artifacts.trait_name.clone(),
        judge: judge.describe(),
        config: SweepConfig {
            layers: Some(layers),
            ..cfg.clone()
        },
        recommendation: recommend(&layer_rows, cfg.min_coherence),
        baseline,
        layers: layer_rows,
    })
}

/// Every slot's answer under one steering (or none), in batches.
fn answer(
    m: &LoadedModel,
    questions: &[String],
    slots: &[Slot],
    steering: Option<&Steering>,
    cfg: &SweepConfig,
    bar: &Progress,
) -> Result<Vec<SweepAnswer>> {
    let lm = Lm::new(&m.model).with_steering(steering);
    let specials = Specials::of(&m.tokenizer);
    let mut answers = Vec::with_capacity(slots.len());
    for chunk in slots.chunks(cfg.batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|s| s.prompt.clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|s| s.seed).collect();
        let ids = generate_seeded(lm, &prompts, &seeds, &specials, &cfg.sampling)?;
        for (s, ids) in chunk.iter().zip(ids) {
            answers.push(SweepAnswer {
                question: s.question,
                rollout: s.rollout,
                seed: s.seed,
                prompt: questions[s.question].clone(),
                answer: m.tokenizer.decode(&ids, true)?,
                trait_score: None,
                coherence: None,
                projection: None,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    Ok(answers)
}

fn score(judge: &dyn Judge, trait_rubric: &str, answers: &mut [SweepAnswer]) -> Result<()> {
    let fill = |template: &str| -> Vec<String> {
        answers
            .iter()
            .map(|a| rubric::fill(template, &a.prompt, &a.answer))
            .collect()
    };
    let (trait_prompts, coherence_prompts) = (fill(trait_rubric), fill(rubric::COHERENCE));
    let traits = judge.score(&trait_prompts)?;
    let coherence = judge.score(&coherence_prompts)?;
    ensure!(
        traits.len() == answers.len() && coherence.len() == answers.len(),
        "the judge returned {} and {} scores for {} answers",
        traits.len(),
        coherence.len(),
        answers.len()
    );
    for ((a, t), c) in answers.iter_mut().zip(traits).zip(coherence) {
        a.trait_score = t;
        a.coherence = c;
    }
    Ok(())
}

/// The answer's response-average hidden state at every layer, as extraction measures it: an
/// unsteered forward pass of prompt + answer. `None` when the answer has no tokens.
fn response_average(m: &LoadedModel, a: &SweepAnswer) -> Result<Option<Vec<Vec<f32>>>> {
    let enc = m
        .tokenizer
        .encode_chat(&chat(&a.prompt, Some(&a.answer)), false)?;
    let start = enc
        .response_start
        .context("rendered chat has no assistant span")?;
    let end = enc.response_end.unwrap_or(enc.ids.len());
    if end <= start {
        return Ok(None);
    }
    let mut acts = activation_averages(Lm::new(&m.model), &enc.ids, start..end)?;
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

fn answer_seed(base: u64, question: usize, rollout: usize) -> u64 {
    [question as u64, rollout as u64]
        .iter()
        .fold(base, |h, &x| {
            (h ^ x).wrapping_mul(0x100000001b3).rotate_left(17)
        })
}

fn chat(question: &str, answer: Option<&str>) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::new("user", question)];
    if let Some(a) = answer {
        messages.push(ChatMessage::new("assistant", a));
    }
    messages
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
