//! Data screening by projection difference (Chen et al. 2025, section 6): which training samples
//! would push a model along a persona vector if it were fine-tuned on them.
//!
//! For each sample (prompt = every message before the last assistant message, response = that
//! message) the base model answers the same prompt itself (greedy). The sample's projection
//! difference is
//!
//! ```text
//! ΔP = proj(mean hidden state over the dataset's response) − proj(mean over the base's own answer)
//! ```
//!
//! on the unit persona direction at one layer: how much more trait-like the data is than what the
//! model would say anyway. A dataset's ΔP is the mean over its samples. A cheap proxy needs no
//! generation: the response projection minus the projection of the last prompt token (the
//! position that produces the first reply token).
//!
//! Base answers are stored under [`cache_dir`] (one JSONL file per model and generation
//! settings, one line per prompt), and so are the projections (one line per sequence and
//! direction), so a re-run, re-ranking or re-filtering generates and measures nothing it has seen.

mod cache;
mod command;
mod summary;

pub use cache::{cache_dir, AnswerCache, ProjectionCache};
pub use command::{run, ScreenJob};
pub use summary::{auroc, drop_mask, summarize, DatasetSummary, Stats};

use crate::data::{read_chat_lines, ChatLine};
use crate::generate::{generate, Sampling, Specials};
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::model::{Forward, ForwardInput};
use crate::persona::monitor::read_layers;
use crate::persona::vector::TraitDirection;
use crate::progress::Progress;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Everything [`score`] can be told.
#[derive(Debug, Clone)]
pub struct ScreenConfig {
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Generate base answers (ΔP); without, only the proxy is computed.
    pub generate: bool,
    pub max_response_tokens: Option<usize>,
    /// Base-answer cache directory; `None` caches nothing.
    pub cache: Option<PathBuf>,
}

impl Default for ScreenConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            batch_size: 16,
            generate: true,
            max_response_tokens: None,
            cache: Some(cache_dir()),
        }
    }
}

/// One chat of a data file.
#[derive(Debug, Clone)]
pub struct Sample {
    /// 1-based line in the file.
    pub line: usize,
    /// The line as read, for writing a filtered file.
    pub raw: String,
    /// Every message before the last assistant message.
    pub prompt: Vec<ChatMessage>,
    /// The last assistant message's content.
    pub response: String,
}

impl Sample {
    /// Screening's rule: the last assistant message is the response, and it needs a prompt
    /// before it and some text.
    fn from_chat(chat: ChatLine) -> Result<Self> {
        let at = &chat.origin;
        let Some(last) = chat.messages.iter().rposition(|m| m.role == "assistant") else {
            bail!("{at}: no assistant message, so no response to screen");
        };
        ensure!(
            last > 0,
            "{at}: the assistant message has no prompt before it"
        );
        ensure!(
            !chat.messages[last].content.trim().is_empty(),
            "{at}: the last assistant message is empty"
        );
        let response = chat.messages[last].content.clone();
        let mut prompt = chat.messages;
        prompt.truncate(last);
        Ok(Self {
            line: chat.line,
            raw: chat.raw,
            prompt,
            response,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Reads `{"messages": [...]}` lines (the first `limit` chats when given); errors name the
    /// file and line.
    pub fn read(path: &Path, limit: Option<usize>) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            samples: read_chat_lines(path, "data file", limit, Sample::from_chat)?,
        })
    }

    /// The name used in tables and legends: the file name.
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

/// A teacher-forced sequence: prompt tokens then response tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Teacher {
    pub ids: Vec<u32>,
    /// The response tokens; `response.start - 1` is the last prompt token.
    pub response: Range<usize>,
}

impl Teacher {
    /// The response span cut to at most `max` tokens (and the sequence after it dropped: a causal
    /// model's earlier states do not depend on it).
    pub fn truncated(mut self, max: Option<usize>) -> Self {
        if let Some(max) = max {
            self.response.end = self.response.end.min(self.response.start + max.max(1));
            self.ids.truncate(self.response.end);
        }
        self
    }
}

