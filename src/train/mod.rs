//! The trainer: composes the frozen model, LoRA adapters and training-time steering; runs AdamW
//! on the adapters; logs loss and persona projections to TensorBoard; checkpoints and resumes.

pub mod checkpoint;
pub mod loss;
pub mod memory;
pub mod monitor;
pub mod optim;

use crate::data::{self, Example};
use crate::loader::{self, LoadedModel};
use crate::lora::Adapters;
use crate::persona::artifacts::TraitArtifacts;
use crate::persona::extract::{extract, ExtractConfig};
use crate::persona::vector::PersonaVector;
use crate::progress::Progress;
use crate::recipe::{Recipe, SteeringMode};
use crate::steering::{SteerLayers, Steering};
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use burn::tensor::{GradientCheckpointingStrategy, Tensor};
use checkpoint::TrainerState;
use loss::Batch;
use monitor::Monitor;
use optim::AdamW;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    let device = crate::device::parse(&recipe.model.device)?;
    let dtype = crate::device::parse_dtype(&recipe.model.dtype)?;
    let files = crate::source::resolve(&recipe.model.source)?;
    let lm = loader::load(&files, &device, dtype)?;
    let model_config = lm.model.config().clone();
    let (layers, hidden) = (model_config.num_layers, model_config.hidden_size);

    let examples = data::load_examples(&recipe.data.train, &lm.tokenizer, recipe.data.max_seq_len)?;
    let (train_set, val_set) =
        data::split_held_out(examples, recipe.data.held_out, recipe.data.shuffle_seed);
    let lengths: Vec<usize> = train_set.iter().map(|e| e.ids.len()).collect();
    let o = &recipe.optim;
    let batches_per_epoch = lengths.len().div_ceil(o.batch_size);
    let total = o
        .max_steps
        .unwrap_or(o.epochs * batches_per_epoch.div_ceil(o.grad_accum));

    let vector = persona_vector(recipe, &lm)?;
    let rows = match &vector {
        Some(v) => Some(
            v.get(&recipe.steering.vector_kind, layers, hidden)
                .with_context(|| format!("steering.vector ({})", vector_path(recipe).display()))?
                .to_vec(),
        ),
        None => None,
    };
    let steering = training_steering(recipe, rows.as_deref(), layers, hidden)?;

    let recipe_toml = recipe.to_toml()?;
    let (mut state, adapters, mut optimizer) = match existing.last().filter(|_| resume) {
        Some((step, dir)) => {
            eprintln!("resuming {} from step {step}", run.display());
            let (state, adapters, optimizer) = checkpoint::load(dir, &model_config, &device)?;
            anyhow::ensure!(
                adapters.config == recipe.lora,
                "{}: the checkpoint's LoRA settings differ from the recipe's [lora]",
                dir.display()
            );
            (state, adapters, optimizer)
        }
        None => {
            let adapters = Adapters::init(&recipe.lora, &model_config, o.seed, &device)?;
            let optimizer = AdamW::new(&params(&adapters));
            let state = TrainerState {
                step: 0,
                total_steps: total,
                epoch: 0,
                batch_in_epoch: 0,
                tokens_seen: 0,
            };
            (state, adapters, optimizer)
        }
    };
    state.total_steps = total;
    let metrics_path = run.join("metrics.jsonl");
    if state.step >= total {
        eprintln!(
            "{} already finished at step {}: nothing to train",
            run.display(),
            state.step
        );
        return Ok(TrainOutcome {
            run_dir: run.to_path_buf(),
            steps: state.step,
            steps_run: 0,
            last_loss: recorded_loss(&metrics_path, state.step),
            last_checkpoint: existing.last().map(|(_, d)| d.clone()).unwrap_or_default(),
        });
    }
    let mut adapters = adapters.map(|_, _, _, t| trainable(t, o));
    adapters.dropout_active = true;
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let most_targets = train_set
        .iter()
        .map(Example::num_targets)
        .max()
        .unwrap_or(0);
    let estimate = memory::MemoryEstimate::new(
        &model_config,
        lm.model.dtype(),
        &adapters,
        o.batch_size,
        longest,
        o.batch_size * most_targets,
    );
    eprintln!(
        "{} at batch {}×{longest}",
        estimate.describe(),
        o.batch_size
    );

    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    // Records past the checkpoint belong to the interrupted attempt and are written again.
    let resumed_at = state.step as u64;
    truncate_history(&metrics_path, |step| step <= resumed_at)?;
    truncate_history(&crate::report::evals_path(run), |step| {
        step <= resumed_at && resumed_at > 0
    })?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot open {}", metrics_path.display()))?;

    let monitor = match (&rows, recipe.monitor.probe_every) {
        (Some(rows), every) if every > 0 => Some(build_monitor(recipe, &lm, &vector, rows, run)?),
        _ => None,
    };
    let mut tb = EventWriter::create(&recipe.tensorboard_dir())?;
    if let (Some(m), 0) = (&monitor, state.step) {
        tb.scalars(0, &m.scalars(&m.base))?;
    }
    let artifacts = match recipe.eval.trait_score {
        Some(_) if recipe.eval.at_checkpoints => {
            let path = recipe.steering.artifacts_path();
            Some(
                TraitArtifacts::load(&path)
                    .with_context(|| format!("eval.trait_score: {}", path.display()))?,
            )
        }
        _ => None,
    };
    let evaluating = recipe.eval.at_checkpoints && !recipe.eval.is_empty();
    // Evaluation measures the shift on the same probes as the monitor, built here when the
    // per-step monitor is off.
    let eval_probes = match (&monitor, &rows) {
        (None, Some(rows)) if evaluating && recipe.eval.projection => {
            Some(build_monitor(recipe, &lm, &vector, rows, run)?)
        }
        _ => None,
    };
    let probes = monitor.as_ref().or(eval_probes.as_ref());
    let persona = crate::eval::PersonaEval {
        trait_name: &recipe.steering.trait_name,
        artifacts: artifacts.as_ref(),
        vector: rows.as_deref().zip(probes.map(|m| m.main_layer)),
        probes,
    };
    // The history line is written last: it is what marks the evaluation as done.
    let evaluate = |adapters: Option<&Adapters>,
                    step: usize,
                    dir: &Path,
                    tb: &mut EventWriter|
     -> Result<()> {
        let summary =
            crate::eval::evaluate(&lm, adapters, None, &persona, &recipe.eval, step, dir)?;
        let scalars: Vec<(String, f64)> = summary.scalars.clone().into_iter().collect();
        tb.scalars(step as i64, &scalars)?;
        crate::eval::append_history(run, &summary)
    };
    if evaluating && state.step == 0 {
        eprintln!("evaluating the base model (step 0)");
        evaluate(None, 0, &run.join("eval-base"), &mut tb)?;
    }

    let bar = Progress::new(total as u64, &recipe.name).with_position(state.step as u64);

    let mut epoch_order = data::epoch_batches(
        &lengths,
        o.batch_size,
        recipe.data.shuffle_seed,
        state.epoch,
    );
    let first_step = state.step;
    let mut last_loss = None;
    let mut last_shift: Option<f32> = None;
    let mut last_checkpoint = existing.last().map(|(_, d)| d.clone()).unwrap_or_default();
    while state.step < total {
        let started = Instant::now();
        // The step's micro-batches, taken in order across epoch boundaries.
        let mut micro: Vec<Batch> = Vec::with_capacity(o.grad_accum);
        for _ in 0..o.grad_accum {
            if state.batch_in_epoch == epoch_order.len() {
                state.epoch += 1;
                state.batch_in_epoch = 0;
                epoch_order = data::epoch_batches(
                    &lengths,
                    o.batch_size,
                    recipe.data.shuffle_seed,
                    state.epoch,
                );
            }
            let chosen: Vec<&Example> = epoch_order[state.batch_in_epoch]
                .iter()
                .map(|&i| &train_set[i])
                .collect();
            micro.push(Batch::new(&chosen, &device));
            state.batch_in_epoch += 1;
        }
        let tokens: usize = micro.iter().map(Batch::num_tokens).sum();
        if recipe.lora.dropout > 0.0 {
            device.seed(
                o.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(state.step as u64),
            );
        }

        // Forward, backward, update.
        let lr = optim::learning_rate(o, state.step, total);
        let done = optimizer_step(
            &lm.model,
            adapters,
            steering.as_ref(),
            &micro,
            &mut optimizer,
            lr,
            o,
        )
        .with_context(|| {
            format!(
                "step {} of {}: training stopped; nothing of this step was saved (the last checkpoint is {})",
                state.step + 1,
                recipe.name,
                last_checkpoint.display()
            )
        })?;
        adapters = done.adapters;
        let (loss_sum, grad_norm) = (done.loss, done.grad_norm);
        state.step += 1;
        state.tokens_seen += tokens as u64;
        last_loss = Some(loss_sum);
        let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64();

        // Probes and the step's records.
        let step = state.step as i64;
        let mut scalars = vec![
            ("train/loss".to_string(), loss_sum),
            ("train/lr".to_string(), lr),
            ("train/grad_norm".to_string(), grad_norm),
            ("train/tokens_per_sec".to_string(), tokens_per_sec),
        ];
        let mut record = serde_json::json!({
            "step": state.step, "epoch": state.epoch, "loss": loss_sum, "lr": lr,
            "grad_norm": grad_norm, "tokens": tokens, "tokens_per_sec": tokens_per_sec,
        });
        if let Some(m) = monitor
            .as_ref()
            .filter(|_| state.step % recipe.monitor.probe_every == 0 || state.step == total)
        {
            let p = m.measure(&lm.model, Some(&inference(&adapters)))?;
            let shift = m.main_shift(&p);
            last_shift = Some(shift);
            record["projection_shift"] = serde_json::json!(shift);
            record["main_layer"] = serde_json::json!(m.main_layer);
            scalars.extend(m.scalars(&p));
        }

        // Checkpoint and evaluate: staged first, committed after the step's records.
        let mut staged = None;
        if state.step % recipe.checkpoint.every_n_steps == 0 || state.step == total {
            let plain = inference(&adapters);
            ensure_adapters_finite(&plain, state.step)?;
            if !val_set.is_empty() {
                let val = validation_loss(&lm, &plain, &val_set, o.batch_size)?;
                scalars.push(("val/loss".to_string(), val));
                record["val_loss"] = serde_json::json!(val);
            }
            let stage = checkpoint::stage(
                run,
                &state,
                &plain,
                &optimizer,
                &recipe_toml,
                &recipe.model.source,
            )?;
            if evaluating {
                evaluate(Some(&plain), state.step, &stage.tmp, &mut tb)?;
            }
            staged = Some(stage);
        }
        tb.scalars(step, &scalars)?;
        writeln!(metrics, "{record}")
            .and_then(|_| metrics.flush())
            .with_context(|| format!("cannot write {}", metrics_path.display()))?;
        if let Some(stage) = staged {
            crash_point("staged", state.step);
            last_checkpoint = checkpoint::commit(run, stage, recipe.checkpoint.keep_last)?;
            crash_point("committed", state.step);
        }

        bar.set_message(match last_shift {
            Some(s) => format!("loss {loss_sum:.3} shift {s:+.2} {tokens_per_sec:.0} tok/s"),
            None => format!("loss {loss_sum:.3} {tokens_per_sec:.0} tok/s"),
        });
        bar.set_position(state.step as u64);
    }
    bar.finish();
    Ok(TrainOutcome {
        run_dir: run.to_path_buf(),
        steps: state.step,
        steps_run: state.step - first_step,
        last_loss,
        last_checkpoint,
    })
}

