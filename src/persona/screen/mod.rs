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

use crate::cli::ModelArgs;
use crate::generate::{generate, Sampling};
use crate::loader::LoadedModel;
use crate::lora::Adapters;
use crate::model::{CausalLm, ForwardInput, LogitsFor};
use crate::persona::extract::progress;
use crate::persona::vector::TraitDirection;
use crate::source::ModelFiles;
use crate::tokenizer::ChatMessage;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    #[arg(long)]
    vector: PathBuf,
    #[arg(long, default_value = "response_avg")]
    vector_kind: String,
    /// Hidden-state index to project at; default: the file's recommended layer, else 2/3 of the
    /// depth.
    #[arg(long)]
    layer: Option<usize>,
    /// Chat JSONL file(s) to screen; repeat to compare several side by side.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Ranked samples (JSONL, highest score first); the summary goes beside it as
    /// NAME.summary.json and the histogram as NAME.png.
    #[arg(long)]
    out: PathBuf,
    /// Screen only the first N chats of each file.
    #[arg(long)]
    limit: Option<usize>,
    /// Length of the base model's greedy answers.
    #[arg(long, default_value_t = ScreenConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Prompts generated (and chats measured) together.
    #[arg(long, default_value_t = ScreenConfig::default().batch_size)]
    batch_size: usize,
    /// Average over at most this many response tokens (dataset and base answers alike).
    #[arg(long)]
    max_response_tokens: Option<usize>,
    /// Only the proxy (response minus last-prompt-token projection): no generation, fast.
    #[arg(long)]
    no_generate: bool,
    /// Where base answers and projections are cached; default `$PERSONA_TRAIN_CACHE/screen`
    /// (`~/.cache/persona-train/screen`).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Neither read nor write the cache (everything is generated and measured again).
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,
    /// Drop the K highest-scoring samples (by ΔP; by the proxy with --no-generate).
    #[arg(long)]
    drop_top: Option<usize>,
    /// Drop samples scoring above T (ΔP; the proxy with --no-generate).
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// Write the kept lines (unchanged, in their original order) of the one --data file here.
    #[arg(long)]
    write_filtered: Option<PathBuf>,
}

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