/// Projections of one teacher-forced sequence on a direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanProjections {
    /// Of the hidden state averaged over the response tokens.
    pub response_avg: f32,
    /// Of the last prompt token's hidden state.
    pub prompt_last: f32,
}

/// Response-average and last-prompt-token projections of every sequence on every direction, in
/// one right-padded forward pass. Returns `[sequence][direction]`.
pub fn span_projections(
    lm: Lm,
    seqs: &[Teacher],
    directions: &[TraitDirection],
) -> Result<Vec<Vec<SpanProjections>>> {
    for s in seqs {
        ensure!(
            s.response.start > 0
                && s.response.end > s.response.start
                && s.response.end <= s.ids.len(),
            "empty prompt or response (span {:?} of {} tokens)",
            s.response,
            s.ids.len()
        );
    }
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<&[u32]> = seqs.iter().map(|s| s.ids.as_slice()).collect();
    let out = lm.forward(
        &ForwardInput::right_padded(&rows, &lm.device()),
        Forward::hidden_states(),
    )?;
    let states = read_layers(&out.hidden_states, directions, LayerStates::read)?;
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(r, s)| {
            directions
                .iter()
                .map(|d| states[&d.layer].project_span(r, s, d))
                .collect()
        })
        .collect())
}

/// One layer's hidden states of a batch, flattened `[row][position][hidden]`.
struct LayerStates {
    h: Vec<f32>,
    positions: usize,
    hidden: usize,
}

impl LayerStates {
    fn read(h: &Tensor<3>) -> Result<Self> {
        let [_, positions, hidden] = h.dims();
        let h = h.clone().into_data().convert::<f32>().try_into_vec()?;
        Ok(Self {
            h,
            positions,
            hidden,
        })
    }

    fn at(&self, row: usize, i: usize) -> &[f32] {
        let start = (row * self.positions + i) * self.hidden;
        &self.h[start..start + self.hidden]
    }

    /// Row `row`'s projections on `d`: of its response average (accumulated in f64) and of its
    /// last prompt token.
    fn project_span(&self, row: usize, s: &Teacher, d: &TraitDirection) -> SpanProjections {
        let mut mean = vec![0.0f64; self.hidden];
        for i in s.response.clone() {
            mean.iter_mut()
                .zip(self.at(row, i))
                .for_each(|(m, &x)| *m += x as f64);
        }
        let n = s.response.len() as f64;
        let mean: Vec<f32> = mean.into_iter().map(|m| (m / n) as f32).collect();
        SpanProjections {
            response_avg: d.project(&mean),
            prompt_last: d.project(self.at(row, s.response.start - 1)),
        }
    }
}

/// Every score of one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScore {
    /// The data file, as given.
    pub dataset: String,
    pub line: usize,
    /// Projection difference: `response_projection − base_projection`; `None` without generation
    /// or when the base model answered nothing.
    pub delta: Option<f32>,
    /// `response_projection − prompt_last_projection`.
    pub proxy: f32,
    /// Of the dataset's response, averaged over its tokens.
    pub response_projection: f32,
    /// Of the base model's own answer, averaged over its tokens.
    pub base_projection: Option<f32>,
    /// Of the last prompt token.
    pub prompt_last_projection: f32,
    pub base_answer: Option<String>,
}

impl SampleScore {
    /// What ranking and filtering use: ΔP, else the proxy when nothing was generated.
    pub fn key(&self, generated: bool) -> Option<f32> {
        if generated {
            self.delta
        } else {
            Some(self.proxy)
        }
    }
}

/// The scores of every dataset and where the base answers came from.
#[derive(Debug, Clone)]
pub struct Screened {
    /// `[dataset][sample]`, in file order.
    pub scores: Vec<Vec<SampleScore>>,
    /// Distinct prompts answered by generating in this run.
    pub generated: usize,
    /// Distinct prompts whose answers came from the cache.
    pub cached: usize,
    /// Sequences (dataset chats and base answers) run through the model in this run; the others'
    /// projections came from the cache.
    pub forward: usize,
}

