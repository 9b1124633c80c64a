//! Persona-vector extraction: answer the trait's extraction questions under positive and
//! negative system prompts, keep the pairs a judge says express / do not express the trait, and
//! take the difference of mean hidden states at every layer.
//!
//! Rollouts and their scores are written to JSONL as they finish, so a re-run resumes from them.

use crate::generate::{generate_seeded, Sampling, Specials};
use crate::judge::{rubric, Judge};
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::persona::activations::{activation_averages, mean_difference};
use crate::persona::artifacts::{Polarity, SystemPromptTemplate, TraitArtifacts};
use crate::persona::vector::PersonaVector;
use crate::progress::Progress;
use crate::tokenizer::ChatMessage;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything `persona-train extract` can be told. Defaults are the `Default` impl.
#[derive(Debug, Clone)]
pub struct ExtractConfig {
    /// Sampled answers per question × instruction pair and polarity.
    pub rollouts: usize,
    pub sampling: Sampling,
    /// Prompts generated together.
    pub batch_size: usize,
    /// Positive answers need a trait score ≥ this, negative ones < this.
    pub trait_threshold: f32,
    /// Both answers of a pair need a coherence score ≥ this.
    pub coherence_threshold: f32,
    /// Keep every pair regardless of scores (judging still runs, for the record).
    pub no_filter: bool,
    pub template: SystemPromptTemplate,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            rollouts: 1,
            sampling: Sampling {
                max_new_tokens: 96,
                temperature: 1.0,
                top_p: 1.0,
                seed: 0,
            },
            batch_size: 16,
            trait_threshold: 50.0,
            coherence_threshold: 50.0,
            no_filter: false,
            template: SystemPromptTemplate::default(),
        }
    }
}

/// One generated answer with its scores; pairs are matched by (question, instruction, rollout).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rollout {
    pub question: usize,
    pub instruction: usize,
    pub rollout: usize,
    pub polarity: String,
    pub system: String,
    pub prompt: String,
    pub answer: String,
    pub trait_score: Option<f32>,
    pub coherence: Option<f32>,
}

impl Rollout {
    fn key(&self) -> (usize, usize, usize, String) {
        (
            self.question,
            self.instruction,
            self.rollout,
            self.polarity.clone(),
        )
    }
}

fn polarity_name(p: Polarity) -> &'static str {
    match p {
        Polarity::Positive => "pos",
        Polarity::Negative => "neg",
    }
}

/// The JSONL file of rollouts written beside a vector file.
pub fn rollouts_path(out: &Path) -> PathBuf {
    out.with_extension("rollouts.jsonl")
}

#[derive(Debug)]
pub struct ExtractSummary {
    pub kept: usize,
    pub dropped: usize,
}