/// `cache_root()/screen`.
pub fn cache_dir() -> PathBuf {
    crate::source::cache_root().join("screen")
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

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Reads `{"messages": [...]}` lines (the first `limit` chats when given); errors name the
    /// file and line.
    pub fn read(path: &Path, limit: Option<usize>) -> Result<Self> {
        #[derive(Deserialize)]
        struct Row {
            messages: Vec<ChatMessage>,
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read data file {}", path.display()))?;
        let mut samples = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if limit.is_some_and(|n| samples.len() >= n) {
                break;
            }
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{line}", path.display());
            let row: Row = serde_json::from_str(raw).with_context(|| {
                format!(
                    "{}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}",
                    at()
                )
            })?;
            for (j, m) in row.messages.iter().enumerate() {
                ensure!(
                    matches!(m.role.as_str(), "system" | "user" | "assistant"),
                    "{}: messages[{j}].role is {:?} (expected system, user or assistant)",
                    at(),
                    m.role
                );
            }
            let Some(last) = row.messages.iter().rposition(|m| m.role == "assistant") else {
                bail!("{}: no assistant message, so no response to screen", at());
            };
            ensure!(
                last > 0,
                "{}: the assistant message has no prompt before it",
                at()
            );
            ensure!(
                !row.messages[last].content.trim().is_empty(),
                "{}: the last assistant message is empty",
                at()
            );
            samples.push(Sample {
                line,
                raw: raw.to_owned(),
                response: row.messages[last].content.clone(),
                prompt: row.messages[..last].to_vec(),
            });
        }
        ensure!(!samples.is_empty(), "{}: no chats", path.display());
        Ok(Self {
            path: path.to_path_buf(),
            samples,
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
    model: &CausalLm,
    adapters: Option<&Adapters>,
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
    let out = model.forward(
        &ForwardInput::right_padded(&rows, &model.device()),
        None,
        adapters,
        None,
        LogitsFor::None,
        true,
    );
    let mut states: BTreeMap<usize, (Vec<f32>, usize, usize)> = BTreeMap::new();
    for d in directions {
        ensure!(
            d.layer < out.hidden_states.len(),
            "{}: layer {} is out of range (the model returns {} hidden states)",
            d.trait_name,
            d.layer,
            out.hidden_states.len()
        );
        if let std::collections::btree_map::Entry::Vacant(e) = states.entry(d.layer) {
            let h = out.hidden_states[d.layer].clone();
            let [_, t, hidden] = h.dims();
            e.insert((h.into_data().convert::<f32>().try_into_vec()?, t, hidden));
        }
    }
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(r, s)| {
            directions
                .iter()
                .map(|d| {
                    let (h, t, hidden) = &states[&d.layer];
                    let at = |i: usize| &h[(r * t + i) * hidden..(r * t + i + 1) * hidden];
                    let mut mean = vec![0.0f64; *hidden];
                    for i in s.response.clone() {
                        mean.iter_mut()
                            .zip(at(i))
                            .for_each(|(m, &x)| *m += x as f64);
                    }
                    let n = s.response.len() as f64;
                    let mean: Vec<f32> = mean.into_iter().map(|m| (m / n) as f32).collect();
                    SpanProjections {
                        response_avg: d.project(&mean),
                        prompt_last: d.project(at(s.response.start - 1)),
                    }
                })
                .collect()
        })
        .collect())
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
    let tok = &m.tokenizer;
    // Tokenize everything first, so a bad chat fails before any long computation.
    let mut prompts: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut teachers: Vec<Vec<Teacher>> = Vec::new();
    for d in datasets {
        let (mut ps, mut ts) = (Vec::new(), Vec::new());
        for s in &d.samples {
            let at = || format!("{}:{}", d.path.display(), s.line);
            let prompt = tok.encode_chat(&s.prompt, true).with_context(at)?.ids;
            let mut chat = s.prompt.clone();
            chat.push(ChatMessage::new("assistant", s.response.clone()));
            let enc = tok.encode_chat(&chat, false).with_context(at)?;
            let (Some(start), Some(end)) = (enc.response_start, enc.response_end) else {
                bail!("{}: cannot locate the response in the rendered chat", at());
            };
            ensure!(
                end > start && start > 0,
                "{}: the response has no tokens",
                at()
            );
            ps.push(prompt);
            ts.push(
                Teacher {
                    ids: enc.ids,
                    response: start..end,
                }
                .truncated(cfg.max_response_tokens),
            );
        }
        prompts.push(ps);
        teachers.push(ts);
    }

    // Base answers, one per distinct prompt.
    let mut answers: HashMap<Vec<u32>, Vec<u32>> = HashMap::new();
    let (mut generated, mut cached) = (0, 0);
    if cfg.generate {
        let sampling = Sampling {
            max_new_tokens: cfg.max_new_tokens,
            temperature: 0.0,
            ..Sampling::default()
        };
        let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
        let mut store = match &cfg.cache {
            Some(dir) => Some(AnswerCache::open(dir, m, &sampling, tok.stop_ids(), pad)?),
            None => None,
        };
        let mut todo: Vec<Vec<u32>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in prompts.iter().flatten() {
            if !seen.insert(p) {
                continue;
            }
            match store.as_ref().and_then(|s| s.get(p)) {
                Some(a) => {
                    answers.insert(p.clone(), a.clone());
                    cached += 1;
                }
                None => todo.push(p.clone()),
            }
        }
        // Similar lengths together: less padding.
        todo.sort_by_key(Vec::len);
        let bar = progress(todo.len() as u64, "base answers");
        for chunk in todo.chunks(cfg.batch_size) {
            let out = generate(&m.model, None, chunk, tok.stop_ids(), pad, &sampling, None)?;
            for (p, a) in chunk.iter().zip(out) {
                if let Some(s) = store.as_mut() {
                    s.put(p, &a)?;
                }
                answers.insert(p.clone(), a);
            }
            generated += chunk.len();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }

    // Forward passes: the datasets' chats, then the base answers.
    let mut seqs: Vec<Teacher> = teachers.iter().flatten().cloned().collect();
    // In first-seen order, so that the batches (and their float rounding) are the same every run.
    let mut base_index: HashMap<&[u32], usize> = HashMap::new();
    for p in prompts.iter().flatten() {
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

    let mut base_answers: HashMap<&[u32], String> = HashMap::new();
    for (p, a) in &answers {
        base_answers.insert(p.as_slice(), tok.decode(a, true)?);
    }
    let per_direction = (0..directions.len()).map(|di| {
        let mut scores = Vec::new();
        let mut k = 0;
        for (d, ps) in datasets.iter().zip(&prompts) {
            let mut rows = Vec::new();
            for (s, p) in d.samples.iter().zip(ps) {
                let own = projections[k][di];
                k += 1;
                let base = base_index
                    .get(p.as_slice())
                    .map(|&i| projections[i][di].response_avg);
                rows.push(SampleScore {
                    dataset: d.path.display().to_string(),
                    line: s.line,
                    delta: base.map(|b| own.response_avg - b),
                    proxy: own.response_avg - own.prompt_last,
                    response_projection: own.response_avg,
                    base_projection: base,
                    prompt_last_projection: own.prompt_last,
                    base_answer: base_answers.get(p.as_slice()).cloned(),
                });
            }
            scores.push(rows);
        }
        Screened {
            scores,
            generated,
            cached,
            forward,
        }
    });
    Ok(per_direction.collect())
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
    let bar = progress(todo.len() as u64, "projections");
    for chunk in todo.chunks(batch_size) {
        let batch: Vec<Teacher> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let p = span_projections(&m.model, None, &batch, directions)?;
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

/// Projections on disk: `DIR/KEY.projections.jsonl`, KEY a hash of the model's identity, one
/// `{"key": sha256 of (direction, sequence, span), "response_avg": .., "prompt_last": ..}` line per
/// sequence and direction, so re-ranking, re-filtering or re-plotting runs no forward pass.
pub struct ProjectionCache {
    pub path: PathBuf,
    model: String,
    entries: HashMap<String, SpanProjections>,
}

#[derive(Serialize, Deserialize)]
struct CachedProjection {
    key: String,
    response_avg: f32,
    prompt_last: f32,
}

impl ProjectionCache {
    pub fn open(dir: &Path, m: &LoadedModel) -> Result<Self> {
        let model = format!(
            "{:?} {:?}",
            model_identity(&m.files)?,
            m.model.model.embed_tokens.weight.val().dtype()
        );
        let key = &hex(&sha2::Sha256::digest(model.as_bytes()))[..16];
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let path = dir.join(format!("{key}.projections.jsonl"));
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Ok(c) = serde_json::from_str::<CachedProjection>(line) {
                    let p = SpanProjections {
                        response_avg: c.response_avg,
                        prompt_last: c.prompt_last,
                    };
                    entries.insert(c.key, p);
                }
            }
        }
        Ok(Self {
            path,
            model,
            entries,
        })
    }

    fn key(&self, seq: &Teacher, d: &TraitDirection) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.model.as_bytes());
        h.update((d.layer as u64).to_le_bytes());
        d.unit.iter().for_each(|x| h.update(x.to_le_bytes()));
        for x in [seq.response.start, seq.response.end, seq.ids.len()] {
            h.update((x as u64).to_le_bytes());
        }
        seq.ids.iter().for_each(|id| h.update(id.to_le_bytes()));
        hex(&h.finalize())
    }

    /// Every direction's projections of `seq`, when all are cached.
    pub fn get(
        &self,
        seq: &Teacher,
        directions: &[TraitDirection],
    ) -> Option<Vec<SpanProjections>> {
        directions
            .iter()
            .map(|d| self.entries.get(&self.key(seq, d)).copied())
            .collect()
    }

    pub fn put(
        &mut self,
        seq: &Teacher,
        directions: &[TraitDirection],
        projections: &[SpanProjections],
    ) -> Result<()> {
        let mut text = String::new();
        for (d, p) in directions.iter().zip(projections) {
            let key = self.key(seq, d);
            text += &serde_json::to_string(&CachedProjection {
                key: key.clone(),
                response_avg: p.response_avg,
                prompt_last: p.prompt_last,
            })?;
            text.push('\n');
            self.entries.insert(key, *p);
        }
        append_lines(&self.path, &text)
    }
}

fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}

