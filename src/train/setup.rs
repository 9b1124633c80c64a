//! The parts of a training run: [`Setup`] loads what the recipe names and where the run stands;
//! [`Trainer`] owns the run directory's writers and does each phase of a step.

use super::checkpoint::{self, Staged, TrainerState};
use super::loss::Batch;
use super::optim::{self, AdamW};
use super::persona::{persona_vector, probe_set, training_steering};
use super::step::validation_loss;
use super::step::{ensure_adapters_finite, inference, optimizer_step, params, trainable};
use super::{crash_point, memory, TrainOutcome};
use crate::data::{self, Example};
use crate::eval::PersonaEval;
use crate::history;
use crate::lm::Lm;
use crate::loader::LoadedModel;
use crate::model::lora::Adapters;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::probes::ProbeSet;
use crate::recipe::Recipe;
use crate::steering::Steering;
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The examples of a run and the order they are visited in.
struct TrainData {
    train: Vec<Example>,
    val: Vec<Example>,
    /// Token counts of `train`, what batching sorts by.
    lengths: Vec<usize>,
    /// The current epoch's batches (indices into `train`).
    epoch_order: Vec<Vec<usize>>,
}

/// What a recipe names, loaded, and where its run stands.
pub struct Setup<'r> {
    recipe: &'r Recipe,
    run: PathBuf,
    lm: LoadedModel,
    data: TrainData,
    /// The persona vector's rows of `steering.vector_kind`, `[layers + 1][hidden]`.
    rows: Option<Vec<Vec<f32>>>,
    vector: Option<crate::persona::vector::PersonaVector>,
    steering: Option<Steering>,
    adapters: Adapters,
    optimizer: AdamW,
    pub state: TrainerState,
    total: usize,
    last_checkpoint: PathBuf,
}

impl<'r> Setup<'r> {
    /// Loads the model, the data and the persona vector, and the latest checkpoint when resuming.
    pub fn load(recipe: &'r Recipe, resume: bool, run: &Path) -> Result<Self> {
        anyhow::ensure!(
            !recipe.data.train.is_empty(),
            "recipe {}: data.train: no training files given",
            recipe.name
        );
        let existing = checkpoint::list(run)?;
        if !resume && !existing.is_empty() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or --set name=NEW for a new one",
                run.display()
            );
        }
        let lm = recipe.model.load()?;
        let (data, total) = load_data(recipe, &lm)?;
        let config = lm.model.config();
        let vector = persona_vector(recipe, &lm)?;
        let rows = match &vector {
            Some(v) => Some(
                v.get(
                    &recipe.steering.vector_kind,
                    config.num_layers,
                    config.hidden_size,
                )
                .with_context(|| {
                    let path = recipe.steering.vector.clone().unwrap_or_default();
                    format!("steering.vector ({})", path.display())
                })?
                .to_vec(),
            ),
            None => None,
        };
        let steering = training_steering(
            recipe,
            rows.as_deref(),
            config.num_layers,
            config.hidden_size,
        )?;
        let latest = existing.last().filter(|_| resume);
        let (mut state, adapters, optimizer) = restore(recipe, &lm, latest.map(|(s, d)| (*s, d)))?;
        state.total_steps = total;
        Ok(Self {
            recipe,
            run: run.to_path_buf(),
            lm,
            data,
            rows,
            vector,
            steering,
            adapters,
            optimizer,
            state,
            total,
            last_checkpoint: existing.last().map(|(_, d)| d.clone()).unwrap_or_default(),
        })
    }

    pub fn finished(&self) -> bool {
        self.state.step >= self.total
    }

    /// The outcome of resuming a finished run: nothing trained, the recorded loss.
    pub fn outcome(&self) -> TrainOutcome {
        TrainOutcome {
            run_dir: self.run.clone(),
            steps: self.state.step,
            steps_run: 0,
            last_loss: history::recorded_loss(&history::metrics_path(&self.run), self.state.step),
            last_checkpoint: self.last_checkpoint.clone(),
        }
    }

    /// Readies the run directory: the history cut back to the checkpoint, the probes, the
    /// TensorBoard writer; evaluates the base model when the run starts from step 0.
    pub fn start(self) -> Result<Trainer<'r>> {
        let mut adapters = self
            .adapters
            .map(|_, _, _, t| trainable(t, &self.recipe.optim));
        adapters.dropout_active = true;
        print_memory_estimate(self.recipe, &self.lm, &self.data, &adapters);
        let run = &self.run;
        std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
        // Records past the checkpoint belong to the interrupted attempt and are written again.
        let resumed_at = self.state.step as u64;
        let metrics_path = history::metrics_path(run);
        history::truncate(&metrics_path, |step| step <= resumed_at)?;
        history::truncate(&history::evals_path(run), |step| {
            step <= resumed_at && resumed_at > 0
        })?;
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot open {}", metrics_path.display()))?;
        let persona = RunPersona::build(self.recipe, &self.lm, &self.vector, &self.rows, run)?;
        let tb = EventWriter::create(&self.recipe.tensorboard_dir())?;
        let mut t = Trainer {
            recipe_toml: self.recipe.to_toml()?,
            s: Setup { adapters, ..self },
            persona,
            tb,
            metrics,
            metrics_path,
        };
        t.begin()?;
        Ok(t)
    }
}

