//! A training run in progress: each phase of a step (batches and update, probes, checkpoint
//! and evaluation, records, commit) as a method of [`Trainer`].

use super::checkpoint::{self, Staged, TrainerState};
use super::loss::Batch;
use super::optim::{self, AdamW};
use super::setup::{RunPersona, TrainData};
use super::step::{ensure_adapters_finite, inference, optimizer_step, validation_loss};
use super::{crash_point, TrainOutcome};
use crate::data::{self, Example};
use crate::history;
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::model::lora::Adapters;
use crate::recipe::Recipe;
use crate::steering::Steering;
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One step's numbers and records, filled in phase by phase.
pub struct StepLog {
    pub loss: f64,
    tokens_per_sec: f64,
    /// TensorBoard scalars.
    scalars: Vec<(String, f64)>,
    /// The step's metrics.jsonl line.
    record: serde_json::Value,
}

impl StepLog {
    pub fn progress_line(&self, shift: Option<f32>) -> String {
        let (loss, speed) = (self.loss, self.tokens_per_sec);
        match shift {
            Some(s) => format!("loss {loss:.3} shift {s:+.2} {speed:.0} tok/s"),
            None => format!("loss {loss:.3} {speed:.0} tok/s"),
        }
    }
}

/// A run in progress: what [`Setup`] loaded, the persona side, and the run's writers.
pub struct Trainer<'r> {
    pub(super) recipe: &'r Recipe,
    pub(super) run: PathBuf,
    pub(super) lm: LoadedModel,
    pub(super) data: TrainData,
    pub(super) steering: Option<Steering>,
    pub(super) adapters: Adapters,
    pub(super) optimizer: AdamW,
    pub state: TrainerState,
    pub(super) total: usize,
    pub(super) last_checkpoint: PathBuf,
    pub(super) persona: RunPersona,
    pub(super) tb: EventWriter,
    pub(super) metrics: File,
    pub(super) metrics_path: PathBuf,
    pub(super) recipe_toml: String,
}

