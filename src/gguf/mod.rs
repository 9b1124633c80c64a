//! GGUF (v2/v3, little-endian) reader over a memory map.
//!
//! The whole header is parsed and validated in [`GgufFile::open`], so later accessors can rely on
//! every tensor's data lying inside the file. Every error names the file and the key or tensor it
//! concerns, because a bad model file is usually found by a user, far from this code.

pub mod dequant;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions; gguf.cpp rejects more.
const MAX_DIMS: u32 = 4;
/// Nesting is legal but never deep in real files; the cap bounds recursion on hostile input.
const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest encodings, used to reject counts that could not fit in the rest of the file before
/// allocating for them: a key-value is key length + type + 1 byte of value, a tensor info is
/// name length + n_dims + type + offset.
const MIN_KV_SIZE: usize = 8 + 4 + 1;
const MIN_TENSOR_INFO_SIZE: usize = 8 + 4 + 4 + 8;
/// Elements reserved up front for a list. The sizes above bound a count by the bytes left in the
/// file, but an element takes more memory than file (a u8 array element: 1 byte, as a `Value`
/// 32), so in a multi-gigabyte model a corrupt count could still reserve tens of gigabytes;
/// beyond this, lists grow only as their elements actually parse.
const MAX_PREALLOCATED: usize = 4096;

/// A metadata value, as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF-spec name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// Writers pick integer widths inconsistently (e.g. token ids as u32 or i32), so integer
    /// getters accept any width whose value fits.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }
}

macro_rules! ggml_types {
    ($($name:ident = $id:literal, $block_size:expr, $type_size:expr;)*) => {
        /// Tensor element types. All ids known to gguf-py are listed so that a file using any of
        /// them can still be opened and its other tensors read; only some can be dequantized.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType { $($name),* }

        impl GgmlType {
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $($id => Some(Self::$name),)* _ => None }
            }
            pub fn id(self) -> u32 {
                match self { $(Self::$name => $id),* }
            }
            pub fn name(self) -> &'static str {
                match self { $(Self::$name => stringify!($name)),* }
            }
            /// Elements per block.
            pub fn block_size(self) -> usize {
                match self { $(Self::$name => $block_size),* }
            }
            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self { $(Self::$name => $type_size),* }
            }
        }
    };
}

const QK_K: usize = 256;

// Sizes from ggml's type_traits (GGML_QUANT_SIZES in gguf-py).
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 2 + 16;
    Q4_1 = 3, 32, 2 + 2 + 16;
    Q5_0 = 6, 32, 2 + 4 + 16;
    Q5_1 = 7, 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, 32, 2 + 32;
    Q8_1 = 9, 32, 4 + 4 + 32;
    Q2_K = 10, QK_K, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, QK_K, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, QK_K, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, QK_K, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, QK_K, 2 + QK_K / 4;
    IQ2_XS = 17, QK_K, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, QK_K, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, QK_K, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, 32, 2 + 16;
    IQ3_S = 21, QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, QK_K, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, QK_K, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, QK_K, 2 + 4 * 13;
    TQ2_0 = 35, QK_K, 2 + 64;
    MXFP4 = 39, 32, 1 + 16;
    NVFP4 = 40, 64, 4 + 32;
    Q1_0 = 41, 128, 2 + 16;
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` varies fastest.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major (PyTorch/HF) shape, i.e. `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim was checked to fit in usize when the file was opened.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the map is read-only; as with any mmap-based loader, another process
        // truncating or rewriting the file while it is open is outside what we can guard against.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot memory-map", path.display()))?;
        let header = Header::parse(&mmap).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index: header.index,
            data_offset: header.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Absolute file offset of the (aligned) tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer in u32 range", |v| {
            v.as_int().and_then(|i| u32::try_from(i).ok())
        })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "an integer in u64 range", |v| {
            v.as_int().and_then(|i| u64::try_from(i).ok())
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "f32 or f64", Value::as_f32)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "array of strings", |v| {
            array(v)?
                .iter()
                .map(|e| match e {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect()
        })
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.typed(key, "array of integers in i32 range", |v| {
            array(v)?
                .iter()
                .map(|e| e.as_int().and_then(|i| i32::try_from(i).ok()))
                .collect()
        })
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.typed(key, "array of f32 or f64", |v| {
            array(v)?.iter().map(Value::as_f32).collect()
        })
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The tensor's raw (still quantized) bytes inside the memory map.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let info = self.require_tensor(name)?;
        // `open` checked that the data lies inside the file; checking again here only keeps
        // this accessor panic-free on its own.
        let range = tensor_nbytes(info).ok().and_then(|nbytes| {
            let start = usize::try_from(self.data_offset.checked_add(info.offset)?).ok()?;
            Some(start..start.checked_add(nbytes)?)
        });
        range.and_then(|r| self.mmap.get(r)).ok_or_else(|| {
            anyhow!(
                "{}: tensor '{name}' data lies outside the file",
                self.path.display()
            )
        })
    }

    /// Dequantized to f32; shape returned in row-major (PyTorch/HF) order, i.e. `dims` reversed.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.require_tensor(name)?;
        let bytes = self.tensor_data(name)?;
        let values = dequant::dequantize(info.ggml_type, bytes, info.n_elements() as usize)
            .map_err(|e| anyhow!("{e} for tensor '{name}' in {}", self.path.display()))?;
        Ok((info.shape(), values))
    }

    fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| anyhow!("{}: tensor '{name}' not found", self.path.display()))
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T> {
        let path = self.path.display();
        let value = self
            .get(key)
            .ok_or_else(|| anyhow!("{path}: metadata key '{key}' not found"))?;
        convert(value).ok_or_else(|| {
            anyhow!(
                "{path}: metadata key '{key}' is {}, expected {expected}",
                describe(value)
            )
        })
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) => match a.first() {
            Some(e) => format!("an array of {} ({} elements)", e.type_name(), a.len()),
            None => "an empty array".to_string(),
        },
        Value::String(_) => "a string".to_string(),
        other => format!("{other:?}"),
    }
}

