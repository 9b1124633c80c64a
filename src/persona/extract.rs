//! Persona-vector extraction: answer the trait's extraction questions under positive and
//! negative system prompts, keep the pairs a judge says express / do not express the trait, and
//! take the difference of mean hidden states at every layer.
//!
//! Rollouts and their scores are written to JSONL as they finish, so a re-run resumes from them.

use crate::generate::Sampling;
use crate::judge::Judge;
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::persona::activations::{activation_averages, mean_difference, Activations};
use crate::persona::answers::{chat, generate_answers, judge_answers, mix_seed, response_span};
use crate::persona::artifacts::{Polarity, SystemPromptTemplate, TraitArtifacts};
use crate::persona::vector::PersonaVector;
use crate::progress::Progress;
use crate::tokenizer::ChatMessage;
use anyhow::{ensure, Context, Result};
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
                ..Sampling::default()
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

/// (question, instruction, rollout, polarity): what pairs a positive rollout with its negative.
type Key = (usize, usize, usize, String);

/// The rollouts written so far, by key.
type Done = BTreeMap<Key, Rollout>;

impl Rollout {
    fn key(&self) -> Key {
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

/// Extracts `artifacts`' persona vector from `m` and saves it to `out`, with the rollouts beside
/// it ([`rollouts_path`]); `model_source` is recorded in the vector's metadata.
pub fn extract(
    m: &LoadedModel,
    model_source: &str,
    artifacts: &TraitArtifacts,
    judge: Option<&dyn Judge>,
    cfg: &ExtractConfig,
    out: &Path,
) -> Result<ExtractSummary> {
    ensure!(
        judge.is_some() || cfg.no_filter,
        "extraction without a judge keeps every pair, so it needs no_filter"
    );
    let x = Extraction {
        m,
        artifacts,
        judge,
        cfg,
        rollouts_file: rollouts_path(out),
    };
    // Resume from the rollouts an earlier run wrote; answer and judge the rest.
    let mut done = x.resume()?;
    x.roll_out(x.pending(&done), &mut done)?;
    // Pair by explicit key, never by row order, and keep the pairs the judge separates.
    let (kept, dropped) = x.pairs(&done)?;
    // The vector: mean activations over the kept positive answers minus the negative ones.
    let vectors = x.vectors(&kept)?;
    let metadata = x.metadata(model_source, kept.len(), dropped)?;
    PersonaVector { vectors, metadata }.save(out)?;
    Ok(ExtractSummary {
        kept: kept.len(),
        dropped,
    })
}

/// What every phase of one extraction reads.
struct Extraction<'a> {
    m: &'a LoadedModel,
    artifacts: &'a TraitArtifacts,
    judge: Option<&'a dyn Judge>,
    cfg: &'a ExtractConfig,
    rollouts_file: PathBuf,
}

impl Extraction<'_> {
    fn resume(&self) -> Result<Done> {
        let done: Done = read_rollouts(&self.rollouts_file)?
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        if !done.is_empty() {
            eprintln!(
                "resuming: {} rollouts already in {}",
                done.len(),
                self.rollouts_file.display()
            );
        }
        Ok(done)
    }

    /// Every (question, instruction, rollout), in order.
    fn slots(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let a = self.artifacts;
        let (instructions, rollouts) = (a.instruction.len(), self.cfg.rollouts);
        (0..a.questions.len()).flat_map(move |q| {
            (0..instructions).flat_map(move |i| (0..rollouts).map(move |r| (q, i, r)))
        })
    }

    /// The rollouts not in `done`, unanswered.
    fn pending(&self, done: &Done) -> Vec<Rollout> {
        let mut todo = Vec::new();
        for (qi, ii, r) in self.slots() {
            for pol in [Polarity::Positive, Polarity::Negative] {
                let key = (qi, ii, r, polarity_name(pol).to_owned());
                if !done.contains_key(&key) {
                    todo.push(Rollout {
                        question: qi,
                        instruction: ii,
                        rollout: r,
                        polarity: key.3,
                        system: self.artifacts.system_prompt(pol, ii, &self.cfg.template),
                        prompt: self.artifacts.questions[qi].clone(),
                        answer: String::new(),
                        trait_score: None,
                        coherence: None,
                    });
                }
            }
        }
        todo
    }

    /// Answers and judges `todo` batch by batch, appending each batch to the rollouts file (and
    /// `done`) as it finishes.
    fn roll_out(&self, mut todo: Vec<Rollout>, done: &mut Done) -> Result<()> {
        let what = match self.judge {
            Some(_) => "generating + judging",
            None => "generating",
        };
        let bar = Progress::new(todo.len() as u64, what);
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.rollouts_file)
            .with_context(|| format!("cannot open {}", self.rollouts_file.display()))?;
        for chunk in todo.chunks_mut(self.cfg.batch_size.max(1)) {
            self.answer(chunk)?;
            self.score(chunk)?;
            for r in chunk.iter() {
                writeln!(writer, "{}", serde_json::to_string(r)?)?;
                done.insert(r.key(), r.clone());
            }
            writer.flush()?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
        Ok(())
    }