/// Test hook for the resume tests: `PERSONA_TRAIN_CRASH_AT=<point>:<step>` aborts the process
/// there, as `kill -9` would (nothing flushed, nothing cleaned up), so a test can interrupt a run
/// between two particular writes.
fn crash_point(point: &str, step: usize) {
    if std::env::var("PERSONA_TRAIN_CRASH_AT").is_ok_and(|v| v == format!("{point}:{step}")) {
        std::process::abort();
    }
}

/// Refuses to checkpoint adapters that hold NaN or infinite values.
fn ensure_adapters_finite(adapters: &Adapters, step: usize) -> Result<()> {
    for (layer, target, pair) in adapters.iter() {
        for (name, t) in [("lora_A", &pair.a), ("lora_B", &pair.b)] {
            anyhow::ensure!(
                t.clone().is_finite().all().into_scalar::<bool>(),
                "step {step}: layer {layer} {} {name} holds non-finite values; no checkpoint was written (lower optim.lr?)",
                target.module_name()
            );
        }
    }
    Ok(())
}

/// The result of one optimizer step.
pub struct StepResult {
    /// The updated adapters, attached to the autodiff graph as new leaves.
    pub adapters: Adapters,
    /// Mean loss over every target token of the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimizer step over `micro` (gradient accumulation): the loss is the mean over all
/// their target tokens, gradients are summed, clipped to `cfg.grad_clip` and applied with AdamW
/// at learning rate `lr`. `adapters` must be autodiff leaves that require gradients.
pub fn optimizer_step(
    model: &crate::model::CausalLm,
    adapters: Adapters,
    steering: Option<&Steering>,
    micro: &[Batch],
    optimizer: &mut AdamW,
    lr: f64,
    cfg: &crate::recipe::OptimConfig,
) -> Result<StepResult> {
    let targets: usize = micro.iter().map(Batch::num_targets).sum();
    let current = params(&adapters);
    let mut grads: Option<Vec<Tensor<2>>> = None;
    let mut loss = 0.0;
    for batch in micro {
        let nll = loss::nll_sum(model, &adapters, steering, batch)?;
        let part = nll / targets.max(1) as f32;
        let g = part.backward();
        loss += part.inner().into_scalar::<f32>() as f64;
        let step_grads: Vec<Tensor<2>> = current
            .iter()
            .map(|p| p.grad(&g).unwrap_or_else(|| p.clone().inner().zeros_like()))
            .collect();
        grads = Some(match grads {
            None => step_grads,
            Some(acc) => acc
                .into_iter()
                .zip(step_grads)
                .map(|(a, b)| a + b)
                .collect(),
        });
    }
    let grads = grads.expect("at least one micro-batch");
    let grad_norm = optim::global_norm(&grads);
    // Checked before the update, so a bad step never reaches the adapters or the moments.
    anyhow::ensure!(
        loss.is_finite() && grad_norm.is_finite(),
        "the loss is {loss} and the gradient norm {grad_norm} (lower optim.lr, check the data and the steering vector)"
    );
    let grads = optim::clip(grads, grad_norm, cfg.grad_clip);
    let updated = optimizer.update(
        current.into_iter().map(Tensor::inner).collect(),
        grads,
        lr,
        cfg,
    );
    let mut updated = updated.into_iter();
    let adapters = adapters
        .map(|_, _, _, _| trainable(updated.next().expect("one update per parameter"), cfg));
    Ok(StepResult {
        adapters,
        loss,
        grad_norm,
    })
}

/// An adapter matrix as an autodiff leaf that requires gradients. With
/// `optim.gradient_checkpointing`, burn's balanced checkpointing recomputes the memory-bound
/// activations of the graph built from it in the backward pass instead of keeping them.
pub fn trainable(t: Tensor<2>, cfg: &crate::recipe::OptimConfig) -> Tensor<2> {
    let t = t.autodiff();
    let t = match cfg.gradient_checkpointing {
        true => t.with_gradient_checkpointing_strategy(GradientCheckpointingStrategy::Balanced),
        false => t,
    };
    t.require_grad()
}

/// The adapter matrices in [`Adapters::iter`] order, `A` then `B` of each.
pub fn params(adapters: &Adapters) -> Vec<Tensor<2>> {
    adapters
        .iter()
        .flat_map(|(_, _, p)| [p.a.clone(), p.b.clone()])
        .collect()
}

/// The adapters outside the autodiff graph, without dropout: for probes, validation and saving.
pub fn inference(adapters: &Adapters) -> Adapters {
    let mut plain = adapters.map(|_, _, _, t| t.inner());
    plain.dropout_active = false;
    plain
}

fn validation_loss(
    lm: &LoadedModel,
    adapters: &Adapters,
    val: &[Example],
    batch_size: usize,
) -> Result<f64> {
    let device = lm.model.device();
    let (mut nll, mut n) = (0.0, 0);
    for chunk in val.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::new(&refs, &device);
        n += batch.num_targets();
        nll += loss::nll_sum(&lm.model, adapters, None, &batch)?.into_scalar::<f32>() as f64;
    }
    Ok(nll / n.max(1) as f64)
}