pub fn extract(
    m: &LoadedModel,
    model_source: &str,
    artifacts: &TraitArtifacts,
    judge: Option<&dyn Judge>,
    cfg: &ExtractConfig,
    out: &Path,
) -> Result<ExtractSummary> {
    anyhow::ensure!(
        judge.is_some() || cfg.no_filter,
        "extraction without a judge keeps every pair, so it needs no_filter"
    );
    let rollouts_file = rollouts_path(out);
    let mut done: BTreeMap<(usize, usize, usize, String), Rollout> = read_rollouts(&rollouts_file)?
        .into_iter()
        .map(|r| (r.key(), r))
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} rollouts already in {}",
            done.len(),
            rollouts_file.display()
        );
    }

    let mut todo = Vec::new();
    for (qi, q) in artifacts.questions.iter().enumerate() {
        for ii in 0..artifacts.instruction.len() {
            for r in 0..cfg.rollouts {
                for pol in [Polarity::Positive, Polarity::Negative] {
                    let key = (qi, ii, r, polarity_name(pol).to_owned());
                    if !done.contains_key(&key) {
                        todo.push(Rollout {
                            question: qi,
                            instruction: ii,
                            rollout: r,
                            polarity: key.3,
                            system: artifacts.system_prompt(pol, ii, &cfg.template),
                            prompt: q.clone(),
                            answer: String::new(),
                            trait_score: None,
                            coherence: None,
                        });
                    }
                }
            }
        }
    }

    let bar = Progress::new(
        todo.len() as u64,
        if judge.is_some() {
            "generating + judging"
        } else {
            "generating"
        },
    );
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rollouts_file)
        .with_context(|| format!("cannot open {}", rollouts_file.display()))?;
    for chunk in todo.chunks_mut(cfg.batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|r| Ok(m.tokenizer.encode_chat(&chat(r, None), true)?.ids))
            .collect::<Result<Vec<_>>>()?;
        // Seeded by the rollout's key, so a resumed run samples what an uninterrupted one would.
        let seeds: Vec<u64> = chunk
            .iter()
            .map(|r| rollout_seed(cfg.sampling.seed, r))
            .collect();
        let answers = generate_seeded(
            Lm::new(&m.model),
            &prompts,
            &seeds,
            &Specials::of(&m.tokenizer),
            &cfg.sampling,
        )?;
        for (r, ids) in chunk.iter_mut().zip(answers) {
            r.answer = m.tokenizer.decode(&ids, true)?;
        }
        let trait_prompts: Vec<String> = chunk
            .iter()
            .map(|r| rubric::fill(&artifacts.eval_prompt, &r.prompt, &r.answer))
            .collect();
        let coherence_prompts: Vec<String> = chunk
            .iter()
            .map(|r| rubric::fill(rubric::COHERENCE, &r.prompt, &r.answer))
            .collect();
        let (traits, coherence) = match judge {
            Some(j) => (j.score(&trait_prompts)?, j.score(&coherence_prompts)?),
            None => (vec![None; chunk.len()], vec![None; chunk.len()]),
        };
        for ((r, t), c) in chunk.iter_mut().zip(traits).zip(coherence) {
            r.trait_score = t;
            r.coherence = c;
            writeln!(writer, "{}", serde_json::to_string(r)?)?;
            done.insert(r.key(), r.clone());
        }
        writer.flush()?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish();

    // Pair by explicit key, never by row order.
    let mut kept = Vec::new();
    let mut dropped = 0;
    for qi in 0..artifacts.questions.len() {
        for ii in 0..artifacts.instruction.len() {
            for r in 0..cfg.rollouts {
                let pos = &done[&(qi, ii, r, "pos".to_owned())];
                let neg = &done[&(qi, ii, r, "neg".to_owned())];
                if cfg.no_filter || keep_pair(pos, neg, cfg) {
                    kept.push((pos.clone(), neg.clone()));
                } else {
                    dropped += 1;
                }
            }
        }
    }
    anyhow::ensure!(
        !kept.is_empty(),
        "no rollout pair passed the filter (positive trait ≥ {t}, negative < {t}, coherence ≥ {c}); \
         see {} — try more --rollouts, a stronger judge, or --no-filter",
        rollouts_file.display(),
        t = cfg.trait_threshold,
        c = cfg.coherence_threshold,
    );

    let bar = Progress::new(kept.len() as u64 * 2, "activations");
    let (mut pos_acts, mut neg_acts) = (Vec::new(), Vec::new());
    for (pos, neg) in &kept {
        for (r, acts) in [(pos, &mut pos_acts), (neg, &mut neg_acts)] {
            let enc = m.tokenizer.encode_chat(&chat(r, Some(&r.answer)), false)?;
            let start = enc
                .response_start
                .context("rendered chat has no assistant span")?;
            let end = enc.response_end.unwrap_or(enc.ids.len());
            acts.push(
                activation_averages(Lm::new(&m.model), &enc.ids, start..end).with_context(
                    || format!("question {}, instruction {}", r.question, r.instruction),
                )?,
            );
            bar.inc(1);
        }
    }
    bar.finish();
    let vectors = mean_difference(&pos_acts, &neg_acts);
    let metadata = BTreeMap::from([
        ("trait".to_owned(), artifacts.trait_name.clone()),
        ("model_source".to_owned(), model_source.to_owned()),
        ("model_sha256".to_owned(), model_sha256(&m.files)?),
        (
            "layer_convention".to_owned(),
            "row l = hidden_states[l]: 0 = embedding output, N = output of block N-1, last = after final norm".to_owned(),
        ),
        ("pairs_kept".to_owned(), kept.len().to_string()),
        ("pairs_dropped".to_owned(), dropped.to_string()),
        ("trait_threshold".to_owned(), cfg.trait_threshold.to_string()),
        ("coherence_threshold".to_owned(), cfg.coherence_threshold.to_string()),
        ("filtered".to_owned(), (!cfg.no_filter).to_string()),
        (
            "judge".to_owned(),
            judge.map_or_else(|| "none".to_owned(), |j| j.describe()),
        ),
        ("rollouts".to_owned(), cfg.rollouts.to_string()),
        ("max_new_tokens".to_owned(), cfg.sampling.max_new_tokens.to_string()),
        ("seed".to_owned(), cfg.sampling.seed.to_string()),
    ]);
    PersonaVector { vectors, metadata }.save(out)?;
    Ok(ExtractSummary {
        kept: kept.len(),
        dropped,
    })
}