impl Trainer<'_> {
    /// At step 0: the probes' base projections and the base model's evaluation.
    pub(super) fn begin(&mut self) -> Result<()> {
        let state = &self.state;
        if let (Some(m), 0) = (&self.persona.monitor, state.step) {
            self.tb.scalars(0, &m.scalars(&m.base))?;
        }
        self.data.epoch_order = self.epoch_batches(state.epoch);
        if self.persona.evaluating && state.step == 0 {
            eprintln!("evaluating the base model (step 0)");
            self.evaluate(None, 0, &self.run.join("eval-base"))?;
        }
        Ok(())
    }

    fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let (o, d) = (&self.recipe.optim, &self.recipe.data);
        data::epoch_batches(&self.data.lengths, o.batch_size, d.shuffle_seed, epoch)
    }

    /// The step's micro-batches, taken in order across epoch boundaries.
    fn next_batches(&mut self) -> Vec<Batch> {
        let device = self.lm.model.device();
        let mut micro = Vec::with_capacity(self.recipe.optim.grad_accum);
        for _ in 0..self.recipe.optim.grad_accum {
            if self.state.batch_in_epoch == self.data.epoch_order.len() {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                self.data.epoch_order = self.epoch_batches(self.state.epoch);
            }
            let chosen: Vec<&Example> = self.data.epoch_order[self.state.batch_in_epoch]
                .iter()
                .map(|&i| &self.data.train[i])
                .collect();
            micro.push(Batch::new(&chosen, &device));
            self.state.batch_in_epoch += 1;
        }
        micro
    }

    /// One optimizer step: batches, forward, backward, update.
    pub fn step(&mut self) -> Result<StepLog> {
        let started = Instant::now();
        let micro = self.next_batches();
        let tokens: usize = micro.iter().map(Batch::num_tokens).sum();
        let o = &self.recipe.optim;
        if self.recipe.lora.dropout > 0.0 {
            let seed = o
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.state.step as u64);
            self.lm.model.device().seed(seed);
        }
        let lr = optim::learning_rate(o, self.state.step, self.total);
        let adapters = self.adapters.clone();
        let s = self;
        let done = optimizer_step(&s.lm.model, s.steering.as_ref(), adapters, &micro, &mut s.optimizer, lr)
            .with_context(|| {
                format!(
                    "step {} of {}: training stopped; nothing of this step was saved (the last checkpoint is {})",
                    s.state.step + 1,
                    s.recipe.name,
                    s.last_checkpoint.display()
                )
            })?;
        s.adapters = done.adapters;
        s.state.step += 1;
        s.state.tokens_seen += tokens as u64;
        let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64();
        let (loss, grad_norm) = (done.loss, done.grad_norm);
        Ok(StepLog {
            loss,
            tokens_per_sec,
            scalars: vec![
                ("train/loss".to_string(), loss),
                ("train/lr".to_string(), lr),
                ("train/grad_norm".to_string(), grad_norm),
                ("train/tokens_per_sec".to_string(), tokens_per_sec),
            ],
            record: json!({
                "step": s.state.step, "epoch": s.state.epoch, "loss": loss, "lr": lr,
                "grad_norm": grad_norm, "tokens": tokens, "tokens_per_sec": tokens_per_sec,
            }),
        })
    }

    /// Measures the probes when this step is a probe step; returns the headline shift.
    pub fn probe(&mut self, log: &mut StepLog) -> Result<Option<f32>> {
        let step = self.state.step;
        // The monitor exists only when `probe_every` > 0.
        let due = |every: usize| step.is_multiple_of(every) || step == self.total;
        let every = self.recipe.monitor.probe_every;
        let Some(m) = self.persona.monitor.as_ref().filter(|_| due(every)) else {
            return Ok(None);
        };
        let plain = inference(&self.adapters);
        let p = m.measure(Lm::new(&self.lm.model).with_adapters(Some(&plain)))?;
        let shift = m.main_shift(&p);
        log.record["projection_shift"] = json!(shift);
        log.record["main_layer"] = json!(m.main_layer);
        log.scalars.extend(m.scalars(&p));
        Ok(Some(shift))
    }

    /// At a checkpoint step: the validation loss, the checkpoint written to a hidden directory
    /// and the evaluation into it.
    pub fn stage_checkpoint(&mut self, log: &mut StepLog) -> Result<Option<Staged>> {
        let step = self.state.step;
        if !step.is_multiple_of(self.recipe.checkpoint.every_n_steps) && step != self.total {
            return Ok(None);
        }
        let plain = inference(&self.adapters);
        ensure_adapters_finite(&plain, step)?;
        if !self.data.val.is_empty() {
            let batch = self.recipe.optim.batch_size;
            let val = validation_loss(&self.lm.model, &plain, &self.data.val, batch)?;
            log.scalars.push(("val/loss".to_string(), val));
            log.record["val_loss"] = json!(val);
        }
        let s = &*self;
        let stage = checkpoint::stage(
            &s.run,
            &s.state,
            &plain,
            &s.optimizer,
            &self.recipe_toml,
            &s.recipe.model.source,
        )?;
        if self.persona.evaluating {
            self.evaluate(Some(&plain), step, &stage.tmp)?;
        }
        Ok(Some(stage))
    }

    /// The step's TensorBoard scalars and metrics.jsonl line.
    pub fn record(&mut self, log: &StepLog) -> Result<()> {
        self.tb.scalars(self.state.step as i64, &log.scalars)?;
        writeln!(self.metrics, "{}", log.record)
            .and_then(|_| self.metrics.flush())
            .with_context(|| format!("cannot write {}", self.metrics_path.display()))
    }

    /// Makes a staged checkpoint visible (after the step's records: see [`super::train`]).
    pub fn commit(&mut self, staged: Staged) -> Result<()> {
        let step = self.state.step;
        crash_point("staged", step);
        let keep = self.recipe.checkpoint.keep_last;
        self.last_checkpoint = checkpoint::commit(&self.run, staged, keep)?;
        crash_point("committed", step);
        Ok(())
    }

    /// Evaluates the adapters (none: the base model) into `dir`. The history line is written
    /// last: it is what marks the evaluation as done.
    fn evaluate(&mut self, adapters: Option<&Adapters>, step: usize, dir: &Path) -> Result<()> {
        let persona = self.persona.eval(&self.recipe.steering.trait_name);
        let lm = Lm::new(&self.lm.model).with_adapters(adapters);
        let summary = crate::eval::evaluate(
            lm,
            &self.lm.tokenizer,
            &persona,
            &self.recipe.eval,
            step,
            dir,
        )?;
        let scalars: Vec<(String, f64)> = summary.scalars.clone().into_iter().collect();
        self.tb.scalars(step as i64, &scalars)?;
        history::append_eval(&self.run, &summary)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// What the run leaves behind after training `steps_run` steps.
    pub fn outcome(&self, steps_run: usize, last_loss: Option<f64>) -> TrainOutcome {
        TrainOutcome {
            run_dir: self.run.clone(),
            steps: self.state.step,
            steps_run,
            last_loss,
            last_checkpoint: self.last_checkpoint.clone(),
        }
    }
}
