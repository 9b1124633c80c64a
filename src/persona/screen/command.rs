//! The `screen` command: score the data files, write the ranking, summary, histogram and
//! filtered file, and print the table.

use super::{
    cache_dir, drop_mask, score, summarize, Dataset, DatasetSummary, SampleScore, ScreenConfig,
};
use crate::loader::ModelSpec;
use crate::persona::vector::TraitDirection;
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::PathBuf;

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
    /// Length of the base model's greedy answers.
    pub max_new_tokens: usize,
    /// Prompts generated (and chats measured) together.
    pub batch_size: usize,
    /// Average over at most this many response tokens (dataset and base answers alike).
    pub max_response_tokens: Option<usize>,
    /// Only the proxy (response minus last-prompt-token projection): no generation, fast.
    pub no_generate: bool,
    /// Where base answers and projections are cached; default `$PERSONA_TRAIN_CACHE/screen`
    /// (`~/.cache/persona-train/screen`).
    pub cache: Option<PathBuf>,
    /// Neither read nor write the cache (everything is generated and measured again).
    pub no_cache: bool,
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
pub fn run(a: &ScreenJob) -> Result<()> {
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
    create_parent(&a.out)?;
    crate::atomic::write(&a.out, text.as_bytes())?;

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
    crate::atomic::write(
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
        create_parent(path)?;
        crate::atomic::write(path, kept.as_bytes())?;
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
fn create_parent(path: &std::path::Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        None => Ok(()),
    }
}
