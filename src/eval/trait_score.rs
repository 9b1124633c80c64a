//! Trait scores, the paper's protocol: sample answers to the trait's evaluation questions, have
//! a judge score trait expression and coherence (0–100), and project the answers' response-
//! average activations onto the persona vector.

use crate::generate::{generate_seeded, Sampling};
use crate::judge::{rubric, Judge, JudgeConfig};
use crate::loader::LoadedModel;
use crate::lora::Adapters;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::extract::activation_averages;
use crate::persona::vector::project;
use crate::progress::Progress;
use crate::steering::Steering;
use crate::tokenizer::ChatMessage;
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
/// batching does not change a sample) through `adapters` and inference-time `steering`, and
/// scores them. `vector` is the persona vector's row at the layer to project on, with its
/// hidden-state index.
pub fn evaluate(
    lm: &LoadedModel,
    adapters: Option<&Adapters>,
    steering: Option<&Steering>,
    artifacts: &TraitArtifacts,
    judge: &dyn Judge,
    vector: Option<(usize, &[f32])>,
    cfg: &TraitScoreConfig,
) -> Result<TraitScoreReport> {
    let n = cfg
        .questions
        .unwrap_or(usize::MAX)
        .min(artifacts.eval_questions.len());
    let questions = &artifacts.eval_questions[..n];
    let jobs: Vec<(usize, usize)> = (0..n)
        .flat_map(|q| (0..cfg.rollouts).map(move |r| (q, r)))
        .collect();
    let sampling = Sampling {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        top_p: 1.0,
        seed: cfg.seed,
    };
    let pad = lm.tokenizer.pad_id().or(lm.tokenizer.eos_id()).unwrap_or(0);
    let bar = Progress::new(jobs.len() as u64, "trait score");
    let mut answers = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(cfg.batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|&(q, _)| {
                Ok(lm
                    .tokenizer
                    .encode_chat(&[ChatMessage::new("user", &questions[q])], true)?
                    .ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let seeds: Vec<u64> = chunk
            .iter()
            .map(|&(q, r)| cfg.seed.wrapping_add((q * 1_000 + r) as u64))
            .collect();
        let replies = generate_seeded(
            &lm.model,
            adapters,
            &prompts,
            &seeds,
            lm.tokenizer.stop_ids(),
            pad,
            &sampling,
            steering,
        )?;
        let texts = replies
            .iter()
            .map(|ids| lm.tokenizer.decode(ids, true))
            .collect::<Result<Vec<_>>>()?;
        let trait_prompts: Vec<String> = chunk
            .iter()
            .zip(&texts)
            .map(|(&(q, _), a)| rubric::fill(&artifacts.eval_prompt, &questions[q], a))
            .collect();
        let coherence_prompts: Vec<String> = chunk
            .iter()
            .zip(&texts)
            .map(|(&(q, _), a)| rubric::fill(rubric::COHERENCE, &questions[q], a))
            .collect();
        let traits = judge.score(&trait_prompts)?;
        let coherence = judge.score(&coherence_prompts)?;
        for (i, &(q, _)) in chunk.iter().enumerate() {
            let projection = match vector {
                Some((layer, v)) => {
                    answer_projection(lm, adapters, &questions[q], &texts[i], layer, v)?
                }
                None => None,
            };
            answers.push(ScoredAnswer {
                question: questions[q].clone(),
                answer: texts[i].clone(),
                trait_score: traits[i],
                coherence: coherence[i],
                projection,
            });
        }
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

/// The answer's response-average activation at hidden-state `layer`, projected on `v`; `None`
/// for an empty answer.
fn answer_projection(
    lm: &LoadedModel,
    adapters: Option<&Adapters>,
    question: &str,
    answer: &str,
    layer: usize,
    v: &[f32],
) -> Result<Option<f32>> {
    let chat = [
        ChatMessage::new("user", question),
        ChatMessage::new("assistant", answer),
    ];
    let enc = lm.tokenizer.encode_chat(&chat, false)?;
    let (Some(start), Some(end)) = (enc.response_start, enc.response_end) else {
        return Ok(None);
    };
    if end <= start {
        return Ok(None);
    }
    let acts = activation_averages(&lm.model, adapters, &enc.ids, start..end)
        .context("answer activations")?;
    Ok(Some(project(&acts["response_avg"][layer], v)))
}