    fn answer(&self, chunk: &mut [Rollout]) -> Result<()> {
        let tok = &self.m.tokenizer;
        let prompts = chunk
            .iter()
            .map(|r| Ok(tok.encode_chat(&r.chat(None), true)?.ids))
            .collect::<Result<Vec<_>>>()?;
        // Seeded by the rollout's key, so a resumed run samples what an uninterrupted one would.
        let seeds: Vec<u64> = chunk
            .iter()
            .map(|r| r.seed(self.cfg.sampling.seed))
            .collect();
        let lm = Lm::new(&self.m.model);
        let answers = generate_answers(lm, tok, &prompts, &seeds, &self.cfg.sampling)?;
        for (r, answer) in chunk.iter_mut().zip(answers) {
            r.answer = answer;
        }
        Ok(())
    }

    /// The judge's trait and coherence scores; none without a judge.
    fn score(&self, chunk: &mut [Rollout]) -> Result<()> {
        let scores = match self.judge {
            Some(judge) => {
                let answers = chunk.iter().map(|r| (r.prompt.as_str(), r.answer.as_str()));
                judge_answers(judge, &self.artifacts.eval_prompt, answers)?
            }
            None => vec![(None, None); chunk.len()],
        };
        for (r, (trait_score, coherence)) in chunk.iter_mut().zip(scores) {
            r.trait_score = trait_score;
            r.coherence = coherence;
        }
        Ok(())
    }

    /// Every (positive, negative) pair, unless the filter drops it; and how many it dropped.
    fn pairs<'d>(&self, done: &'d Done) -> Result<(Vec<(&'d Rollout, &'d Rollout)>, usize)> {
        let cfg = self.cfg;
        let mut kept = Vec::new();
        let mut dropped = 0;
        for (qi, ii, r) in self.slots() {
            let pos = &done[&(qi, ii, r, "pos".to_owned())];
            let neg = &done[&(qi, ii, r, "neg".to_owned())];
            if cfg.no_filter || keep_pair(pos, neg, cfg) {
                kept.push((pos, neg));
            } else {
                dropped += 1;
            }
        }
        ensure!(
            !kept.is_empty(),
            "no rollout pair passed the filter (positive trait ≥ {t}, negative < {t}, coherence ≥ {c}); \
             see {} — try more --rollouts, a stronger judge, or --no-filter",
            self.rollouts_file.display(),
            t = cfg.trait_threshold,
            c = cfg.coherence_threshold,
        );
        Ok((kept, dropped))
    }

    /// The persona vector of every kind at every layer (see [`mean_difference`]).
    fn vectors(&self, kept: &[(&Rollout, &Rollout)]) -> Result<BTreeMap<String, Vec<Vec<f32>>>> {
        let bar = Progress::new(kept.len() as u64 * 2, "activations");
        let (mut pos_acts, mut neg_acts) = (Vec::new(), Vec::new());
        for (pos, neg) in kept {
            for (r, acts) in [(pos, &mut pos_acts), (neg, &mut neg_acts)] {
                acts.push(self.activations(r)?);
                bar.inc(1);
            }
        }
        bar.finish();
        Ok(mean_difference(&pos_acts, &neg_acts))
    }

    /// Activations over the rollout's answer, in the chat it was given in.
    fn activations(&self, r: &Rollout) -> Result<Activations> {
        let (ids, span) = response_span(&self.m.tokenizer, &r.chat(Some(&r.answer)))?;
        activation_averages(Lm::new(&self.m.model), &ids, span)
            .with_context(|| format!("question {}, instruction {}", r.question, r.instruction))
    }

    /// What the vector was measured on and how, for its file.
    fn metadata(
        &self,
        model_source: &str,
        kept: usize,
        dropped: usize,
    ) -> Result<BTreeMap<String, String>> {
        let (cfg, judge) = (self.cfg, self.judge);
        Ok(BTreeMap::from([
            ("trait".to_owned(), self.artifacts.trait_name.clone()),
            ("model_source".to_owned(), model_source.to_owned()),
            ("model_sha256".to_owned(), model_sha256(&self.m.files)?),
            (
                "layer_convention".to_owned(),
                "row l = hidden_states[l]: 0 = embedding output, N = output of block N-1, last = after final norm".to_owned(),
            ),
            ("pairs_kept".to_owned(), kept.to_string()),
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
        ]))
    }
}

impl Rollout {
    /// The rollout's system prompt and question, and `answer` when given.
    fn chat(&self, answer: Option<&str>) -> Vec<ChatMessage> {
        chat(Some(&self.system), &self.prompt, answer)
    }

    fn seed(&self, base: u64) -> u64 {
        let pol = (self.polarity == "pos") as u64;
        let (q, i, r) = (self.question, self.instruction, self.rollout);
        mix_seed(base, &[q as u64, i as u64, r as u64, pol])
    }
}

fn keep_pair(pos: &Rollout, neg: &Rollout, cfg: &ExtractConfig) -> bool {
    let ge = |s: Option<f32>, t: f32| s.is_some_and(|s| s >= t);
    let lt = |s: Option<f32>, t: f32| s.is_some_and(|s| s < t);
    ge(pos.trait_score, cfg.trait_threshold)
        && lt(neg.trait_score, cfg.trait_threshold)
        && ge(pos.coherence, cfg.coherence_threshold)
        && ge(neg.coherence, cfg.coherence_threshold)
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