/// The examples, split and tokenized, and the number of optimizer steps they make.
fn load_data(recipe: &Recipe, lm: &LoadedModel) -> Result<(TrainData, usize)> {
    let d = &recipe.data;
    let examples = data::load_examples(&d.train, &lm.tokenizer, d.max_seq_len)?;
    let (train, val) = data::split_held_out(examples, d.held_out, d.shuffle_seed);
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let o = &recipe.optim;
    let batches_per_epoch = lengths.len().div_ceil(o.batch_size);
    let total = o
        .max_steps
        .unwrap_or(o.epochs * batches_per_epoch.div_ceil(o.grad_accum));
    let data = TrainData {
        train,
        val,
        lengths,
        epoch_order: Vec::new(),
    };
    Ok((data, total))
}

/// Trainer state, adapters and optimizer: from the checkpoint `(step, dir)`, else new.
fn restore(
    recipe: &Recipe,
    lm: &LoadedModel,
    latest: Option<(usize, &PathBuf)>,
) -> Result<(TrainerState, Adapters, AdamW)> {
    let config = lm.model.config();
    let device = lm.model.device();
    let o = &recipe.optim;
    let Some((step, dir)) = latest else {
        let adapters = Adapters::init(&recipe.lora, config, o.seed, &device)?;
        let optimizer = AdamW::new(&params(&adapters), o);
        let state = TrainerState {
            step: 0,
            total_steps: 0,
            epoch: 0,
            batch_in_epoch: 0,
            tokens_seen: 0,
        };
        return Ok((state, adapters, optimizer));
    };
    eprintln!("resuming {} from step {step}", recipe.run_dir().display());
    let (state, adapters, optimizer) = checkpoint::load(dir, config, o, &device)?;
    anyhow::ensure!(
        adapters.config == recipe.lora,
        "{}: the checkpoint's LoRA settings differ from the recipe's [lora]",
        dir.display()
    );
    Ok((state, adapters, optimizer))
}

fn print_memory_estimate(recipe: &Recipe, lm: &LoadedModel, data: &TrainData, a: &Adapters) {
    let o = &recipe.optim;
    let longest = data.lengths.iter().copied().max().unwrap_or(0);
    let most_targets = data
        .train
        .iter()
        .map(Example::num_targets)
        .max()
        .unwrap_or(0);
    let estimate = memory::MemoryEstimate::new(
        lm.model.config(),
        lm.model.dtype(),
        a,
        o.batch_size,
        longest,
        o.batch_size * most_targets,
    );
    eprintln!(
        "{} at batch {}×{longest}",
        estimate.describe(),
        o.batch_size
    );
}

/// The persona side of a run: the per-step probes, and what checkpoint evaluations need.
struct RunPersona {
    /// Probes measured every `monitor.probe_every` steps.
    monitor: Option<ProbeSet>,
    /// Probes for evaluation's projection shift when the per-step monitor is off.
    eval_probes: Option<ProbeSet>,
    artifacts: Option<TraitArtifacts>,
    rows: Option<Vec<Vec<f32>>>,
    /// Whether checkpoints are evaluated.
    evaluating: bool,
}