/// Appends whole lines to a cache file, starting a new line when a crash left the last one cut.
fn append_lines(path: &Path, text: &str) -> Result<()> {
    let torn = last_byte(path).is_some_and(|c| c != b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    write!(f, "{}{text}", if torn { "\n" } else { "" })
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Base answers on disk: `DIR/KEY.jsonl`, KEY a hash of the model's identity and the generation
/// settings, one `{"prompt": sha256 of the prompt ids, "answer": [ids]}` line per prompt, with
/// `DIR/KEY.meta.json` saying what KEY stands for. Appended to batch by batch, so an interrupted
/// run keeps what it generated.
pub struct AnswerCache {
    pub path: PathBuf,
    answers: HashMap<String, Vec<u32>>,
}

#[derive(Serialize, Deserialize)]
struct CachedAnswer {
    prompt: String,
    answer: Vec<u32>,
}

impl AnswerCache {
    pub fn open(
        dir: &Path,
        m: &LoadedModel,
        sampling: &Sampling,
        stop_ids: &[u32],
        pad: u32,
    ) -> Result<Self> {
        let meta = serde_json::json!({
            "model": model_identity(&m.files)?,
            "max_new_tokens": sampling.max_new_tokens,
            "decoding": "greedy",
            "stop_ids": stop_ids,
            "pad_id": pad,
            "dtype": format!("{:?}", m.model.model.embed_tokens.weight.val().dtype()),
        });
        let key = hex(&sha2::Sha256::digest(meta.to_string().as_bytes()))[..16].to_owned();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let meta_path = dir.join(format!("{key}.meta.json"));
        if !meta_path.exists() {
            std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)
                .with_context(|| format!("cannot write {}", meta_path.display()))?;
        }
        let path = dir.join(format!("{key}.jsonl"));
        let mut answers = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A torn last line (an interrupted run) is only a missing entry.
            for line in text.lines() {
                if let Ok(c) = serde_json::from_str::<CachedAnswer>(line) {
                    answers.insert(c.prompt, c.answer);
                }
            }
        }
        Ok(Self { path, answers })
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    pub fn get(&self, prompt: &[u32]) -> Option<&Vec<u32>> {
        self.answers.get(&prompt_key(prompt))
    }

    pub fn put(&mut self, prompt: &[u32], answer: &[u32]) -> Result<()> {
        let entry = CachedAnswer {
            prompt: prompt_key(prompt),
            answer: answer.to_vec(),
        };
        append_lines(&self.path, &(serde_json::to_string(&entry)? + "\n"))?;
        self.answers.insert(entry.prompt, entry.answer);
        Ok(())
    }
}

fn prompt_key(ids: &[u32]) -> String {
    let mut h = sha2::Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which weights answered: the files' absolute paths, sizes and modification times (cheap, and a
/// replaced file changes it).
fn model_identity(files: &ModelFiles) -> Result<Vec<String>> {
    let paths = match files {
        ModelFiles::Gguf(p) => vec![p.clone()],
        ModelFiles::HfDir(dir) => {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().is_some_and(|n| n == "config.json")
                        || p.extension().is_some_and(|e| e == "safetensors")
                })
                .collect();
            paths.sort();
            paths
        }
    };
    paths
        .iter()
        .map(|p| {
            let meta =
                std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            Ok(format!("{} {} {modified}", abs.display(), meta.len()))
        })
        .collect()
}