fn vector_path(recipe: &Recipe) -> PathBuf {
    recipe.steering.vector.clone().unwrap_or_default()
}

/// The recipe's persona vector, extracted first when the file is missing.
fn persona_vector(recipe: &Recipe, lm: &LoadedModel) -> Result<Option<PersonaVector>> {
    let Some(path) = &recipe.steering.vector else {
        return Ok(None);
    };
    if !path.exists() {
        let artifacts_path = recipe.steering.artifacts_path();
        eprintln!(
            "{} does not exist: extracting the {} vector first (persona-train extract --no-judge --max-new-tokens 32: every pair kept, no judge)",
            path.display(),
            recipe.steering.trait_name
        );
        let artifacts = TraitArtifacts::load(&artifacts_path)
            .with_context(|| format!("steering.artifacts ({})", artifacts_path.display()))?;
        let cfg = ExtractConfig {
            max_new_tokens: 32,
            no_filter: true,
            ..ExtractConfig::default()
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        extract(lm, &recipe.model.source, &artifacts, None, &cfg, path)?;
    }
    PersonaVector::load(path)
        .with_context(|| format!("steering.vector ({})", path.display()))
        .map(Some)
}

/// The intervention of the training forward pass, or `None` for mode `off`.
fn training_steering(
    recipe: &Recipe,
    rows: Option<&[Vec<f32>]>,
    layers: usize,
    hidden: usize,
) -> Result<Option<Steering>> {
    let s = &recipe.steering;
    let Some(rows) = rows.filter(|_| s.mode != SteeringMode::Off) else {
        return Ok(None);
    };
    let where_ = match s.layer {
        Some(l) => SteerLayers::Single(l),
        None => SteerLayers::All,
    };
    let steering = match s.mode {
        SteeringMode::Off => unreachable!("filtered above"),
        SteeringMode::AllLayers => {
            Steering::new(rows, SteerLayers::All, s.coef, s.positions, layers, hidden)
        }
        SteeringMode::SingleLayer => {
            Steering::new(rows, where_, s.coef, s.positions, layers, hidden)
        }
        SteeringMode::Ablate => Steering::ablate(rows, where_, s.positions, layers, hidden),
    };
    steering.context("steering").map(Some)
}

/// The probes of the recipe's `[monitor]` table on `rows`, cached in `dir/probes.jsonl`.
pub fn build_monitor(
    recipe: &Recipe,
    lm: &LoadedModel,
    vector: &Option<PersonaVector>,
    rows: &[Vec<f32>],
    dir: &Path,
) -> Result<Monitor> {
    let m = &recipe.monitor;
    let num_layers = lm.model.config().num_layers;
    let prompts: Vec<String> = match &m.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read monitor.prompts {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "monitor.prompts {}: expected a JSON list of strings",
                    path.display()
                )
            })?
        }
        None => {
            let path = recipe.steering.artifacts_path();
            TraitArtifacts::load(&path)
                .with_context(|| {
                    format!(
                        "monitor probes: the trait's evaluation questions ({})",
                        path.display()
                    )
                })?
                .eval_questions
        }
    };
    let prompts: Vec<String> = prompts.into_iter().take(m.max_prompts).collect();
    anyhow::ensure!(!prompts.is_empty(), "monitor: no probe prompts");
    let recommended = vector
        .as_ref()
        .and_then(|v| v.metadata.get("recommended_layer"))
        .and_then(|s| s.parse().ok());
    let main_layer = m
        .main_layer
        .or(recommended)
        .unwrap_or((2 * num_layers).div_ceil(3));
    let mut monitored = if m.layers.is_empty() {
        (1..=num_layers).collect()
    } else {
        m.layers.clone()
    };
    if !monitored.contains(&main_layer) {
        monitored.push(main_layer);
    }
    monitored.sort_unstable();
    monitored.dedup();
    if let Some(&bad) = monitored.iter().find(|&&l| l > num_layers) {
        bail!("monitor.layers: layer {bad} is out of range 0..={num_layers}");
    }
    Monitor::new(
        &lm.model,
        &lm.tokenizer,
        &recipe.steering.trait_name,
        rows,
        &prompts,
        monitored,
        main_layer,
        m.response_tokens,
        &dir.join("probes.jsonl"),
    )
}

/// Keeps the lines of a JSONL history whose `step` passes `keep` (rewritten atomically, so an
/// interruption leaves the old file or the new one).
fn truncate_history(path: &Path, keep: impl Fn(u64) -> bool) -> Result<()> {
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
fn recorded_loss(path: &Path, step: usize) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["step"].as_u64()? == step as u64).then(|| v["loss"].as_f64())?
    })
}
