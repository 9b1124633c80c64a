//! Seeded fuzzing of every file format the crate reads: GGUF models and control vectors,
//! safetensors models and persona vectors, recipes, chat JSONL and trait artifacts.
//!
//! Each class reads a few hundred mutated copies of the shipped fixtures (truncations, bit flips,
//! random bytes, huge counts, lengths and offsets, hostile values in text formats). Every case
//! must end in `Ok` (the mutation left the file valid) or in an error that names the file; a
//! panic, or a single allocation far beyond what such small files need, fails the class. The
//! cases are deterministic: `fuzz <class> seed N` in a failure reproduces with the same seed.
//! Run with `-- --nocapture` to see the per-class summary lines.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::Result;
use burn::tensor::{DType, Device};
use persona_train::gguf::GgufFile;
use persona_train::loader::load_hf_model;
use persona_train::persona::artifacts::TraitArtifacts;
use persona_train::persona::cvec;
use persona_train::persona::vector::PersonaVector;
use persona_train::recipe::Recipe;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The fixtures are at most half a megabyte; no reader needs a single buffer this large for them.
const MAX_ALLOCATION: usize = 64 << 20;
/// Cases average a few milliseconds in release; a class averaging this much per case has one
/// that is pathologically slow (the bound is on the class, so that it holds without sleeps).
const MEAN_CASE_TIME_LIMIT: Duration = Duration::from_millis(50);

/// Cases per class; `PERSONA_TRAIN_FUZZ_CASES=N` runs more (or fewer) locally.
fn cases() -> u64 {
    std::env::var("PERSONA_TRAIN_FUZZ_CASES").map_or(500, |n| {
        n.parse()
            .expect("PERSONA_TRAIN_FUZZ_CASES must be a number of cases")
    })
}

// ---------------------------------------------------------------------------------------------
// The rules every case is held to: no panic, no huge allocation, errors that name the file.

thread_local! {
    /// The largest single allocation this thread asked for since the last reset.
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
    /// Set while a case runs, so that the panic hook records instead of printing.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// The last panic inside a case, with its location.
    static CASE_PANIC: Cell<String> = const { Cell::new(String::new()) };
}

/// The system allocator, noting the largest request per thread: a corrupt count that makes a
/// reader reserve gigabytes is a bug even on a machine whose overcommit lets it succeed (and
/// one that cannot succeed aborts the test binary, which fails the test too).
struct TrackLargest;

fn note_allocation(size: usize) {
    // `try_with`: allocations during thread teardown must not touch a destroyed thread-local.
    let _ = LARGEST_ALLOCATION.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for TrackLargest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: TrackLargest = TrackLargest;

/// The panic hook is process-wide and the classes run on parallel test threads, where a
/// take/restore pair per class could interleave and leave the quiet hook behind for good.
/// So one hook is installed for the whole binary: quiet on a thread inside a case, the
/// previous hook everywhere else.
fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| match IN_CASE.get() {
            true => CASE_PANIC.set(info.to_string().replace('\n', " ")),
            false => previous(info),
        }));
    });
}

/// Runs `f` catching (and not printing) a panic; returns its result or the panic's message with
/// its location, and the largest single allocation `f` made on this thread.
fn quietly<T>(f: impl FnOnce() -> T) -> (Result<T, String>, usize) {
    install_quiet_panic_hook();
    LARGEST_ALLOCATION.set(0);
    IN_CASE.set(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_CASE.set(false);
    let largest = LARGEST_ALLOCATION.get();
    let result = result.map_err(|payload| match CASE_PANIC.take() {
        // A panic on another thread, propagated here, did not pass through the quiet hook.
        at if at.is_empty() => payload_message(payload.as_ref()),
        at => at,
    });
    (result, largest)
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(non-string panic payload)".into(),
    }
}