/// Distribution of one score over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f32,
    pub std: f32,
    pub min: f32,
    pub p5: f32,
    pub p25: f32,
    pub p50: f32,
    pub p75: f32,
    pub p95: f32,
    pub max: f32,
}

impl Stats {
    /// `None` for no values. Percentiles interpolate linearly (numpy's default); std is the
    /// population standard deviation.
    pub fn of(values: &[f32]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let q = |p: f64| {
            let at = p * (v.len() - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            (v[lo] + (v[hi] - v[lo]) * (at - lo as f64)) as f32
        };
        Some(Self {
            n: v.len(),
            mean: mean as f32,
            std: var.sqrt() as f32,
            min: v[0] as f32,
            p5: q(0.05),
            p25: q(0.25),
            p50: q(0.5),
            p75: q(0.75),
            p95: q(0.95),
            max: v[v.len() - 1] as f32,
        })
    }
}

/// One dataset's row of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub dataset: String,
    pub samples: usize,
    /// The dataset-level projection difference: the mean of the samples' ΔP.
    pub delta_p: Option<f32>,
    pub delta: Option<Stats>,
    pub proxy: Option<Stats>,
    pub response_projection: Option<Stats>,
    pub base_projection: Option<Stats>,
    pub prompt_last_projection: Option<Stats>,
    /// Samples whose base answer was empty (no ΔP).
    pub without_base_answer: usize,
    /// Samples a filter dropped.
    pub dropped: usize,
}