/// Scores every sample of every dataset on `direction` (see the module docs). Prompts shared by
/// several samples or datasets are answered once.
pub fn score(
    m: &LoadedModel,
    direction: &TraitDirection,
    datasets: &[Dataset],
    cfg: &ScreenConfig,
) -> Result<Screened> {
    let mut all = score_directions(m, std::slice::from_ref(direction), datasets, cfg)?;
    Ok(all.remove(0))
}

/// [`score`] on several directions (traits, or one trait's rows at several layers) at the cost of
/// one: the base answers and the forward passes are shared. One [`Screened`] per direction.
pub fn score_directions(
    m: &LoadedModel,
    directions: &[TraitDirection],
    datasets: &[Dataset],
    cfg: &ScreenConfig,
) -> Result<Vec<Screened>> {
    ensure!(!directions.is_empty(), "no direction to score on");
    ensure!(cfg.batch_size > 0, "batch size must be at least 1");
    // Tokenize everything first, so a bad chat fails before any long computation.
    let encoded = datasets
        .iter()
        .map(|d| encode_dataset(&m.tokenizer, d, cfg.max_response_tokens))
        .collect::<Result<Vec<_>>>()?;
    let prompts = || encoded.iter().flatten().map(|e| &e.prompt);

    // Base answers, one per distinct prompt.
    let base = if cfg.generate {
        answer_prompts(m, prompts(), cfg)?
    } else {
        BaseAnswers::default()
    };

    // Forward passes: the datasets' chats, then the base answers.
    let mut seqs: Vec<Teacher> = encoded
        .iter()
        .flatten()
        .map(|e| e.teacher.clone())
        .collect();
    let base_index = push_base_sequences(&mut seqs, prompts(), &base.answers, cfg);
    let mut projection_cache = match &cfg.cache {
        Some(dir) => Some(ProjectionCache::open(dir, m)?),
        None => None,
    };
    let (projections, forward) = measure(
        m,
        &seqs,
        directions,
        cfg.batch_size,
        projection_cache.as_mut(),
    )?;

    // Every sample's scores, direction by direction.
    let measured = Measured {
        projections,
        base_index,
        base_text: base.decoded(&m.tokenizer)?,
    };
    let per_direction = (0..directions.len()).map(|di| Screened {
        scores: measured.scores(di, datasets, &encoded),
        generated: base.generated,
        cached: base.cached,
        forward,
    });
    Ok(per_direction.collect())
}

/// One sample's token ids: its prompt, for the base model to answer, and the whole chat.
struct Encoded {
    prompt: Vec<u32>,
    teacher: Teacher,
}

fn encode_dataset(
    tok: &Tokenizer,
    d: &Dataset,
    max_response_tokens: Option<usize>,
) -> Result<Vec<Encoded>> {
    d.samples
        .iter()
        .map(|s| {
            let at = format!("{}:{}", d.path.display(), s.line);
            encode_sample(tok, s, &at, max_response_tokens)
        })
        .collect()
}

/// `at` (`file:line`) names the sample in errors.
fn encode_sample(
    tok: &Tokenizer,
    s: &Sample,
    at: &str,
    max_response_tokens: Option<usize>,
) -> Result<Encoded> {
    let prompt = tok.encode_chat(&s.prompt, true).context(at.to_owned())?.ids;
    let mut chat = s.prompt.clone();
    chat.push(ChatMessage::new("assistant", s.response.clone()));
    let enc = tok.encode_chat(&chat, false).context(at.to_owned())?;
    let (Some(start), Some(end)) = (enc.response_start, enc.response_end) else {
        bail!("{at}: cannot locate the response in the rendered chat");
    };
    ensure!(end > start && start > 0, "{at}: the response has no tokens");
    let teacher = Teacher {
        ids: enc.ids,
        response: start..end,
    };
    Ok(Encoded {
        prompt,
        teacher: teacher.truncated(max_response_tokens),
    })
}

