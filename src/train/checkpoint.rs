//! Checkpoints: `<run>/step-<N>/` with the adapter in PEFT's format, the recipe as run, and the
//! trainer state (optimizer moments, step, data position). Each is written to a hidden temporary
//! directory and renamed into place, so a crash never leaves a torn checkpoint; the rename is
//! the step's commit point (see [`Staged`]).

use crate::model::lora::{host, host_tensor, Adapters};
use crate::recipe::OptimConfig;
use crate::tensor_file::{self, Values};
use crate::train::optim::AdamW;
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where training stands after a step; enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// The next micro-batch: epoch and index into that epoch's batch order.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    /// Real tokens processed so far.
    pub tokens_seen: u64,
}

pub const ADAPTER_FILES: [&str; 2] = ["adapter_model.safetensors", "adapter_config.json"];

pub fn step_dir(run: &Path, step: usize) -> PathBuf {
    run.join(format!("step-{step}"))
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(run) else {
        return Ok(out);
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", run.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A checkpoint written to a hidden directory, not yet visible to [`list`] or `--resume`: the
/// trainer adds the step's evaluation to it and writes the step's history, then commits it.
pub struct Staged {
    /// Where files of the checkpoint go until [`commit`].
    pub tmp: PathBuf,
    step: usize,
}

/// Writes checkpoint `state.step` to a hidden directory (see [`Staged`]).
pub fn stage(
    run: &Path,
    state: &TrainerState,
    adapters: &Adapters,
    optimizer: &AdamW,
    recipe_toml: &str,
    base_model: &str,
) -> Result<Staged> {
    let tmp = run.join(format!(".step-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    crate::loader::peft::save(adapters, &tmp, base_model)?;
    let moments: Vec<(String, Vec<f32>, Vec<usize>)> = optimizer
        .m
        .iter()
        .zip(&optimizer.v)
        .enumerate()
        .flat_map(|(i, (m, v))| {
            [(format!("m.{i}"), m), (format!("v.{i}"), v)]
                .map(|(name, t)| host(t).map(|values| (name, values, t.dims().to_vec())))
        })
        .collect::<Result<_>>()?;
    let views: Vec<_> = moments
        .iter()
        .map(|(n, v, s)| (n.as_str(), Values::F32(v), s.clone()))
        .collect();
    let meta = [("adam_step".to_string(), optimizer.step.to_string())].into();
    tensor_file::write(&tmp.join("optimizer.safetensors"), &views, Some(meta))?;
    crate::atomic::write(
        &tmp.join("trainer_state.json"),
        serde_json::to_string_pretty(state)? + "\n",
    )?;
    crate::atomic::write(&tmp.join("recipe.toml"), recipe_toml)?;
    Ok(Staged {
        tmp,
        step: state.step,
    })
}

/// Renames a staged checkpoint into place as `step-<N>`, then deletes all but the newest
/// `keep_last` (0 keeps all).
pub fn commit(run: &Path, staged: Staged, keep_last: usize) -> Result<PathBuf> {
    let dir = step_dir(run, staged.step);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    std::fs::rename(&staged.tmp, &dir)
        .with_context(|| format!("cannot move {} to {}", staged.tmp.display(), dir.display()))?;
    if keep_last > 0 {
        let all = list(run)?;
        for (_, old) in &all[..all.len().saturating_sub(keep_last)] {
            std::fs::remove_dir_all(old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        }
    }
    Ok(dir)
}

/// Reads a checkpoint back: trainer state, adapters and optimizer moments (in the order of
/// `Adapters::iter`, A then B), the optimizer continuing with the hyper-parameters `optim`.
pub fn load(
    dir: &Path,
    model: &crate::model::ModelConfig,
    optim: &OptimConfig,
    device: &Device,
) -> Result<(TrainerState, Adapters, AdamW)> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a trainer state", state_path.display()))?;
    let adapters = crate::loader::peft::load(dir, model, device)?;
    let path = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let adam_step = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("adam_step"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: metadata adam_step is missing", path.display()))?;
    let shapes: Vec<[usize; 2]> = adapters
        .iter()
        .flat_map(|(_, _, p)| [p.a.dims(), p.b.dims()])
        .collect();
    let read = |name: String, shape: [usize; 2]| -> Result<Tensor<2>> {
        let view = file
            .tensor(&name)
            .with_context(|| format!("{}: missing tensor {name}", path.display()))?;
        ensure!(
            view.shape() == shape,
            "{}: tensor {name} has shape {:?}, the adapter needs {shape:?}",
            path.display(),
            view.shape()
        );
        let values = crate::loader::safetensors::view_to_f32(&view)?;
        Ok(host_tensor(values, shape, device))
    };
    let m = shapes
        .iter()
        .enumerate()
        .map(|(i, &s)| read(format!("m.{i}"), s))
        .collect::<Result<_>>()?;
    let v = shapes
        .iter()
        .enumerate()
        .map(|(i, &s)| read(format!("v.{i}"), s))
        .collect::<Result<_>>()?;
    if file.len() != 2 * shapes.len() {
        bail!(
            "{}: {} tensors, the adapter has {} matrices (expected m.* and v.* for each)",
            path.display(),
            file.len(),
            shapes.len()
        );
    }
    Ok((
        state,
        adapters,
        AdamW {
            cfg: optim.clone(),
            m,
            v,
            step: adam_step,
        },
    ))
}
