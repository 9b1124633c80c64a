//! GGUF v3 (little-endian) writer, the counterpart of [`GgufFile`](super::GgufFile).
//!
//! Given the same keys and tensors in the same order, the output is byte for byte what gguf-py's
//! `GGUFWriter` writes (each tensor's data padded to the alignment, the last one included), so
//! that files from here and from the Python tooling can be compared as bytes. The file is built
//! in memory, which suits the small files this crate writes (control vectors, adapters).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::{describe, GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};

const VERSION: u32 = 3;
/// gguf.cpp rejects names of `GGML_MAX_NAME` (64) bytes or more: they must fit with a NUL.
const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Default)]
pub struct GgufWriter {
    /// In insertion order, which is the file's order.
    metadata: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

#[derive(Debug)]
struct Tensor {
    name: String,
    /// GGUF order: `dims[0]` varies fastest.
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`, replacing an earlier value in place (as gguf-py does), since a file with a
    /// duplicate key is invalid.
    pub fn add(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// `shape` is row-major (PyTorch/HF order), as [`GgufFile::tensor_f32`](super::GgufFile::tensor_f32)
    /// returns it.
    pub fn add_tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            bail!("tensor name '{name}' is longer than {MAX_NAME_LEN} bytes");
        }
        if self.tensors.iter().any(|t| t.name == name) {
            bail!("duplicate tensor name '{name}'");
        }
        if shape.is_empty() || shape.len() > MAX_DIMS as usize {
            bail!(
                "tensor '{name}' has {} dimensions (1 to {MAX_DIMS} supported)",
                shape.len()
            );
        }
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!(
                "tensor '{name}': shape {shape:?} holds {n} elements, got {}",
                data.len()
            );
        }
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: GgmlType::F32,
            data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        Ok(())
    }

    /// Writes to a temporary file beside `path` and renames it over `path`, so that a reader
    /// never sees a half-written file and a failed write leaves any previous file intact.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self
            .to_bytes()
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        crate::atomic::write(path, &bytes)
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        // Honoured rather than rejected, because a reader aligns to whatever the key says.
        let alignment = match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => bail!(
                "metadata key 'general.alignment' must be a power-of-two u32, got {}",
                describe(v)
            ),
        };
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut out, value).with_context(|| format!("metadata key '{key}'"))?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).next_multiple_of(alignment);
        }
        pad(&mut out, alignment);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, alignment);
        }
        Ok(out)
    }
}

/// The GGUF value type ids, as the reader decodes them.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // The element type is stored once, so an array has to be homogeneous, and an empty
            // one has no type to store (gguf-py refuses both too).
            let elem_ty = type_id(items.first().context("empty arrays cannot be written")?);
            if let Some((i, e)) = items
                .iter()
                .enumerate()
                .find(|(_, e)| type_id(e) != elem_ty)
            {
                bail!(
                    "array element {i} is {}, but element 0 is {}: arrays must be homogeneous",
                    e.type_name(),
                    items[0].type_name()
                );
            }
            out.extend_from_slice(&elem_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for (i, item) in items.iter().enumerate() {
                put_value(out, item).with_context(|| format!("array element {i}"))?;
            }
        }
    }
    Ok(())
}