pub fn summarize(scores: &[SampleScore], dropped: usize) -> DatasetSummary {
    let col = |f: &dyn Fn(&SampleScore) -> Option<f32>| -> Vec<f32> {
        scores.iter().filter_map(f).collect()
    };
    let delta = Stats::of(&col(&|s| s.delta));
    let generated = scores.iter().any(|s| s.base_answer.is_some());
    DatasetSummary {
        dataset: scores
            .first()
            .map_or_else(String::new, |s| s.dataset.clone()),
        samples: scores.len(),
        delta_p: delta.as_ref().map(|d| d.mean),
        delta,
        proxy: Stats::of(&col(&|s| Some(s.proxy))),
        response_projection: Stats::of(&col(&|s| Some(s.response_projection))),
        base_projection: Stats::of(&col(&|s| s.base_projection)),
        prompt_last_projection: Stats::of(&col(&|s| Some(s.prompt_last_projection))),
        without_base_answer: if generated {
            scores.iter().filter(|s| s.delta.is_none()).count()
        } else {
            0
        },
        dropped,
    }
}

/// Which samples a filter drops: the `drop_top` highest keys, and every key above `threshold`.
/// Samples without a key (no base answer) are never dropped. Returns one flag per sample, in the
/// order given.
pub fn drop_mask(
    keys: &[Option<f32>],
    drop_top: Option<usize>,
    threshold: Option<f32>,
) -> Vec<bool> {
    let mut drop: Vec<bool> = keys
        .iter()
        .map(|k| threshold.is_some_and(|t| k.is_some_and(|k| k > t)))
        .collect();
    if let Some(n) = drop_top {
        let mut order: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].is_some()).collect();
        order.sort_by(|&a, &b| keys[b].unwrap().total_cmp(&keys[a].unwrap()));
        for &i in order.iter().take(n) {
            drop[i] = true;
        }
    }
    drop
}

/// The area under the ROC curve of `scores` separating `positive` from the rest (ties count
/// half): the probability that a random positive outscores a random negative.
pub fn auroc(positive: &[f32], negative: &[f32]) -> f64 {
    let mut wins = 0.0;
    for &p in positive {
        for &n in negative {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (positive.len() * negative.len()).max(1) as f64
}

/// One line of the ranked output.
#[derive(Serialize)]
struct Ranked<'a> {
    rank: usize,
    #[serde(flatten)]
    score: &'a SampleScore,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<bool>,
}

/// The summary file.
#[derive(Serialize)]
struct SummaryFile<'a> {
    #[serde(rename = "trait")]
    trait_name: &'a str,
    layer: usize,
    vector: String,
    vector_kind: &'a str,
    model: &'a str,
    /// "delta" or "proxy": what the ranking and filter use.
    ranked_by: &'a str,
    max_new_tokens: Option<usize>,
    max_response_tokens: Option<usize>,
    generated: usize,
    cached: usize,
    datasets: &'a [DatasetSummary],
}

