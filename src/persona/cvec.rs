//! llama.cpp control vectors: a persona vector exported for `llama-cli --control-vector`, and
//! such a file read back.
//!
//! A control vector is a GGUF file with `general.architecture = "controlvector"`, metadata
//! `controlvector.model_hint` (the model's architecture) and `controlvector.layer_count` (the
//! number of direction tensors), and one 1-D F32 tensor `direction.N` of the hidden size per
//! steered block.
//!
//! # Which layer `direction.N` steers
//!
//! llama.cpp adds `direction.N` to the output of the 0-based block `N`, i.e. to hidden-state
//! index `N + 1` in this crate's numbering (index 0 being the embedding output). From its source:
//!
//! - `common_control_vector_load_one` (common/common.cpp) parses `N` from the tensor name,
//!   rejects `N = 0` by skipping the whole file, and stores the data at `n_embd * (N - 1)`;
//! - `llama_adapter_cvec::apply` (src/llama-adapter.cpp) fills `tensors[il]` for
//!   `il = 1..n_layer` from `n_embd * (il - 1)`, so `tensors[il]` is `direction.il`; `tensors[0]`
//!   is always null ("there's never a tensor for layer 0");
//! - every model graph (e.g. src/models/llama.cpp) ends block `il` with
//!   `cur = build_cvec(cur, il)`, which adds `tensors[il]` to the residual stream after the FFN
//!   residual add, right before naming it `l_out-il` and feeding it to block `il + 1`.
//!
//! So block 0's output cannot be steered at all, and directions past the model's last block are
//! ignored.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Result};

use crate::gguf::writer::GgufWriter;
use crate::gguf::{GgmlType, GgufFile, Value};

const ARCH: &str = "controlvector";
const KEY_MODEL_HINT: &str = "controlvector.model_hint";
const KEY_LAYER_COUNT: &str = "controlvector.layer_count";
const DIRECTION_PREFIX: &str = "direction.";
/// Far deeper than any real model; bounds the allocation a hostile `direction.N` name can cause.
const MAX_BLOCKS: usize = 1 << 12;

#[derive(Debug, Clone, PartialEq)]
pub struct ImportedCvec {
    /// `[layers + 1][hidden]` in hidden-state numbering: row `N + 1` is `direction.N`; rows the
    /// file has no direction for (always rows 0 and 1) are zeros. `layers` is the fewest blocks
    /// the file addresses (its highest `N` + 1); pad to the model's depth if it is deeper.
    pub vectors: Vec<Vec<f32>>,
    pub model_hint: String,
    /// As stored; writers count their direction tensors, so it is not the model's depth.
    pub layer_count: u32,
}

/// Writes hidden-state rows `l = 2..=layers` as `direction.(l-1)`, scaled by `coef`.
///
/// Row 0 (the embedding) has no block. Row 1 (block 0's output) is dropped as well: llama.cpp
/// has no slot for block 0 and refuses a whole file that contains `direction.0`.
/// `vector` is `[layers + 1][hidden]`; `model_hint` is the model's `general.architecture`.
pub fn export(vector: &[Vec<f32>], coef: f32, model_hint: &str, path: &Path) -> Result<()> {
    let name = path.display();
    let hidden = vector.first().map_or(0, Vec::len);
    if vector.len() < 3 || hidden == 0 {
        bail!(
            "{name}: a control vector needs hidden-state rows for at least 2 blocks, got {} rows \
             of {hidden}",
            vector.len()
        );
    }
    if let Some((l, row)) = vector.iter().enumerate().find(|(_, r)| r.len() != hidden) {
        bail!(
            "{name}: hidden-state row {l} has {} elements, row 0 has {hidden}",
            row.len()
        );
    }
    crate::steering::ensure_finite(vector, &name.to_string())?;
    ensure!(
        coef.is_finite(),
        "{name}: the coefficient must be a finite number, got {coef}"
    );
    let directions = &vector[2..];
    let mut w = GgufWriter::new();
    // Keys, types and order as llama.cpp's cvector-generator writes them.
    w.add("general.architecture", Value::String(ARCH.into()));
    w.add(KEY_MODEL_HINT, Value::String(model_hint.into()));
    w.add(KEY_LAYER_COUNT, Value::I32(directions.len().try_into()?));
    for (i, row) in directions.iter().enumerate() {
        let scaled: Vec<f32> = row.iter().map(|v| v * coef).collect();
        w.add_tensor_f32(&format!("{DIRECTION_PREFIX}{}", i + 1), &[hidden], &scaled)?;
    }
    w.write(path)
}

/// Reads a control vector, accepting what llama.cpp's loader accepts: any set of 1-D F32
/// `direction.N` tensors (N ≥ 1) of one size, in any order, several for one block being summed.
pub fn import(path: &Path) -> Result<ImportedCvec> {
    let file = GgufFile::open(path)?;
    let name = path.display();
    let arch = file.architecture()?;
    if arch != ARCH {
        bail!("{name}: not a control vector: general.architecture is '{arch}', expected '{ARCH}'");
    }
    let model_hint = file.get_str(KEY_MODEL_HINT)?.to_string();
    let layer_count = file.get_u32(KEY_LAYER_COUNT)?;

    let mut directions = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        let block = t
            .name
            .strip_prefix(DIRECTION_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                anyhow!(
                    "{name}: tensor '{}' is not named {DIRECTION_PREFIX}N",
                    t.name
                )
            })?;
        if block == 0 {
            bail!(
                "{name}: tensor '{}' would steer block 0, which llama.cpp cannot do (it rejects \
                 the file)",
                t.name
            );
        }
        if block >= MAX_BLOCKS {
            bail!(
                "{name}: tensor '{}' addresses block {block}, more than {MAX_BLOCKS} blocks",
                t.name
            );
        }
        if t.ggml_type != GgmlType::F32 || t.dims.len() != 1 {
            bail!(
                "{name}: tensor '{}' is {} with shape {:?}, expected a 1-D F32 vector",
                t.name,
                t.ggml_type,
                t.shape()
            );
        }
        directions.push((block, &t.name, file.tensor_f32(&t.name)?.1));
    }

    let (_, first, first_data) = directions
        .first()
        .ok_or_else(|| anyhow!("{name}: no {DIRECTION_PREFIX}N tensors"))?;
    let hidden = first_data.len();
    if let Some((_, other, data)) = directions.iter().find(|d| d.2.len() != hidden) {
        bail!(
            "{name}: tensor '{other}' has {} elements but '{first}' has {hidden}: all directions \
             must have the model's hidden size",
            data.len()
        );
    }
    let layers = directions.iter().map(|d| d.0).max().unwrap_or(0) + 1;
    let mut vectors = vec![vec![0.0; hidden]; layers + 1];
    for (block, _, data) in directions {
        for (v, d) in vectors[block + 1].iter_mut().zip(data) {
            *v += d;
        }
    }
    crate::steering::ensure_finite(&vectors, &name.to_string())?;
    Ok(ImportedCvec {
        vectors,
        model_hint,
        layer_count,
    })
}