fn tensor_nbytes(info: &TensorInfo) -> Result<usize> {
    let n = usize::try_from(info.n_elements())?;
    dequant::byte_size(info.ggml_type, n).ok_or_else(|| {
        let ty = info.ggml_type;
        anyhow!(
            "{n} elements of {ty} have no valid byte size ({} per block of {} bytes)",
            ty.block_size(),
            ty.type_size()
        )
    })
}

/// The parsed, validated header. Errors from here carry no path; `open` prefixes it.
struct Header {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    data_offset: u64,
}

impl Header {
    fn parse(buf: &[u8]) -> Result<Self> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.preamble()?;
        let n_tensors = r.count("tensor count", MIN_TENSOR_INFO_SIZE)?;
        let n_kv = r.count("metadata key-value count", MIN_KV_SIZE)?;
        let metadata = r.metadata(n_kv)?;
        let alignment = alignment(&metadata)?;
        let (tensors, index) = r.tensor_infos(n_tensors, alignment)?;
        let data_offset = (r.pos as u64)
            .checked_next_multiple_of(alignment)
            .context("data section offset overflows")?;
        check_data_in_file(&tensors, data_offset, buf.len() as u64)?;
        Ok(Self {
            version,
            metadata,
            tensors,
            index,
            data_offset,
        })
    }
}

fn alignment(metadata: &BTreeMap<String, Value>) -> Result<u64> {
    Ok(match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => bail!(
            "metadata key 'general.alignment' must be a power-of-two u32, got {}",
            describe(v)
        ),
    })
}

/// Every tensor's bytes lie inside the file, so accessors can slice without checking.
fn check_data_in_file(tensors: &[TensorInfo], data_offset: u64, file_size: u64) -> Result<()> {
    for t in tensors {
        let nbytes = tensor_nbytes(t).with_context(|| format!("tensor '{}'", t.name))?;
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(nbytes as u64));
        if end.is_none_or(|e| e > file_size) {
            bail!(
                "tensor '{}' data (offset {}, {nbytes} bytes) runs past end of file (size {file_size})",
                t.name,
                data_offset as u128 + t.offset as u128,
            );
        }
    }
    Ok(())
}

