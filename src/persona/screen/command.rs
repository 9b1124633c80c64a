//! The `screen` command: score the data files, write the ranking, summary, histogram and
//! filtered file, and print the table.

use super::{
    drop_mask, score, summarize, Dataset, DatasetSummary, SampleScore, ScreenConfig, Screened,
};
use crate::loader::{LoadedModel, ModelSpec};
use crate::persona::vector::TraitDirection;
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Everything one `persona-train screen` run needs.
#[derive(Debug, Clone)]
pub struct ScreenJob {
    pub model: ModelSpec,
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    pub vector: PathBuf,
    pub vector_kind: String,
    /// Hidden-state index to project at; default: the file's recommended layer, else 2/3 of the
    /// depth.
    pub layer: Option<usize>,
    /// Chat JSONL file(s) to screen; repeat to compare several side by side.
    pub data: Vec<PathBuf>,
    /// Ranked samples (JSONL, highest score first); the summary goes beside it as
    /// NAME.summary.json and the histogram as NAME.png.
    pub out: PathBuf,
    /// Screen only the first N chats of each file.
    pub limit: Option<usize>,
    /// How the samples are scored: base-answer length, batch size, generation (ΔP) or only the
    /// proxy, response truncation and the cache directory.
    pub scoring: ScreenConfig,
    /// Drop the K highest-scoring samples (by ΔP; by the proxy with --no-generate).
    pub drop_top: Option<usize>,
    /// Drop samples scoring above T (ΔP; the proxy with --no-generate).
    pub threshold: Option<f32>,
    /// Write the kept lines (unchanged, in their original order) of the one --data file here.
    pub write_filtered: Option<PathBuf>,
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

/// Scores the data files, writes the ranking, summary, histogram and filtered file, and prints
/// the table.
pub fn run(job: &ScreenJob) -> Result<()> {
    check(job)?;
    // Every data file is read before the model loads, so a bad line fails at once.
    let datasets = job
        .data
        .iter()
        .map(|p| Dataset::read(p, job.limit))
        .collect::<Result<Vec<_>>>()?;
    let m = job.model.load()?;
    let direction =
        TraitDirection::load(&job.vector, &job.vector_kind, job.layer, m.model.config())?;
    let screened = score_timed(&m, &direction, &datasets, &job.scoring)?;

    // Which samples the filter drops, then every output file and the table.
    let outcome = Outcome::new(job, &m, datasets, direction, screened);
    outcome.write_ranking()?;
    let summaries = outcome.summaries();
    let summary_path = outcome.write_summary(&summaries)?;
    let png = outcome.write_histogram()?;
    outcome.print(&summaries, &summary_path, &png);
    if let Some(path) = &job.write_filtered {
        outcome.write_filtered(path)?;
    }
    Ok(())
}

/// Every problem with the job's flags and files at once.
fn check(job: &ScreenJob) -> Result<()> {
    let mut problems = Vec::new();
    if job.scoring.batch_size == 0 {
        problems.push("--batch-size must be at least 1".to_owned());
    }
    if job.write_filtered.is_some() && job.drop_top.is_none() && job.threshold.is_none() {
        problems.push("--write-filtered needs --drop-top K or --threshold T".to_owned());
    }
    if job.write_filtered.is_some() && job.data.len() != 1 {
        problems.push(format!(
            "--write-filtered filters one --data file, {} were given",
            job.data.len()
        ));
    }
    for d in &job.data {
        if !d.is_file() {
            problems.push(format!("--data {}: no such file", d.display()));
        }
    }
    if !job.vector.is_file() {
        problems.push(format!("--vector {}: no such file", job.vector.display()));
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// [`score`], saying how long it took and where the answers and projections came from.
fn score_timed(
    m: &LoadedModel,
    direction: &TraitDirection,
    datasets: &[Dataset],
    cfg: &ScreenConfig,
) -> Result<Screened> {
    let t = std::time::Instant::now();
    let screened = score(m, direction, datasets, cfg)?;
    eprintln!(
        "scored {} samples in {:.1} s ({} base answers generated, {} from the cache; {} sequences measured, the others' projections cached)",
        screened.scores.iter().map(Vec::len).sum::<usize>(),
        t.elapsed().as_secs_f32(),
        screened.generated,
        screened.cached,
        screened.forward,
    );
    Ok(screened)
}

/// A scored run and what the filter made of it; every sample-indexed vector is in file order,
/// the datasets one after the other.
struct Outcome<'a> {
    job: &'a ScreenJob,
    /// The model directory or file, as the summary names it.
    model: String,
    datasets: Vec<Dataset>,
    direction: TraitDirection,
    screened: Screened,
    /// What ranking and filtering use (see [`SampleScore::key`]).
    keys: Vec<Option<f32>>,
    dropped: Vec<bool>,
}

impl<'a> Outcome<'a> {
    fn new(
        job: &'a ScreenJob,
        m: &LoadedModel,
        datasets: Vec<Dataset>,
        direction: TraitDirection,
        screened: Screened,
    ) -> Self {
        let keys: Vec<Option<f32>> = screened
            .scores
            .iter()
            .flatten()
            .map(|s| s.key(job.scoring.generate))
            .collect();
        Self {
            dropped: drop_mask(&keys, job.drop_top, job.threshold),
            keys,
            job,
            model: m.files.path().display().to_string(),
            datasets,
            direction,
            screened,
        }
    }

    fn filtering(&self) -> bool {
        self.job.drop_top.is_some() || self.job.threshold.is_some()
    }

    /// The ranked JSONL file: highest first, samples without a score last, in file order.
    fn write_ranking(&self) -> Result<()> {
        let all: Vec<&SampleScore> = self.screened.scores.iter().flatten().collect();
        let keys = &self.keys;
        let mut order: Vec<usize> = (0..all.len()).collect();
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
                dropped: self.filtering().then_some(self.dropped[i]),
            };
            text += &serde_json::to_string(&line)?;
            text.push('\n');
        }
        create_parent(&self.job.out)?;
        crate::atomic::write(&self.job.out, text.as_bytes())
    }