/// The base model's answers to the distinct prompts, and where they came from.
#[derive(Default)]
struct BaseAnswers {
    answers: HashMap<Vec<u32>, Vec<u32>>,
    /// Answered by generating in this run.
    generated: usize,
    /// Answered from the cache.
    cached: usize,
}

impl BaseAnswers {
    /// Every answer as text, by prompt.
    fn decoded(&self, tok: &Tokenizer) -> Result<HashMap<Vec<u32>, String>> {
        self.answers
            .iter()
            .map(|(p, a)| Ok((p.clone(), tok.decode(a, true)?)))
            .collect()
    }
}

/// Greedy answers to every distinct prompt: from the cache where it has them, else generated in
/// batches (and added to the cache batch by batch).
fn answer_prompts<'p>(
    m: &LoadedModel,
    prompts: impl Iterator<Item = &'p Vec<u32>>,
    cfg: &ScreenConfig,
) -> Result<BaseAnswers> {
    let sampling = Sampling {
        max_new_tokens: cfg.max_new_tokens,
        temperature: 0.0,
        ..Sampling::default()
    };
    let specials = Specials::of(&m.tokenizer);
    let mut store = match &cfg.cache {
        Some(dir) => Some(AnswerCache::open(dir, m, &sampling, &specials)?),
        None => None,
    };
    let mut base = BaseAnswers::default();
    let mut todo: Vec<Vec<u32>> = Vec::new();
    let mut seen = HashSet::new();
    for p in prompts.filter(|&p| seen.insert(p)) {
        match store.as_ref().and_then(|s| s.get(p)) {
            Some(a) => {
                base.answers.insert(p.clone(), a.clone());
                base.cached += 1;
            }
            None => todo.push(p.clone()),
        }
    }
    // Similar lengths together: less padding.
    todo.sort_by_key(Vec::len);
    let bar = Progress::new(todo.len() as u64, "base answers");
    for chunk in todo.chunks(cfg.batch_size) {
        let out = generate(Lm::new(&m.model), chunk, &specials, &sampling)?;
        for (p, a) in chunk.iter().zip(out) {
            if let Some(s) = store.as_mut() {
                s.put(p, &a)?;
            }
            base.answers.insert(p.clone(), a);
        }
        base.generated += chunk.len();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(base)
}

/// Appends every distinct prompt's non-empty base answer to `seqs` as a teacher-forced sequence,
/// and returns where each prompt's sequence is. In first-seen order, so that the batches (and
/// their float rounding) are the same every run.
fn push_base_sequences<'p>(
    seqs: &mut Vec<Teacher>,
    prompts: impl Iterator<Item = &'p Vec<u32>>,
    answers: &HashMap<Vec<u32>, Vec<u32>>,
    cfg: &ScreenConfig,
) -> HashMap<&'p [u32], usize> {
    let mut base_index = HashMap::new();
    for p in prompts {
        let Some(a) = answers.get(p) else { continue };
        if !a.is_empty() && !base_index.contains_key(p.as_slice()) {
            base_index.insert(p.as_slice(), seqs.len());
            seqs.push(
                Teacher {
                    ids: [p.as_slice(), a.as_slice()].concat(),
                    response: p.len()..p.len() + a.len(),
                }
                .truncated(cfg.max_response_tokens),
            );
        }
    }
    base_index
}

/// What the scores are read from: every sequence's projections (the datasets' chats first, in
/// order), where each prompt's base-answer sequence is, and the base answers as text.
struct Measured<'p> {
    projections: Vec<Vec<SpanProjections>>,
    base_index: HashMap<&'p [u32], usize>,
    base_text: HashMap<Vec<u32>, String>,
}

