//! Trait scores, the paper's protocol: sample answers to the trait's evaluation questions, have
//! a judge score trait expression and coherence (0–100), and project the answers' response-
//! average activations onto the persona vector.

use crate::generate::Sampling;
use crate::judge::{Judge, JudgeConfig};
use crate::lm::Lm;
use crate::persona::activations::activation_averages;
use crate::persona::answers::{chat, generate_answers, judge_answers};
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::vector::project;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The recipe's `[eval.trait_score]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraitScoreConfig {
    /// Sampled answers per evaluation question.
    pub rollouts: usize,
    /// At most this many evaluation questions (the first ones); all when unset.
    pub questions: Option<usize>,
    pub max_new_tokens: usize,
    /// Sampling temperature (the paper samples at 1).
    pub temperature: f32,
    pub seed: u64,
    pub batch_size: usize,
    pub judge: JudgeConfig,
}

impl Default for TraitScoreConfig {
    fn default() -> Self {
        Self {
            rollouts: 1,
            questions: None,
            max_new_tokens: 64,
            temperature: 1.0,
            seed: 0,
            batch_size: 16,
            judge: JudgeConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredAnswer {
    pub question: String,
    pub answer: String,
    pub trait_score: Option<f32>,
    pub coherence: Option<f32>,
    /// Response-average activation at the vector's main layer, projected on `v̂`.
    pub projection: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraitScoreReport {
    /// Mean over the answers the judge scored; `None` when it scored none.
    pub trait_score: Option<f64>,
    pub coherence: Option<f64>,
    /// Answers with a trait score, of all answers.
    pub scored: usize,
    pub total: usize,
    /// Mean response-average projection of the answers (with a vector).
    pub projection: Option<f64>,
    pub answers: Vec<ScoredAnswer>,
}

/// Answers every evaluation question `cfg.rollouts` times (seeded per question and rollout, so
/// batching does not change a sample) through `lm`'s adapters and inference-time steering, and
/// scores them. `vector` is the persona vector's row at the layer to project on, with its
/// hidden-state index.
pub fn evaluate(
    lm: Lm,
    tokenizer: &Tokenizer,
    artifacts: &TraitArtifacts,
    judge: &dyn Judge,
    vector: Option<(usize, &[f32])>,
    cfg: &TraitScoreConfig,
) -> Result<TraitScoreReport> {
    let n = cfg
        .questions
        .unwrap_or(usize::MAX)
        .min(artifacts.eval_questions.len());
    let scorer = Scorer {
        lm,
        tokenizer,
        questions: &artifacts.eval_questions[..n],
        rubric: &artifacts.eval_prompt,
        judge,
        vector,
    };
    let jobs: Vec<(usize, usize)> = (0..n)
        .flat_map(|q| (0..cfg.rollouts).map(move |r| (q, r)))
        .collect();
    let bar = Progress::new(jobs.len() as u64, "trait score");
    let mut answers = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(cfg.batch_size.max(1)) {
        let texts = scorer.answer(chunk, cfg)?;
        answers.extend(scorer.score(chunk, texts)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mean = |xs: Vec<f32>| {
        (!xs.is_empty()).then(|| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64)
    };
    Ok(TraitScoreReport {
        trait_score: mean(answers.iter().filter_map(|a| a.trait_score).collect()),
        coherence: mean(answers.iter().filter_map(|a| a.coherence).collect()),
        scored: answers.iter().filter(|a| a.trait_score.is_some()).count(),
        total: answers.len(),
        projection: mean(answers.iter().filter_map(|a| a.projection).collect()),
        answers,
    })
}

/// What answering and scoring one batch of `(question, rollout)` jobs needs.
struct Scorer<'a> {
    lm: Lm<'a>,
    tokenizer: &'a Tokenizer,
    questions: &'a [String],
    rubric: &'a str,
    judge: &'a dyn Judge,
    vector: Option<(usize, &'a [f32])>,
}

impl Scorer<'_> {
    /// One sampled answer per job.
    fn answer(&self, jobs: &[(usize, usize)], cfg: &TraitScoreConfig) -> Result<Vec<String>> {
        let prompts = jobs
            .iter()
            .map(|&(q, _)| {
                let chat = chat(None, &self.questions[q], None);
                Ok(self.tokenizer.encode_chat(&chat, true)?.ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let seeds: Vec<u64> = jobs
            .iter()
            .map(|&(q, r)| cfg.seed.wrapping_add((q * 1_000 + r) as u64))
            .collect();
        let sampling = Sampling {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_p: 1.0,
            seed: cfg.seed,
        };
        generate_answers(self.lm, self.tokenizer, &prompts, &seeds, &sampling)
    }

    /// The judge's trait and coherence scores of each answer, and its projection.
    fn score(&self, jobs: &[(usize, usize)], texts: Vec<String>) -> Result<Vec<ScoredAnswer>> {
        let pairs = jobs
            .iter()
            .zip(&texts)
            .map(|(&(q, _), a)| (self.questions[q].as_str(), a.as_str()));
        let scores = judge_answers(self.judge, self.rubric, pairs)?;
        let mut out = Vec::with_capacity(jobs.len());
        for ((&(q, _), answer), (trait_score, coherence)) in jobs.iter().zip(texts).zip(scores) {
            out.push(ScoredAnswer {
                question: self.questions[q].clone(),
                projection: self.projection(&self.questions[q], &answer)?,
                answer,
                trait_score,
                coherence,
            });
        }
        Ok(out)
    }

    /// The answer's response-average activation at the vector's layer (through the adapters,
    /// without steering) projected on it; `None` without a vector or for an empty answer.
    fn projection(&self, question: &str, answer: &str) -> Result<Option<f32>> {
        let Some((layer, v)) = self.vector else {
            return Ok(None);
        };
        let enc = self
            .tokenizer
            .encode_chat(&chat(None, question, Some(answer)), false)?;
        let (Some(start), Some(end)) = (enc.response_start, enc.response_end) else {
            return Ok(None);
        };
        if end <= start {
            return Ok(None);
        }
        let acts = activation_averages(self.lm.with_steering(None), &enc.ids, start..end)
            .context("answer activations")?;
        Ok(Some(project(&acts["response_avg"][layer], v)))
    }
}