impl RunPersona {
    fn build(
        recipe: &Recipe,
        lm: &LoadedModel,
        vector: &Option<crate::persona::vector::PersonaVector>,
        rows: &Option<Vec<Vec<f32>>>,
        run: &Path,
    ) -> Result<Self> {
        let monitor = match (rows, recipe.monitor.probe_every) {
            (Some(rows), every) if every > 0 => Some(probe_set(recipe, lm, vector, rows, run)?),
            _ => None,
        };
        let e = &recipe.eval;
        let artifacts = match e.trait_score {
            Some(_) if e.at_checkpoints => {
                let path = recipe.steering.artifacts_path();
                Some(
                    TraitArtifacts::load(&path)
                        .with_context(|| format!("eval.trait_score: {}", path.display()))?,
                )
            }
            _ => None,
        };
        let evaluating = e.at_checkpoints && !e.is_empty();
        // Evaluation measures the shift on the same probes as the monitor, built here when the
        // per-step monitor is off.
        let eval_probes = match (&monitor, rows) {
            (None, Some(rows)) if evaluating && e.projection => {
                Some(probe_set(recipe, lm, vector, rows, run)?)
            }
            _ => None,
        };
        Ok(Self {
            monitor,
            eval_probes,
            artifacts,
            rows: rows.clone(),
            evaluating,
        })
    }

    fn eval<'a>(&'a self, trait_name: &'a str) -> PersonaEval<'a> {
        let probes = self.monitor.as_ref().or(self.eval_probes.as_ref());
        PersonaEval {
            trait_name,
            artifacts: self.artifacts.as_ref(),
            vector: self.rows.as_deref().zip(probes.map(|m| m.main_layer)),
            probes,
        }
    }
}

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

/// A run in progress.
pub struct Trainer<'r> {
    s: Setup<'r>,
    persona: RunPersona,
    tb: EventWriter,
    metrics: File,
    metrics_path: PathBuf,
    recipe_toml: String,
}

impl<'r> std::ops::Deref for Trainer<'r> {
    type Target = Setup<'r>;
    fn deref(&self) -> &Setup<'r> {
        &self.s
    }
}

impl Trainer<'_> {
    /// At step 0: the probes' base projections and the base model's evaluation.
    fn begin(&mut self) -> Result<()> {
        let state = &self.s.state;
        if let (Some(m), 0) = (&self.persona.monitor, state.step) {
            self.tb.scalars(0, &m.scalars(&m.base))?;
        }
        self.s.data.epoch_order = self.epoch_batches(state.epoch);
        if self.persona.evaluating && state.step == 0 {
            eprintln!("evaluating the base model (step 0)");
            self.evaluate(None, 0, &self.s.run.join("eval-base"))?;
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
            if self.s.state.batch_in_epoch == self.data.epoch_order.len() {
                self.s.state.epoch += 1;
                self.s.state.batch_in_epoch = 0;
                self.s.data.epoch_order = self.epoch_batches(self.s.state.epoch);
            }
            let chosen: Vec<&Example> = self.data.epoch_order[self.state.batch_in_epoch]
                .iter()
                .map(|&i| &self.data.train[i])
                .collect();
            micro.push(Batch::new(&chosen, &device));
            self.s.state.batch_in_epoch += 1;
        }
        micro
    }

    /// One optimizer step: batches, forward, backward, update.
    pub fn step(&mut self) -> Result<StepLog> {
        let started = Instant::now();
        let micro = self.next_batches();
        let tokens: usize = micro.iter().map(Batch::num_tokens).sum();
        let o = &self.s.recipe.optim;
        if self.recipe.lora.dropout > 0.0 {
            let seed = o
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.state.step as u64);
            self.lm.model.device().seed(seed);
        }
        let lr = optim::learning_rate(o, self.state.step, self.total);
        let adapters = self.s.adapters.clone();
        let s = &mut self.s;
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
        let due = step % self.recipe.monitor.probe_every == 0 || step == self.total;
        let Some(m) = self.persona.monitor.as_ref().filter(|_| due) else {
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
        if step % self.recipe.checkpoint.every_n_steps != 0 && step != self.total {
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
        let s = &self.s;
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
        self.s.last_checkpoint = checkpoint::commit(&self.s.run, staged, keep)?;
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
        history::append_eval(&self.s.run, &summary)
    }

    pub fn total(&self) -> usize {
        self.s.total
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