pub fn run(a: ScreenArgs) -> Result<()> {
    let mut problems = Vec::new();
    if a.batch_size == 0 {
        problems.push("--batch-size must be at least 1".to_owned());
    }
    if a.write_filtered.is_some() && a.drop_top.is_none() && a.threshold.is_none() {
        problems.push("--write-filtered needs --drop-top K or --threshold T".to_owned());
    }
    if a.write_filtered.is_some() && a.data.len() != 1 {
        problems.push(format!(
            "--write-filtered filters one --data file, {} were given",
            a.data.len()
        ));
    }
    for d in &a.data {
        if !d.is_file() {
            problems.push(format!("--data {}: no such file", d.display()));
        }
    }
    if !a.vector.is_file() {
        problems.push(format!("--vector {}: no such file", a.vector.display()));
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));

    let datasets = a
        .data
        .iter()
        .map(|p| Dataset::read(p, a.limit))
        .collect::<Result<Vec<_>>>()?;
    let m = a.model.load()?;
    let direction = TraitDirection::load(&a.vector, &a.vector_kind, a.layer, m.model.config())?;
    let cfg = ScreenConfig {
        max_new_tokens: a.max_new_tokens,
        batch_size: a.batch_size,
        generate: !a.no_generate,
        max_response_tokens: a.max_response_tokens,
        cache: (!a.no_cache).then(|| a.cache.clone().unwrap_or_else(cache_dir)),
    };
    let t = std::time::Instant::now();
    let screened = score(&m, &direction, &datasets, &cfg)?;
    eprintln!(
        "scored {} samples in {:.1} s ({} base answers generated, {} from the cache; {} sequences measured, the others' projections cached)",
        screened.scores.iter().map(Vec::len).sum::<usize>(),
        t.elapsed().as_secs_f32(),
        screened.generated,
        screened.cached,
        screened.forward,
    );

    let filtering = a.drop_top.is_some() || a.threshold.is_some();
    let all: Vec<&SampleScore> = screened.scores.iter().flatten().collect();
    let keys: Vec<Option<f32>> = all.iter().map(|s| s.key(cfg.generate)).collect();
    let dropped = drop_mask(&keys, a.drop_top, a.threshold);
    let mut order: Vec<usize> = (0..all.len()).collect();
    // Highest first; samples without a score last, in file order.
    order.sort_by(|&i, &j| match (keys[i], keys[j]) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => i.cmp(&j),
    });
    let mut text = String::new();
    for (rank, &i) in order.iter().enumerate() {
        let line = Ranked {
            rank: rank + 1,
            score: all[i],
            dropped: filtering.then_some(dropped[i]),
        };
        text += &serde_json::to_string(&line)?;
        text.push('\n');
    }
    write_file(&a.out, text.as_bytes())?;

    let mut summaries = Vec::new();
    let mut at = 0;
    for rows in &screened.scores {
        let n = dropped[at..at + rows.len()].iter().filter(|&&d| d).count();
        summaries.push(summarize(rows, n));
        at += rows.len();
    }
    let summary_path = a.out.with_extension("summary.json");
    let summary = SummaryFile {
        trait_name: &direction.trait_name,
        layer: direction.layer,
        vector: a.vector.display().to_string(),
        vector_kind: &a.vector_kind,
        model: &m.files.path().display().to_string(),
        ranked_by: if cfg.generate { "delta" } else { "proxy" },
        max_new_tokens: cfg.generate.then_some(cfg.max_new_tokens),
        max_response_tokens: cfg.max_response_tokens,
        generated: screened.generated,
        cached: screened.cached,
        datasets: &summaries,
    };
    write_file(
        &summary_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;

    let png = a.out.with_extension("png");
    let what = if cfg.generate {
        "ΔP"
    } else {
        "proxy (response − last prompt token)"
    };
    crate::plot::Histogram {
        title: format!(
            "{} {what}, layer {} (dashed: dataset means)",
            direction.trait_name, direction.layer
        ),
        x_label: format!("{what} on the {} direction", direction.trait_name),
        series: datasets
            .iter()
            .zip(&screened.scores)
            .map(|(d, rows)| {
                let v = rows
                    .iter()
                    .map(|s| s.key(cfg.generate).map_or(f64::NAN, f64::from))
                    .collect();
                (d.name(), v)
            })
            .collect(),
        bins: 30,
    }
    .save_png(&png)?;

    println!("{}", table(&datasets, &summaries, cfg.generate));
    println!(
        "trait {}, layer {}; ranked: {}, summary: {}, histogram: {}",
        direction.trait_name,
        direction.layer,
        a.out.display(),
        summary_path.display(),
        png.display()
    );

    if let Some(path) = &a.write_filtered {
        let kept: String = datasets[0]
            .samples
            .iter()
            .zip(&dropped)
            .filter(|(_, &d)| !d)
            .map(|(s, _)| format!("{}\n", s.raw))
            .collect();
        write_file(path, kept.as_bytes())?;
        let n = dropped.iter().filter(|&&d| d).count();
        println!(
            "dropped {n} of {} samples; {} kept in {}",
            dropped.len(),
            dropped.len() - n,
            path.display()
        );
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The printed side-by-side table.
fn table(datasets: &[Dataset], summaries: &[DatasetSummary], generated: bool) -> String {
    let name_width = datasets
        .iter()
        .map(|d| d.name().len())
        .max()
        .unwrap_or(7)
        .max(7);
    let f = |v: Option<f32>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    let mut out = format!(
        "{:<name_width$} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
        "dataset", "samples", "ΔP", "std", "p50", "p95", "proxy", "response", "base"
    );
    for (d, s) in datasets.iter().zip(summaries) {
        let delta = s.delta.as_ref();
        out += &format!(
            "{:<name_width$} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}\n",
            d.name(),
            s.samples,
            f(s.delta_p),
            f(delta.map(|d| d.std)),
            f(delta.map(|d| d.p50)),
            f(delta.map(|d| d.p95)),
            f(s.proxy.as_ref().map(|p| p.mean)),
            f(s.response_projection.as_ref().map(|p| p.mean)),
            f(s.base_projection.as_ref().map(|p| p.mean)),
        );
    }
    if !generated {
        out += "(--no-generate: no base answers, so no ΔP; ranked by the proxy)\n";
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], [5, 25, 50, 75, 95]) = 1.2, 2, 3, 4, 8.8
        let s = Stats::of(&[4.0, 1.0, 10.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.max), (5, 4.0, 1.0, 10.0));
        assert!(
            (s.p5 - 1.2).abs() < 1e-6 && (s.p95 - 8.8).abs() < 1e-5,
            "{s:?}"
        );
        assert_eq!((s.p25, s.p50, s.p75), (2.0, 3.0, 4.0));
        assert!((s.std - 10f32.sqrt()).abs() < 1e-6);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn filters_drop_the_top_and_above_the_threshold() {
        let keys = [Some(1.0), None, Some(5.0), Some(3.0), Some(-2.0)];
        assert_eq!(
            drop_mask(&keys, Some(2), None),
            [false, false, true, true, false]
        );
        assert_eq!(
            drop_mask(&keys, None, Some(0.5)),
            [true, false, true, true, false]
        );
        assert_eq!(
            drop_mask(&keys, Some(10), None),
            [true, false, true, true, true]
        );
        assert_eq!(drop_mask(&keys, None, None), [false; 5]);
    }

    #[test]
    fn auroc_counts_pairs() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 3.0], &[2.0, 2.0]), 0.5);
        assert_eq!(auroc(&[2.0], &[2.0]), 0.5);
    }

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
