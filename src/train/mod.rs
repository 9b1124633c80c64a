//! The trainer: composes the frozen model, LoRA adapters and training-time steering; runs AdamW
//! on the adapters; logs loss and persona projections to TensorBoard; checkpoints and resumes.
//!
//! [`train`] reads as the run goes: setup (model, data, persona, state; then the run directory,
//! probes and history), then one
//! loop of optimizer steps, each followed by its probes, its checkpoint and evaluation, and its
//! records.

pub mod checkpoint;
pub mod evaluate;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod persona;
mod run;
mod setup;
pub mod step;

pub use persona::probe_set;
pub use step::{inference, optimizer_step, params, trainable, StepResult};

use crate::progress::Progress;
use crate::recipe::Recipe;
use anyhow::Result;
use setup::Setup;
use std::path::{Path, PathBuf};

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    /// The step the run stands at (its total when it finished).
    pub steps: usize,
    /// Steps trained by this call: 0 when a finished run was resumed.
    pub steps_run: usize,
    /// The loss of the last step, as metrics.jsonl records it.
    pub last_loss: Option<f64>,
    pub last_checkpoint: PathBuf,
}

/// Runs `recipe`; with `resume`, continues from the run's latest checkpoint.
///
/// Every step's records survive an interruption at any point: a checkpoint becomes visible
/// (its directory renamed into place) only after its step's metrics, evaluation and TensorBoard
/// scalars are written, and a resumed run first drops the records past its checkpoint, so each
/// step is recorded exactly once.
pub fn train(recipe: &Recipe, resume: bool) -> Result<TrainOutcome> {
    let run = recipe.run_dir();
    let created = !run.exists();
    let result = run_recipe(recipe, resume, &run);
    if result.is_err() && created {
        // A run that failed before writing anything leaves no empty directory behind (a
        // non-empty one is kept: it holds what was written).
        let _ = std::fs::remove_dir(&run);
    }
    result
}

fn run_recipe(recipe: &Recipe, resume: bool, run: &Path) -> Result<TrainOutcome> {
    let setup = Setup::load(recipe, resume, run)?;
    if setup.finished() {
        eprintln!(
            "{} already finished at step {}: nothing to train",
            run.display(),
            setup.state.step
        );
        return Ok(setup.outcome());
    }
    let mut t = setup.start()?;
    let bar = Progress::new(t.total() as u64, &recipe.name).with_position(t.state.step as u64);
    let first_step = t.state.step;
    let mut last_loss = None;
    let mut last_shift = None;
    while t.state.step < t.total() {
        // Forward, backward, update.
        let mut log = t.step()?;
        last_loss = Some(log.loss);
        // The persona shift on the probes, every `monitor.probe_every` steps.
        if let Some(shift) = t.probe(&mut log)? {
            last_shift = Some(shift);
        }
        // Checkpoint and evaluate: staged now, committed once the step's records are written.
        let staged = t.stage_checkpoint(&mut log)?;
        t.record(&log)?;
        if let Some(staged) = staged {
            t.commit(staged)?;
        }
        bar.set_message(log.progress_line(last_shift));
        bar.set_position(t.state.step as u64);
    }
    bar.finish();
    Ok(t.outcome(t.state.step - first_step, last_loss))
}

/// Test hook for the resume tests: `PERSONA_TRAIN_CRASH_AT=<point>:<step>` aborts the process
/// there, as `kill -9` would (nothing flushed, nothing cleaned up), so a test can interrupt a run
/// between two particular writes.
fn crash_point(point: &str, step: usize) {
    if std::env::var("PERSONA_TRAIN_CRASH_AT").is_ok_and(|v| v == format!("{point}:{step}")) {
        std::process::abort();
    }
}