fn rollout_seed(base: u64, r: &Rollout) -> u64 {
    let pol = (r.polarity == "pos") as u64;
    [
        r.question as u64,
        r.instruction as u64,
        r.rollout as u64,
        pol,
    ]
    .iter()
    .fold(base, |h, &x| {
        (h ^ x).wrapping_mul(0x100000001b3).rotate_left(17)
    })
}

fn keep_pair(pos: &Rollout, neg: &Rollout, cfg: &ExtractConfig) -> bool {
    let ge = |s: Option<f32>, t: f32| s.is_some_and(|s| s >= t);
    let lt = |s: Option<f32>, t: f32| s.is_some_and(|s| s < t);
    ge(pos.trait_score, cfg.trait_threshold)
        && lt(neg.trait_score, cfg.trait_threshold)
        && ge(pos.coherence, cfg.coherence_threshold)
        && ge(neg.coherence, cfg.coherence_threshold)
}

fn chat(r: &Rollout, answer: Option<&str>) -> Vec<ChatMessage> {
    let mut messages = vec![
        ChatMessage {
            role: "system".into(),
            content: r.system.clone(),
        },
        ChatMessage {
            role: "user".into(),
            content: r.prompt.clone(),
        },
    ];
    if let Some(a) = answer {
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: a.to_owned(),
        });
    }
    messages
}

/// Rollouts already written. A crash can tear the last line; it is dropped (and the file
/// rewritten without it) so appending resumes cleanly. A bad line elsewhere is an error.
fn read_rollouts(path: &Path) -> Result<Vec<Rollout>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut rollouts = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => rollouts.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!(
                    "{}: dropping a torn last line from an interrupted run",
                    path.display()
                );
                let kept: String = lines[..i].iter().map(|l| format!("{l}\n")).collect();
                crate::atomic::write(path, kept)?;
            }
            Err(e) => anyhow::bail!(
                "{}: line {}: not a rollout record: {e}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(rollouts)
}

/// SHA-256 of the model's bytes: the GGUF file, or a directory's config and weight files in name
/// order, so a vector records exactly which weights it was measured on.
fn model_sha256(files: &crate::source::ModelFiles) -> Result<String> {
    use sha2::Digest;
    let paths = files.weight_files()?;
    let mut hasher = sha2::Sha256::new();
    for path in paths {
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        std::io::copy(&mut file, &mut hasher)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}