    /// One summary per dataset, with how many of its samples the filter dropped.
    fn summaries(&self) -> Vec<DatasetSummary> {
        let mut at = 0;
        let mut summaries = Vec::new();
        for rows in &self.screened.scores {
            let n = self.dropped[at..at + rows.len()]
                .iter()
                .filter(|&&d| d)
                .count();
            summaries.push(summarize(rows, n));
            at += rows.len();
        }
        summaries
    }

    /// NAME.summary.json beside the ranking; returns its path.
    fn write_summary(&self, summaries: &[DatasetSummary]) -> Result<PathBuf> {
        let (job, cfg) = (self.job, &self.job.scoring);
        let summary = SummaryFile {
            trait_name: &self.direction.trait_name,
            layer: self.direction.layer,
            vector: job.vector.display().to_string(),
            vector_kind: &job.vector_kind,
            model: &self.model,
            ranked_by: if cfg.generate { "delta" } else { "proxy" },
            max_new_tokens: cfg.generate.then_some(cfg.max_new_tokens),
            max_response_tokens: cfg.max_response_tokens,
            generated: self.screened.generated,
            cached: self.screened.cached,
            datasets: summaries,
        };
        let path = job.out.with_extension("summary.json");
        crate::atomic::write(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
        Ok(path)
    }

    /// NAME.png beside the ranking, one series per dataset; returns its path.
    fn write_histogram(&self) -> Result<PathBuf> {
        let generated = self.job.scoring.generate;
        let what = if generated {
            "ΔP"
        } else {
            "proxy (response − last prompt token)"
        };
        let (name, layer) = (&self.direction.trait_name, self.direction.layer);
        let series = self
            .datasets
            .iter()
            .zip(&self.screened.scores)
            .map(|(d, rows)| {
                let v = rows
                    .iter()
                    .map(|s| s.key(generated).map_or(f64::NAN, f64::from))
                    .collect();
                (d.name(), v)
            });
        let path = self.job.out.with_extension("png");
        crate::plot::Histogram {
            title: format!("{name} {what}, layer {layer} (dashed: dataset means)"),
            x_label: format!("{what} on the {name} direction"),
            series: series.collect(),
            bins: 30,
        }
        .save_png(&path)?;
        Ok(path)
    }

    /// The side-by-side table and where the files went.
    fn print(&self, summaries: &[DatasetSummary], summary_path: &Path, png: &Path) {
        println!(
            "{}",
            table(&self.datasets, summaries, self.job.scoring.generate)
        );
        println!(
            "trait {}, layer {}; ranked: {}, summary: {}, histogram: {}",
            self.direction.trait_name,
            self.direction.layer,
            self.job.out.display(),
            summary_path.display(),
            png.display()
        );
    }

    /// The one data file's kept lines, unchanged and in their original order.
    fn write_filtered(&self, path: &Path) -> Result<()> {
        let dropped = &self.dropped;
        let kept: String = self.datasets[0]
            .samples
            .iter()
            .zip(dropped)
            .filter(|(_, &d)| !d)
            .map(|(s, _)| format!("{}\n", s.raw))
            .collect();
        create_parent(path)?;
        crate::atomic::write(path, kept.as_bytes())?;
        let n = dropped.iter().filter(|&&d| d).count();
        println!(
            "dropped {n} of {} samples; {} kept in {}",
            dropped.len(),
            dropped.len() - n,
            path.display()
        );
        Ok(())
    }
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

/// Output paths may name a directory that does not exist yet (`--out screen/ranked.jsonl`).
fn create_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        None => Ok(()),
    }
}