/// How one class's cases ended, and every case that broke a rule.
#[derive(Default)]
struct Tally {
    cases: usize,
    ok: usize,
    err: usize,
    panics: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, case: &str, path: &Path, read: Reader) {
        self.cases += 1;
        let (result, largest) = quietly(|| read(path));
        let dir = path.parent().unwrap().display().to_string();
        let mut problems = Vec::new();
        match result {
            Err(panic) => {
                self.panics += 1;
                problems.push(format!("panicked: {panic}"));
            }
            Ok(Ok(())) => self.ok += 1,
            Ok(Err(e)) => {
                self.err += 1;
                let message = format!("{e:#}");
                if !message.contains(&dir) {
                    problems.push(format!("error does not name the file: {message:?}"));
                }
            }
        }
        if largest > MAX_ALLOCATION {
            problems.push(format!("allocated {largest} bytes at once"));
        }
        self.failures
            .extend(problems.into_iter().map(|p| format!("{case}: {p}")));
    }

    fn summary(&self, class: &str) -> String {
        format!(
            "fuzz {class}: {} cases, {} ok, {} err, {} panics",
            self.cases, self.ok, self.err, self.panics
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures and the library entry points that read them.

type Reader = fn(&Path) -> Result<()>;

/// A valid file to mutate, how to mutate it, the reader for it, and files that must sit next
/// to it.
struct Fixture {
    name: String,
    bytes: Vec<u8>,
    companions: Vec<PathBuf>,
    read: Reader,
    mutators: &'static [Mutator],
}

fn crate_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl Fixture {
    fn new(path: PathBuf, read: Reader, mutators: &'static [Mutator]) -> Self {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        Self {
            name,
            bytes,
            companions: Vec::new(),
            read,
            mutators,
        }
    }

    fn at(rel: &str, read: Reader, mutators: &'static [Mutator]) -> Self {
        Self::new(crate_path(rel), read, mutators)
    }

    /// Every file of `dir` ending in `.ext`, in name order so that seeds stay reproducible.
    fn all_in(dir: &str, ext: &str, read: Reader, mutators: &'static [Mutator]) -> Vec<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(crate_path(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no .{ext} files in {dir}");
        paths
            .into_iter()
            .map(|p| Self::new(p, read, mutators))
            .collect()
    }

    /// Files of the fixture's directory that its reader also opens.
    fn with_companions(mut self, dir: &str, names: &[&str]) -> Self {
        let dir = crate_path(dir);
        self.companions.extend(names.iter().map(|n| dir.join(n)));
        self
    }

    /// Only the first `n` lines: enough structure to mutate, cheap to read hundreds of times.
    fn head(mut self, n: usize) -> Self {
        let end = (self.bytes.iter().enumerate())
            .filter(|(_, &b)| b == b'\n')
            .nth(n - 1)
            .map_or(self.bytes.len(), |(i, _)| i + 1);
        self.bytes.truncate(end);
        self
    }
}

fn read_gguf(path: &Path) -> Result<()> {
    let file = GgufFile::open(path)?;
    for t in file.tensors() {
        file.tensor_f32(&t.name)?;
    }
    Ok(())
}

fn read_cvec(path: &Path) -> Result<()> {
    cvec::import(path).map(drop)
}

fn read_model(path: &Path) -> Result<()> {
    load_hf_model(path.parent().unwrap(), &Device::flex(), DType::F32).map(drop)
}

fn read_vector(path: &Path) -> Result<()> {
    PersonaVector::load(path).map(drop)
}

fn read_recipe(path: &Path) -> Result<()> {
    Recipe::load(path, &[]).map(drop)
}

fn read_chats(path: &Path) -> Result<()> {
    persona_train::data::read_chats(path).map(drop)
}

fn read_artifacts(path: &Path) -> Result<()> {
    TraitArtifacts::load(path).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// A mutated file and how it was made.
struct Mutant {
    what: String,
    bytes: Vec<u8>,
}

type Mutator = fn(&mut StdRng, &[u8]) -> Mutant;

fn truncate(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let cut = rng.random_range(0..b.len());
    Mutant {
        what: format!("truncated to {cut} bytes"),
        bytes: b[..cut].to_vec(),
    }
}

fn flip_bits(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let n = rng.random_range(1..=4);
    let bits: Vec<usize> = (0..n).map(|_| rng.random_range(0..b.len() * 8)).collect();
    let mut bytes = b.to_vec();
    for &bit in &bits {
        bytes[bit / 8] ^= 1 << (bit % 8);
    }
    Mutant {
        what: format!("flipped bits {bits:?}"),
        bytes,
    }
}

fn overwrite(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let at = rng.random_range(0..b.len());
    let n = rng.random_range(1..=8).min(b.len() - at);
    let new: Vec<u8> = (0..n).map(|_| rng.random()).collect();
    let mut bytes = b.to_vec();
    bytes[at..at + n].copy_from_slice(&new);
    Mutant {
        what: format!("overwrote bytes {at}.. with {new:02x?}"),
        bytes,
    }
}

/// A prefix of the file (often just its magic) followed by random bytes.
fn random_tail(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let keep = rng.random_range(0..=b.len().min(64));
    let n = rng.random_range(0..256);
    let mut bytes = b[..keep].to_vec();
    bytes.extend((0..n).map(|_| rng.random::<u8>()));
    Mutant {
        what: format!("first {keep} bytes, then {n} random bytes"),
        bytes,
    }
}

/// Values for a u64 count, length, offset or dimension that a reader must not trust.
fn huge_u64(rng: &mut StdRng, file_len: usize) -> u64 {
    *[
        u64::MAX,
        1 << 63,
        1 << 62,
        1 << 40,
        1 << 32,
        file_len as u64,
        0,
    ]
    .choose(rng)
    .unwrap()
}

/// Overwrites one count, length, offset, dimension or type field of a GGUF header.
fn huge_gguf_field(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let fields = gguf_fields(b);
    let field = fields.choose(rng).unwrap();
    let value = match field.width {
        8 => huge_u64(rng, b.len()),
        _ => u64::from(*[u32::MAX, 1 << 31, 5, 9, 13, 0].choose(rng).unwrap()),
    };
    let mut bytes = b.to_vec();
    bytes[field.at..field.at + field.width].copy_from_slice(&value.to_le_bytes()[..field.width]);
    Mutant {
        what: format!("set {} (offset {}) to {value}", field.name, field.at),
        bytes,
    }
}

/// Sets the safetensors header-length prefix.
fn huge_header_len(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let len = match rng.random_bool(0.5) {
        true => huge_u64(rng, b.len()),
        false => *[100_000_001, b.len() as u64 - 7, 1].choose(rng).unwrap(),
    };
    let mut bytes = b.to_vec();
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    Mutant {
        what: format!("set the header length to {len}"),
        bytes,
    }
}

/// Mutates the JSON header of a safetensors file and rewrites its length prefix to match, so
/// that the mutation reaches the header's validation rather than the length check.
fn edit_header(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let (header, data) = b[8..].split_at(n);
    let edit: Mutator = *[swap_value, swap_value, flip_bits, overwrite, truncate]
        .choose(rng)
        .unwrap();
    let m = edit(rng, header);
    let mut bytes = (m.bytes.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&m.bytes);
    bytes.extend_from_slice(data);
    Mutant {
        what: format!("header {}", m.what),
        bytes,
    }
}

/// Values that do not belong where a text format expects a number, string or list.
const HOSTILE: &[&str] = &[
    "18446744073709551616",
    "99999999999999999999999999999",
    "9223372036854775807",
    "-9223372036854775809",
    "4294967296",
    "-1",
    "0",
    "1",
    "2",
    "64",
    "-0.0",
    "0.5",
    "1e309",
    "-1e309",
    "1e-400",
    "nan",
    "inf",
    "-inf",
    "\"text\"",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[]",
    "{}",
    "[1, \"a\"]",
    "true",
    "null",
    "\"/\"",
    "\"../config.json\"",
];

fn hostile_value(rng: &mut StdRng) -> String {
    match rng.random_range(0..HOSTILE.len() + 2) {
        i if i < HOSTILE.len() => HOSTILE[i].to_string(),
        i if i == HOSTILE.len() => format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        _ => format!("\"{}\"", "x".repeat(100_000)),
    }
}

/// Replaces one string or number literal with a hostile value.
fn swap_value(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let new = hostile_value(rng);
    let spans = literals(b);
    let span = match spans.choose(rng) {
        Some(s) => s.clone(),
        None => {
            let at = rng.random_range(0..=b.len());
            at..at
        }
    };
    let mut bytes = b[..span.start].to_vec();
    bytes.extend_from_slice(new.as_bytes());
    bytes.extend_from_slice(&b[span.end..]);
    Mutant {
        what: format!(
            "replaced {} at {} with {}",
            shorten(&b[span.clone()]),
            span.start,
            shorten(new.as_bytes())
        ),
        bytes,
    }
}

/// Deletes, duplicates or swaps lines (in TOML a duplicate is a repeated key or table).
fn edit_lines(rng: &mut StdRng, b: &[u8]) -> Mutant {
    let mut lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    let i = rng.random_range(0..lines.len());
    let j = rng.random_range(0..lines.len());
    let what = match rng.random_range(0..3) {
        0 => {
            lines.remove(i);
            format!("deleted line {}", i + 1)
        }
        1 => {
            let line = lines[i];
            lines.insert(i, line);
            format!("duplicated line {}", i + 1)
        }
        _ => {
            lines.swap(i, j);
            format!("swapped lines {} and {}", i + 1, j + 1)
        }
    };
    Mutant {
        what,
        bytes: lines.join(&b'\n'),
    }
}

/// Byte ranges of the string and number literals of JSON or TOML text, except JSON keys:
/// replacing a key only ever gives a syntax error, a value reaches the reader's validation.
fn literals(text: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let start = i;
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(text.len());
            }
            b'-' | b'0'..=b'9' => {
                let numeric = |c: &u8| c.is_ascii_digit() || b".e-+".contains(c);
                i += text[i..].iter().take_while(|c| numeric(c)).count();
            }
            _ => {
                i += 1;
                continue;
            }
        }
        let next = text[i..].iter().find(|c| !c.is_ascii_whitespace());
        if next != Some(&b':') {
            spans.push(start..i);
        }
    }
    spans
}

fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], bytes.len()),
        None => format!("{text:?}"),
    }
}

/// Where one field of a GGUF header lies.
struct Field {
    name: String,
    at: usize,
    width: usize,
}

/// Every count, length, offset, dimension and type field of a valid GGUF file's header.
fn gguf_fields(b: &[u8]) -> Vec<Field> {
    let mut w = HeaderWalk {
        b,
        pos: 8,
        fields: Vec::new(),
    };
    let n_tensors = w.field("tensor count", 8);
    let n_kv = w.field("metadata key-value count", 8);
    for _ in 0..n_kv {
        let key = w.string("key");
        let ty = w.field(&format!("'{key}' type"), 4);
        w.value(ty, &format!("'{key}'"));
    }
    for _ in 0..n_tensors {
        let name = w.string("tensor name");
        let n_dims = w.field(&format!("tensor '{name}' n_dims"), 4);
        for d in 0..n_dims {
            w.field(&format!("tensor '{name}' dims[{d}]"), 8);
        }
        w.field(&format!("tensor '{name}' type"), 4);
        w.field(&format!("tensor '{name}' offset"), 8);
    }
    w.fields
}

struct HeaderWalk<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
}

impl HeaderWalk<'_> {
    fn field(&mut self, name: &str, width: usize) -> u64 {
        let mut le = [0; 8];
        le[..width].copy_from_slice(&self.b[self.pos..self.pos + width]);
        self.fields.push(Field {
            name: name.to_string(),
            at: self.pos,
            width,
        });
        self.pos += width;
        u64::from_le_bytes(le)
    }

    fn string(&mut self, what: &str) -> String {
        let len = self.field(&format!("{what} length"), 8) as usize;
        self.pos += len;
        String::from_utf8_lossy(&self.b[self.pos - len..self.pos]).into_owned()
    }

    fn value(&mut self, ty: u64, what: &str) {
        match ty {
            0 | 1 | 7 => self.pos += 1,
            2 | 3 => self.pos += 2,
            4..=6 => self.pos += 4,
            10..=12 => self.pos += 8,
            8 => drop(self.string(&format!("{what} string"))),
            9 => {
                let elem = self.field(&format!("{what} element type"), 4);
                for i in 0..self.field(&format!("{what} array length"), 8) {
                    self.value(elem, &format!("{what}[{i}]"));
                }
            }
            _ => panic!("fixture has unknown GGUF value type {ty}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The classes.

/// Reads seeded mutants of the fixtures and asserts that every one followed the rules.
fn fuzz(class: &str, fixtures: &[Fixture]) {
    let cases = cases();
    let tmp = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = fixtures
        .iter()
        .enumerate()
        .map(|(i, f)| stage(f, &tmp.path().join(i.to_string())))
        .collect();
    let mut tally = Tally::default();
    let start = Instant::now();
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let i = rng.random_range(0..fixtures.len());
        let mutate = fixtures[i].mutators.choose(&mut rng).unwrap();
        let Mutant { what, bytes } = mutate(&mut rng, &fixtures[i].bytes);
        std::fs::write(&paths[i], bytes).unwrap();
        let case = format!("fuzz {class} seed {seed}, {}: {what}", fixtures[i].name);
        tally.check(&case, &paths[i], fixtures[i].read);
    }
    let elapsed = start.elapsed();
    println!("{} ({:.1} s)", tally.summary(class), elapsed.as_secs_f64());
    assert!(
        tally.failures.is_empty(),
        "{}\n{} cases broke the rules:\n{}",
        tally.summary(class),
        tally.failures.len(),
        tally.failures.join("\n")
    );
    let limit = MEAN_CASE_TIME_LIMIT * cases as u32;
    assert!(
        elapsed < limit,
        "fuzz {class} took {elapsed:?}, over {limit:?}: some case is far slower than it should be"
    );
}

/// Copies a fixture and its companions into `dir` and checks that the original reads cleanly,
/// so that the mutants start from a valid file; returns the path the mutants are written to.
fn stage(fixture: &Fixture, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for c in &fixture.companions {
        std::fs::copy(c, dir.join(c.file_name().unwrap())).unwrap();
    }
    let path = dir.join(&fixture.name);
    std::fs::write(&path, &fixture.bytes).unwrap();
    if let Err(e) = (fixture.read)(&path) {
        panic!("unmutated fixture {} fails: {e:#}", fixture.name);
    }
    path
}

const GGUF_MUTATORS: &[Mutator] = &[
    truncate,
    flip_bits,
    overwrite,
    random_tail,
    huge_gguf_field,
    huge_gguf_field,
    huge_gguf_field,
    huge_gguf_field,
];
const SAFETENSORS_MUTATORS: &[Mutator] = &[
    truncate,
    random_tail,
    huge_header_len,
    edit_header,
    edit_header,
    edit_header,
];
const TEXT_MUTATORS: &[Mutator] = &[
    truncate, flip_bits, overwrite, swap_value, swap_value, edit_lines,
];

#[test]
fn gguf_readers_reject_corrupt_files() {
    let gguf = |rel, read| Fixture::at(rel, read, GGUF_MUTATORS);
    fuzz(
        "gguf",
        &[
            gguf("tests/fixtures/dequant/mini.gguf", read_gguf),
            gguf("tests/fixtures/dequant/mini_align64.gguf", read_gguf),
            gguf("tests/fixtures/cvec/writer_all_types.gguf", read_gguf),
            gguf("tests/fixtures/cvec/python_written.gguf", read_cvec),
            gguf("tests/fixtures/cvec/rust_written.gguf", read_cvec),
        ],
    );
}

#[test]
fn safetensors_readers_reject_corrupt_files() {
    const QWEN: &str = "tests/fixtures/tiny-qwen2";
    const SHARDS: [&str; 3] = [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ];
    let index = "model.safetensors.index.json";
    fuzz(
        "safetensors",
        &[
            Fixture::at(
                "tests/fixtures/tiny-llama/model.safetensors",
                read_model,
                SAFETENSORS_MUTATORS,
            )
            .with_companions("tests/fixtures/tiny-llama", &["config.json"]),
            Fixture::at(
                &format!("{QWEN}/{}", SHARDS[1]),
                read_model,
                SAFETENSORS_MUTATORS,
            )
            .with_companions(QWEN, &["config.json", index, SHARDS[0], SHARDS[2]]),
            Fixture::at(&format!("{QWEN}/{index}"), read_model, TEXT_MUTATORS)
                .with_companions(QWEN, &["config.json", SHARDS[0], SHARDS[1], SHARDS[2]]),
            Fixture::at(
                "tests/fixtures/cvec/python_written.safetensors",
                read_vector,
                SAFETENSORS_MUTATORS,
            ),
            Fixture::at(
                "datasets/sycophancy/vector.smollm2-135m.safetensors",
                read_vector,
                SAFETENSORS_MUTATORS,
            ),
        ],
    );
}

#[test]
fn recipe_reader_rejects_corrupt_files() {
    fuzz(
        "recipe",
        &Fixture::all_in("recipes", "toml", read_recipe, TEXT_MUTATORS),
    );
}

#[test]
fn chat_reader_rejects_corrupt_files() {
    let dataset = |d| Fixture::all_in(d, "jsonl", read_chats, TEXT_MUTATORS);
    let fixtures: Vec<Fixture> = [
        "datasets/evil",
        "datasets/hallucination",
        "datasets/sycophancy",
    ]
    .into_iter()
    .flat_map(dataset)
    .map(|f| f.head(6))
    .collect();
    fuzz("jsonl", &fixtures);
}

#[test]
fn artifacts_reader_rejects_corrupt_files() {
    fuzz(
        "artifacts",
        &Fixture::all_in("datasets/traits", "json", read_artifacts, TEXT_MUTATORS),
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions: corrupt fields that the size of a real model file lets through its bounds checks.

/// mini.gguf with `field` set to `value`, padded with a hole to `len` bytes, as a multi-gigabyte
/// model would be (the hole costs no disk).
fn sparse_gguf(dir: &Path, field: &str, value: u64, len: u64) -> PathBuf {
    let mut bytes = std::fs::read(crate_path("tests/fixtures/dequant/mini.gguf")).unwrap();
    let f = gguf_fields(&bytes)
        .into_iter()
        .find(|f| f.name == field)
        .unwrap_or_else(|| panic!("mini.gguf has no field {field}"));
    bytes[f.at..f.at + f.width].copy_from_slice(&value.to_le_bytes()[..f.width]);
    let path = dir.join("big.gguf");
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
    path
}

/// Fails the test unless opening `path` is an error that names the file and `needle`, and
/// reserves no more than [`MAX_ALLOCATION`] at once.
fn assert_open_fails_lean(path: &Path, needle: &str) {
    let (result, largest) = quietly(|| GgufFile::open(path));
    let message = format!("{:#}", result.unwrap().unwrap_err());
    assert!(
        message.contains(&path.display().to_string()) && message.contains(needle),
        "{message}"
    );
    assert!(
        largest <= MAX_ALLOCATION,
        "allocated {largest} bytes at once: {message}"
    );
}

/// A count passes the check against the bytes left in a 4 GiB file, but each element takes more
/// memory than its smallest encoding: the reader must not reserve memory for all of them before
/// they parse.
#[test]
fn corrupt_gguf_counts_in_a_big_file_reserve_no_memory() {
    let tmp = tempfile::tempdir().unwrap();
    for (field, needle) in [
        ("tensor count", "tensor"),
        ("'mini.tokens' array length", "mini.tokens"),
    ] {
        let path = sparse_gguf(tmp.path(), field, 1 << 27, 4 << 30);
        assert_open_fails_lean(&path, needle);
    }
}

/// A corrupt string length spanning a gigabyte of a big file: the bytes are checked for UTF-8
/// where they lie, not copied first.
#[test]
fn corrupt_gguf_string_length_in_a_big_file_copies_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = sparse_gguf(
        tmp.path(),
        "'general.architecture' string length",
        1 << 30,
        2 << 30,
    );
    assert_open_fails_lean(&path, "general.architecture");
}

/// A `weight_map` entry that is not a file of the model directory is refused, naming the index
/// and the entry, instead of some other file being opened as weights.
#[test]
fn shards_outside_the_model_directory_are_refused() {
    let qwen = crate_path("tests/fixtures/tiny-qwen2");
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&qwen).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let index_path = tmp.path().join("model.safetensors.index.json");
    let original = std::fs::read_to_string(&index_path).unwrap();
    for shard in [
        "/",
        "..",
        "../model-00001-of-00003.safetensors",
        "sub/x.safetensors",
    ] {
        let mut index: serde_json::Value = serde_json::from_str(&original).unwrap();
        index["weight_map"]["lm_head.weight"] = shard.into();
        std::fs::write(&index_path, index.to_string()).unwrap();
        let err = match load_hf_model(tmp.path(), &Device::flex(), DType::F32) {
            Ok(_) => panic!("weight_map entry {shard:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(&index_path.display().to_string()) && err.contains(&format!("{shard:?}")),
            "{err}"
        );
    }
}
