//! `persona-train report`: the evaluations of one or more runs as a table per checkpoint and as
//! plots (MMLU, trait score and projection shift against step; trait score against projection
//! shift with Pearson's r), so steered and unsteered runs of a recipe can be compared.

use crate::history::RunEvals;
use crate::plot::{LineChart, Series};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// The table: one row per checkpoint of each run, one column per metric any of them has.
pub fn table(runs: &[RunEvals]) -> String {
    let mut columns: Vec<&str> = runs
        .iter()
        .flat_map(|r| {
            r.evals
                .iter()
                .flat_map(|e| e.scalars.keys().map(String::as_str))
        })
        .filter(|k| !k.contains("/layer_"))
        .collect();
    columns.sort_unstable();
    columns.dedup();
    let short = |c: &str| c.trim_start_matches("eval/").to_string();
    let mut out = format!("{:<24} {:>6}", "run", "step");
    for c in &columns {
        out += &format!(" {:>w$}", short(c), w = short(c).len().max(8));
    }
    out.push('\n');
    for r in runs {
        for e in &r.evals {
            out += &format!("{:<24} {:>6}", r.name, e.step);
            for c in &columns {
                let w = short(c).len().max(8);
                match e.scalars.get(*c) {
                    Some(v) => out += &format!(" {v:>w$.4}"),
                    None => out += &format!(" {:>w$}", "-"),
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Pearson's correlation coefficient; `None` with fewer than 2 points or no variance.
pub fn pearson(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Writes the plots into `out` and returns their paths; a plot without data is skipped.
pub fn plots(runs: &[RunEvals], out: &Path) -> Result<Vec<PathBuf>> {
    ensure!(!runs.is_empty(), "no runs to plot");
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let trait_name = runs
        .iter()
        .flat_map(|r| r.evals.first())
        .map(|e| e.trait_name.clone())
        .next()
        .unwrap_or_default();
    let mut charts = step_charts(runs, &trait_name);
    charts.extend(score_vs_shift(runs, &trait_name).map(|c| ("trait_vs_shift.png", c)));
    let mut written = Vec::new();
    for (file, chart) in charts {
        let path = out.join(file);
        chart.save_png(&path)?;
        written.push(path);
    }
    Ok(written)
}

fn score_tag(trait_name: &str) -> String {
    format!("eval/{trait_name}_score")
}

fn shift_tag(trait_name: &str) -> String {
    format!("eval/projection_shift/{trait_name}")
}

/// MMLU, trait score and projection shift against step, with their file names; a chart no run
/// has a point for is left out.
fn step_charts(runs: &[RunEvals], trait_name: &str) -> Vec<(&'static str, LineChart)> {
    let (score_tag, shift_tag) = (score_tag(trait_name), shift_tag(trait_name));
    let mut charts = Vec::new();
    for (tag, file, title, y_label) in [
        (
            "eval/mmlu_acc",
            "mmlu.png",
            "MMLU accuracy".to_string(),
            "accuracy",
        ),
        (
            score_tag.as_str(),
            "trait_score.png",
            format!("{trait_name} score (judge)"),
            "score (0-100)",
        ),
        (
            shift_tag.as_str(),
            "projection_shift.png",
            format!("{trait_name} projection shift"),
            "shift along v̂",
        ),
    ] {
        let series = run_series(runs, false, |r| {
            r.evals
                .iter()
                .filter_map(|e| e.scalars.get(tag).map(|&v| (e.step as f64, v)))
                .collect()
        });
        if series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        let chart = LineChart {
            title,
            x_label: "step".into(),
            y_label: y_label.into(),
            y_range: None,
            series,
        };
        charts.push((file, chart));
    }
    charts
}

/// Trait score against projection shift, one scatter per run, titled with Pearson's r over all
/// points; `None` when no evaluation has both.
fn score_vs_shift(runs: &[RunEvals], trait_name: &str) -> Option<LineChart> {
    let (score_tag, shift_tag) = (score_tag(trait_name), shift_tag(trait_name));
    let series = run_series(runs, true, |r| {
        r.evals
            .iter()
            .filter_map(|e| Some((*e.scalars.get(&shift_tag)?, *e.scalars.get(&score_tag)?)))
            .collect()
    });
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if all.is_empty() {
        return None;
    }
    let r = pearson(&all).map_or_else(|| "n/a".to_string(), |r| format!("{r:.3}"));
    Some(LineChart {
        title: format!("{trait_name} score vs projection shift (Pearson r = {r})"),
        x_label: "projection shift".into(),
        y_label: "trait score".into(),
        y_range: None,
        series,
    })
}

/// One series per run, in run order (so each run keeps its colour across charts).
fn run_series(
    runs: &[RunEvals],
    scatter: bool,
    points: impl Fn(&RunEvals) -> Vec<(f64, f64)>,
) -> Vec<Series> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| Series {
            label: r.name.clone(),
            points: points(r),
            color: i,
            dashed: false,
            scatter,
        })
        .collect()
}
