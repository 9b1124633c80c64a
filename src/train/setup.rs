//! Setting a training run up: [`Setup`] loads what the recipe names and where the run stands,
//! then readies the run directory and becomes a [`Trainer`].

use super::checkpoint::{self, TrainerState};
use super::optim::AdamW;
use super::persona::{persona_vector, probe_set, training_steering};
use super::run::Trainer;
use super::step::{params, trainable};
use super::{memory, TrainOutcome};
use crate::data::{self, Example};
use crate::eval::PersonaEval;
use crate::history;
use crate::loader::LoadedModel;
use crate::model::lora::Adapters;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::probes::ProbeSet;
use crate::recipe::Recipe;
use crate::steering::Steering;
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The examples of a run and the order they are visited in.
pub(super) struct TrainData {
    pub(super) train: Vec<Example>,
    pub(super) val: Vec<Example>,
    /// Token counts of `train`, what batching sorts by.
    pub(super) lengths: Vec<usize>,
    /// The current epoch's batches (indices into `train`).
    pub(super) epoch_order: Vec<Vec<usize>>,
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
            recipe: self.recipe,
            run: self.run,
            lm: self.lm,
            data: self.data,
            steering: self.steering,
            adapters,
            optimizer: self.optimizer,
            state: self.state,
            total: self.total,
            last_checkpoint: self.last_checkpoint,
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
pub(super) struct RunPersona {
    /// Probes measured every `monitor.probe_every` steps.
    pub(super) monitor: Option<ProbeSet>,
    /// Probes for evaluation's projection shift when the per-step monitor is off.
    eval_probes: Option<ProbeSet>,
    artifacts: Option<TraitArtifacts>,
    rows: Option<Vec<Vec<f32>>>,
    /// Whether checkpoints are evaluated.
    pub(super) evaluating: bool,
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

    pub(super) fn eval<'a>(&'a self, trait_name: &'a str) -> PersonaEval<'a> {
        let probes = self.monitor.as_ref().or(self.eval_probes.as_ref());
        PersonaEval {
            trait_name,
            artifacts: self.artifacts.as_ref(),
            vector: self.rows.as_deref().zip(probes.map(|m| m.main_layer)),
            probes,
        }
    }
}
