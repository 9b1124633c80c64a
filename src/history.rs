//! A run's history: `metrics.jsonl` (one record per optimizer step) and `eval.jsonl` (one
//! [`EvalSummary`] per evaluation), both JSON lines keyed by `step`, both kept when checkpoints
//! are pruned, and both cut back to the checkpoint a run resumes from.

use crate::eval::EvalSummary;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where the trainer appends one record per optimizer step.
pub fn metrics_path(run: &Path) -> PathBuf {
    run.join("metrics.jsonl")
}

/// One run's evaluations, in step order (the base model is step 0).
pub struct RunEvals {
    pub name: String,
    pub evals: Vec<EvalSummary>,
}

/// Where the trainer appends one [`EvalSummary`] per evaluation; it survives checkpoint pruning.
pub fn evals_path(run: &Path) -> PathBuf {
    run.join("eval.jsonl")
}

/// Reads `<run>/eval.jsonl`; a later line for the same step (a resumed run) replaces an earlier.
pub fn read_evals(run: &Path) -> Result<RunEvals> {
    let path = evals_path(run);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (evaluations are written there when a recipe's [eval] runs)",
            path.display()
        )
    })?;
    let mut by_step = std::collections::BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let e: EvalSummary = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not an evaluation summary", path.display(), i + 1))?;
        by_step.insert(e.step, e);
    }
    let name = run.file_name().map_or_else(
        || run.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(RunEvals {
        name,
        evals: by_step.into_values().collect(),
    })
}

/// Appends `summary` to `<run>/eval.jsonl`, the run's evaluation history (checkpoint pruning
/// does not touch it).
pub fn append_eval(run: &Path, summary: &EvalSummary) -> Result<()> {
    use std::io::Write;
    let path = evals_path(run);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(summary)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Keeps the records of the JSONL history at `path` whose step `keep` accepts (atomically; a
/// missing file is an empty history).
pub fn truncate(path: &Path, keep: impl Fn(u64) -> bool) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let kept: String = text
        .lines()
        .filter(|line| record_step(line).is_some_and(&keep))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != text {
        crate::atomic::write(path, kept)?;
    }
    Ok(())
}

fn record_step(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?["step"].as_u64()
}

/// The loss metrics.jsonl records for `step`.
pub fn recorded_loss(path: &Path, step: usize) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["step"].as_u64()? == step as u64).then(|| v["loss"].as_f64())?
    })
}