/// Bounds-checked little-endian cursor; every read fails instead of slicing past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The magic and the version, which must be one this reader knows.
    fn preamble(&mut self) -> Result<u32> {
        let magic: [u8; 4] = self.bytes().context("magic")?;
        if &magic != MAGIC {
            bail!(
                "bad magic \"{}\", expected \"GGUF\": not a GGUF file",
                magic.escape_ascii()
            );
        }
        let version = self.u32().context("version")?;
        match version {
            2 | 3 => Ok(version),
            v if matches!(v.swap_bytes(), 2 | 3) => {
                bail!(
                    "big-endian GGUF (version {}) is not supported",
                    v.swap_bytes()
                )
            }
            v => bail!("unsupported GGUF version {v} (supported: 2, 3)"),
        }
    }

    fn metadata(&mut self, n_kv: usize) -> Result<BTreeMap<String, Value>> {
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self
                .string()
                .with_context(|| format!("metadata key #{i}"))?;
            let value = self
                .u32()
                .and_then(|ty| self.value(ty, 0))
                .with_context(|| format!("metadata key '{key}'"))?;
            if metadata.contains_key(&key) {
                bail!("duplicate metadata key '{key}'");
            }
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    /// The tensor infos in file order, and each name's position among them.
    fn tensor_infos(
        &mut self,
        n_tensors: usize,
        alignment: u64,
    ) -> Result<(Vec<TensorInfo>, HashMap<String, usize>)> {
        let mut tensors = Vec::with_capacity(n_tensors.min(MAX_PREALLOCATED));
        let mut index = HashMap::with_capacity(n_tensors.min(MAX_PREALLOCATED));
        for i in 0..n_tensors {
            let name = self
                .string()
                .with_context(|| format!("tensor info #{i} name"))?;
            let info = self
                .tensor_info(name.clone(), alignment)
                .with_context(|| format!("tensor '{name}' info"))?;
            if index.insert(name, i).is_some() {
                bail!("duplicate tensor name '{}'", info.name);
            }
            tensors.push(info);
        }
        Ok((tensors, index))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| {
                anyhow!(
                    "{n} bytes at offset {} run past end of file (size {})",
                    self.pos,
                    self.buf.len()
                )
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A u64 element count, rejected when `count * min_size` bytes cannot remain in the file,
    /// so that a corrupt count can never cause a huge allocation.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let count = self.u64().context(what.to_string())?;
        let remaining = self.buf.len() - self.pos;
        let max = remaining / min_size;
        match usize::try_from(count) {
            Ok(c) if c <= max => Ok(c),
            _ => bail!(
                "{what} {count} at offset {} is impossible: the {remaining} bytes left hold at most \
                 {max} (truncated or corrupt file)",
                self.pos - 8
            ),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64().context("string length")?;
        let start = self.pos;
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|n| self.take(n).ok())
            .ok_or_else(|| {
                anyhow!(
                    "string of length {len} at offset {start} runs past end of file (size {})",
                    self.buf.len()
                )
            })?;
        // Checked in place: a corrupt length may span gigabytes of tensor data.
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| anyhow!("string at offset {start} is not valid UTF-8: {e}"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [b] => bail!("invalid bool byte {b} at offset {}", self.pos - 1),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    bail!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels");
                }
                let elem_ty = self.u32()?;
                let n = self.count("array length", min_value_size(elem_ty)?)?;
                let mut items = Vec::with_capacity(n.min(MAX_PREALLOCATED));
                for i in 0..n {
                    let item = self
                        .value(elem_ty, depth + 1)
                        .with_context(|| format!("array element {i}"))?;
                    items.push(item);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            _ => bail!(
                "unknown value type {ty} at offset {}",
                self.pos.saturating_sub(4)
            ),
        })
    }

    fn tensor_info(&mut self, name: String, alignment: u64) -> Result<TensorInfo> {
        let n_dims = self.u32().context("n_dims")?;
        if n_dims > MAX_DIMS {
            bail!("{n_dims} dimensions (at most {MAX_DIMS} supported)");
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for i in 0..n_dims {
            let d = self.u64().with_context(|| format!("dimension {i}"))?;
            // ggml stores dims as int64_t, and the element count must be addressable here.
            n_elements = n_elements
                .checked_mul(d)
                .filter(|&n| i64::try_from(d).is_ok() && usize::try_from(n).is_ok())
                .ok_or_else(|| anyhow!("dimension {i} ({d}) makes the element count overflow"))?;
            dims.push(d);
        }
        let type_id = self.u32().context("type")?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| anyhow!("unknown ggml type id {type_id} at offset {}", self.pos - 4))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml_type.block_size() as u64) {
            bail!(
                "row length {row} (dims[0]) is not a multiple of the {ggml_type} block size {}",
                ggml_type.block_size()
            );
        }
        let offset = self.u64().context("data offset")?;
        if !offset.is_multiple_of(alignment) {
            bail!("data offset {offset} is not a multiple of the alignment {alignment}");
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}

fn min_value_size(ty: u32) -> Result<usize> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 4 + 8,
        _ => bail!("unknown array element type {ty}"),
    })
}
