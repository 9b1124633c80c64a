//! The one way this project writes a file: to a temporary file beside it, flushed to disk, then
//! renamed over the target. A reader (or a run resumed after `kill -9` or a power cut) sees the
//! old file or the new one, never a torn one, and a failed write leaves no temporary behind.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes`. The directory must exist: a mistyped output path is an error,
/// not a new directory tree.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    write_with(path, |f| f.write_all(bytes.as_ref()))
}

/// Replaces `path` with pretty-printed JSON and a final newline.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .with_context(|| format!("cannot serialise {}", path.display()))?;
    write(path, text + "\n")
}

/// Replaces `path` with what `fill` writes (for writers that stream).
pub fn write_with(path: &Path, fill: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    write_to_path(path, |tmp| {
        File::create(tmp)
            .and_then(|mut f| {
                fill(&mut f)?;
                f.sync_all()
            })
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

/// Replaces `path` with the file `fill` writes at the temporary path it is given, for writers
/// that open files themselves (plotters). The temporary name keeps `path`'s extension, which
/// such writers may read the format from.
pub fn write_to_path(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = fill(&tmp).and_then(|()| {
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A hidden name beside `path`, unique per process and call (so concurrent writers of one path
/// never share a temporary file), ending in `path`'s own name.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(
        ".tmp-{}-{}-{name}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write(&path, "old").unwrap();
        write_json(&path, &serde_json::json!({"x": 1})).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\n  \"x\": 1\n}\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/a.json");
        assert!(format!("{:#}", write(&missing, "x").unwrap_err()).contains("no/such/dir"));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write(&path, "old").unwrap();
        let err = write_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("a.txt"), "{err:#}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