impl Measured<'_> {
    /// `[dataset][sample]` on direction `di`.
    fn scores(
        &self,
        di: usize,
        datasets: &[Dataset],
        encoded: &[Vec<Encoded>],
    ) -> Vec<Vec<SampleScore>> {
        let mut own = self.projections.iter();
        datasets
            .iter()
            .zip(encoded)
            .map(|(d, es)| {
                let samples = d.samples.iter().zip(es).zip(own.by_ref());
                samples
                    .map(|((s, e), p)| self.sample_score(d, s, &e.prompt, p[di], di))
                    .collect()
            })
            .collect()
    }

    fn sample_score(
        &self,
        d: &Dataset,
        s: &Sample,
        prompt: &[u32],
        own: SpanProjections,
        di: usize,
    ) -> SampleScore {
        let base = self
            .base_index
            .get(prompt)
            .map(|&i| self.projections[i][di].response_avg);
        SampleScore {
            dataset: d.path.display().to_string(),
            line: s.line,
            delta: base.map(|b| own.response_avg - b),
            proxy: own.response_avg - own.prompt_last,
            response_projection: own.response_avg,
            base_projection: base,
            prompt_last_projection: own.prompt_last,
            base_answer: self.base_text.get(prompt).cloned(),
        }
    }
}

/// [`span_projections`] in batches of similar length, with a progress bar, skipping what the
/// cache holds; `[seq][direction]` and how many sequences went through the model.
fn measure(
    m: &LoadedModel,
    seqs: &[Teacher],
    directions: &[TraitDirection],
    batch_size: usize,
    mut cache: Option<&mut ProjectionCache>,
) -> Result<(Vec<Vec<SpanProjections>>, usize)> {
    let mut out = vec![Vec::new(); seqs.len()];
    let mut todo = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        match cache.as_ref().and_then(|c| c.get(s, directions)) {
            Some(p) => out[i] = p,
            None => todo.push(i),
        }
    }
    todo.sort_by_key(|&i| seqs[i].ids.len());
    let bar = Progress::new(todo.len() as u64, "projections");
    for chunk in todo.chunks(batch_size) {
        let batch: Vec<Teacher> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let p = span_projections(Lm::new(&m.model), &batch, directions)?;
        for (&i, row) in chunk.iter().zip(p) {
            if let Some(c) = cache.as_mut() {
                c.put(&seqs[i], directions, &row)?;
            }
            out[i] = row;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((out, todo.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_prompt() {
        let t = Teacher {
            ids: (0..10).collect(),
            response: 4..9,
        };
        assert_eq!(t.clone().truncated(None), t);
        let cut = t.truncated(Some(2));
        assert_eq!((cut.ids.len(), cut.response), (6, 4..6));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reading_data_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let ok = r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}"#;
        let d = Dataset::read(
            &write(dir.path(), "ok.jsonl", &format!("\n{ok}\n{ok}\n")),
            Some(1),
        )
        .unwrap();
        assert_eq!(d.samples.len(), 1);
        assert_eq!(
            (d.samples[0].line, d.samples[0].response.as_str()),
            (2, "A2")
        );
        assert_eq!(d.samples[0].prompt.len(), 4);
        assert_eq!(d.samples[0].raw, ok);

        let bad = write(
            dir.path(),
            "bad.jsonl",
            &format!("{ok}\n{{\"messages\": [\n"),
        );
        let err = format!("{:#}", Dataset::read(&bad, None).unwrap_err());
        assert!(err.contains("bad.jsonl:2"), "{err}");
        let none = write(
            dir.path(),
            "none.jsonl",
            r#"{"messages": [{"role": "user", "content": "Q"}]}"#,
        );
        let err = format!("{:#}", Dataset::read(&none, None).unwrap_err());
        assert!(
            err.contains("none.jsonl:1") && err.contains("no assistant"),
            "{err}"
        );
        let empty = write(dir.path(), "empty.jsonl", "\n\n");
        assert!(format!("{:#}", Dataset::read(&empty, None).unwrap_err()).contains("no chats"));
        let missing = dir.path().join("missing.jsonl");
        assert!(
            format!("{:#}", Dataset::read(&missing, None).unwrap_err()).contains("missing.jsonl")
        );
    }
}
