//! llama.cpp control vectors (`persona::cvec`) and the GGUF writer, against fixtures from the
//! `gguf` Python package. CI does not run Python, so the Rust-written fixtures are pinned here
//! byte for byte, and tests/fixtures/golden_cvec.py checks them whenever they change.

use std::path::{Path, PathBuf};

use persona_train::gguf::writer::GgufWriter;
use persona_train::gguf::{GgufFile, Value};
use persona_train::persona::cvec::{export, import};
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cvec")
        .join(name)
}

/// A scratch path unique to one test, since tests run in parallel.
fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cvec-{name}.gguf"))
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_err_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "error lacks {n:?}: {msg}");
    }
}

/// Compares a file just written with its committed fixture. A mismatch after an intended
/// change is fixed by copying the new file over the fixture and rerunning golden_cvec.py.
fn assert_matches_fixture(written: &Path, name: &str) {
    let want = std::fs::read(fixture(name)).unwrap();
    assert!(
        std::fs::read(written).unwrap() == want,
        "{} differs from tests/fixtures/cvec/{name}",
        written.display()
    );
}

fn bits(rows: &[Vec<f32>]) -> Vec<Vec<u32>> {
    rows.iter()
        .map(|r| r.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// Mirrors `tiny()` in golden_cvec.py: 4 blocks, hidden size 4, small dyadic rationals.
fn tiny() -> Vec<Vec<f32>> {
    (0..=4)
        .map(|l| (0..4).map(|i| (l * 4 + i) as f32 * 0.25 - 2.0).collect())
        .collect()
}

/// A persona vector with irregular values, so that a row or element mix-up cannot go unseen.
fn persona_vector(layers: usize, hidden: usize) -> Vec<Vec<f32>> {
    (0..=layers)
        .map(|l| {
            (0..hidden)
                .map(|i| ((l * 31 + i * 17) as f32).sin() * 3.0)
                .collect()
        })
        .collect()
}

/// A control vector's metadata with the given architecture, ready for direction tensors.
fn cvec_writer(arch: &str) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String(arch.into()));
    w.add("controlvector.model_hint", Value::String("llama".into()));
    w.add("controlvector.layer_count", Value::I32(2));
    w
}

#[test]
fn round_trip_is_exact() {
    let path = scratch("round-trip");
    let v = persona_vector(6, 16);
    export(&v, 1.0, "qwen2", &path).unwrap();
    let c = import(&path).unwrap();
    assert_eq!(c.model_hint, "qwen2");
    assert_eq!(c.layer_count, 5, "one direction per block but block 0");
    let mut want = v.clone();
    want[0].fill(0.0);
    want[1].fill(0.0);
    assert_eq!(bits(&c.vectors), bits(&want));

    export(&v, -2.0, "qwen2", &path).unwrap();
    let scaled = import(&path).unwrap();
    for (l, (got, row)) in scaled.vectors.iter().zip(&v).enumerate().skip(2) {
        let expect: Vec<f32> = row.iter().map(|x| x * -2.0).collect();
        assert_eq!(got, &expect, "row {l} scaled by coef");
    }
}

#[test]
fn export_names_directions_by_steered_block() {
    let path = scratch("names");
    export(&tiny(), 1.0, "llama", &path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["direction.1", "direction.2", "direction.3"]);
    // Hidden-state row 3 is block 2's output.
    assert_eq!(
        f.tensor_f32("direction.2").unwrap(),
        (vec![4], tiny()[3].clone())
    );
    assert_eq!(f.architecture().unwrap(), "controlvector");
    assert_eq!(f.get("controlvector.layer_count"), Some(&Value::I32(3)));
}

#[test]
fn rust_written_matches_fixture() {
    let path = scratch("rust-written");
    export(&tiny(), -1.5, "qwen2", &path).unwrap();
    assert_matches_fixture(&path, "rust_written.gguf");
}

/// Mirrors ALL_TYPES in golden_cvec.py.
fn all_types_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("test".into())),
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-7)),
        ("test.u64", Value::U64(1 << 40)),
        ("test.i64", Value::I64(-(1 << 40))),
        ("test.f32", Value::F32(0.125)),
        ("test.f64", Value::F64(10000.5)),
        ("test.bool", Value::Bool(true)),
        ("test.string", Value::String("wörld".into())),
        (
            "test.strings",
            Value::Array(["<s>", "", "b"].map(|s| Value::String(s.into())).into()),
        ),
        (
            "test.u16s",
            Value::Array(vec![Value::U16(1), Value::U16(2), Value::U16(65535)]),
        ),
        (
            "test.nested",
            Value::Array(vec![
                Value::Array(vec![Value::I32(1), Value::I32(-2)]),
                Value::Array(vec![Value::I32(3)]),
            ]),
        ),
    ]
}

/// Mirrors ALL_TYPES_TENSORS in golden_cvec.py.
fn all_types_tensors() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    vec![
        (
            "matrix",
            vec![2, 3],
            (0..6).map(|i| i as f32 - 2.5).collect(),
        ),
        ("odd", vec![5], vec![1.0, -1.0, 0.5, 3e38, -1e-40]),
        ("last", vec![1], vec![7.0]),
    ]
}

#[test]
fn writer_encodes_every_type_like_gguf_py() {
    let (metadata, tensors) = (all_types_metadata(), all_types_tensors());
    let mut w = GgufWriter::new();
    for (k, v) in &metadata {
        w.add(k, v.clone());
    }
    for (name, shape, data) in &tensors {
        w.add_tensor_f32(name, shape, data).unwrap();
    }
    let path = scratch("all-types");
    w.write(&path).unwrap();
    assert_matches_fixture(&path, "writer_all_types.gguf");

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    let got: Vec<_> = f.metadata().iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut want: Vec<_> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    want.sort_by_key(|(k, _)| *k);
    assert_eq!(got, want);
    for (name, shape, data) in tensors {
        assert_eq!(f.tensor_f32(name).unwrap(), (shape, data), "{name}");
        assert_eq!(
            f.tensor_info(name).unwrap().offset % 32,
            0,
            "{name} aligned"
        );
    }
}

#[test]
fn writer_add_replaces_a_key_in_place() {
    let mut w = GgufWriter::new();
    w.add("a", Value::U32(1));
    w.add("b", Value::U32(2));
    w.add("a", Value::String("x".into()));
    let path = scratch("replace");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata().len(), 2);
    assert_eq!(f.get_str("a").unwrap(), "x");
}

#[test]
fn writer_honours_custom_alignment() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(64));
    w.add_tensor_f32("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    w.add_tensor_f32("b", &[2], &[4.0, 5.0]).unwrap();
    let path = scratch("align64");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_info("b").unwrap().offset, 64);
    assert_eq!(f.tensor_f32("b").unwrap().1, [4.0, 5.0]);

    w.add("general.alignment", Value::U32(48));
    let msg = err_of(w.write(&scratch("align48")));
    assert_err_mentions(&msg, &["cvec-align48", "general.alignment", "power-of-two"]);
}

#[test]
fn writer_replaces_atomically_and_leaves_no_temp_file() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cvec-atomic");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    export(&tiny(), 1.0, "llama", &path).unwrap();
    assert!(import(&path).is_ok());
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["out.gguf"]);

    let msg = err_of(export(
        &tiny(),
        1.0,
        "llama",
        &dir.join("no/such/dir/out.gguf"),
    ));
    assert_err_mentions(&msg, &["no/such/dir/out.gguf", "cannot write"]);
}

#[test]
fn writer_rejects_bad_tensors_and_metadata() {
    let mut w = GgufWriter::new();
    w.add_tensor_f32("t", &[2], &[1.0, 2.0]).unwrap();
    assert_err_mentions(
        &err_of(w.add_tensor_f32("t", &[1], &[1.0])),
        &["duplicate", "'t'"],
    );
    assert_err_mentions(
        &err_of(w.add_tensor_f32("u", &[2, 2], &[1.0; 3])),
        &["'u'", "[2, 2]", "4 elements", "got 3"],
    );
    assert_err_mentions(
        &err_of(w.add_tensor_f32("v", &[], &[])),
        &["'v'", "0 dimensions"],
    );
    assert_err_mentions(
        &err_of(w.add_tensor_f32(&"x".repeat(64), &[1], &[1.0])),
        &["longer than 63"],
    );

    w.add("empty", Value::Array(vec![]));
    assert_err_mentions(
        &err_of(w.write(&scratch("empty-array"))),
        &["'empty'", "empty arrays"],
    );
    w.add("empty", Value::Array(vec![Value::U8(1), Value::I8(2)]));
    assert_err_mentions(
        &err_of(w.write(&scratch("mixed-array"))),
        &[
            "cvec-mixed-array",
            "'empty'",
            "element 1 is i8",
            "element 0 is u8",
        ],
    );
}

#[test]
fn imports_what_gguf_py_writes_like_cvector_generator() {
    let c = import(&fixture("python_written.gguf")).unwrap();
    assert_eq!(c.model_hint, "llama");
    assert_eq!(c.layer_count, 4);
    let golden = std::fs::read(fixture("python_written.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&golden).unwrap();
    let t = st.tensor("vectors").unwrap();
    let want: Vec<Vec<f32>> = t
        .data()
        .chunks_exact(4 * t.shape()[1])
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
        .collect();
    assert_eq!(want.len(), 6, "5 blocks, plus the embedding row");
    assert_eq!(bits(&c.vectors), bits(&want));
}

#[test]
fn import_sums_directions_for_one_block_as_llama_cpp_does() {
    let mut w = cvec_writer("controlvector");
    w.add_tensor_f32("direction.2", &[2], &[1.0, 2.0]).unwrap();
    w.add_tensor_f32("direction.02", &[2], &[0.5, 0.25])
        .unwrap();
    let path = scratch("sum");
    w.write(&path).unwrap();
    let c = import(&path).unwrap();
    assert_eq!(
        c.vectors,
        [vec![0.0; 2], vec![0.0; 2], vec![0.0; 2], vec![1.5, 2.25]]
    );
}

#[test]
fn import_rejects_other_architectures() {
    let mut w = cvec_writer("llama");
    w.add_tensor_f32("direction.1", &[2], &[1.0, 2.0]).unwrap();
    let path = scratch("wrong-arch");
    w.write(&path).unwrap();
    assert_err_mentions(
        &err_of(import(&path)),
        &[
            "cvec-wrong-arch.gguf",
            "not a control vector",
            "'llama'",
            "'controlvector'",
        ],
    );
}

#[test]
fn import_rejects_directions_of_differing_sizes() {
    let mut w = cvec_writer("controlvector");
    w.add_tensor_f32("direction.1", &[8], &[1.0; 8]).unwrap();
    w.add_tensor_f32("direction.2", &[6], &[1.0; 6]).unwrap();
    let path = scratch("sizes");
    w.write(&path).unwrap();
    assert_err_mentions(
        &err_of(import(&path)),
        &[
            "cvec-sizes.gguf",
            "'direction.2' has 6 elements",
            "'direction.1' has 8",
        ],
    );
}

#[test]
fn import_rejects_a_missing_file() {
    let path = scratch("does-not-exist");
    assert_err_mentions(
        &err_of(import(&path)),
        &["cvec-does-not-exist.gguf", "cannot open"],
    );
}

#[test]
fn import_rejects_what_llama_cpp_rejects() {
    let cases: [(&str, &str, &[usize], &str); 4] = [
        ("block0", "direction.0", &[2], "block 0"),
        (
            "unnamed",
            "token_embd.weight",
            &[2],
            "'token_embd.weight' is not named direction.N",
        ),
        ("2d", "direction.1", &[1, 2], "expected a 1-D F32 vector"),
        ("huge", "direction.99999", &[2], "more than 4096 blocks"),
    ];
    for (test, name, shape, needle) in cases {
        let mut w = cvec_writer("controlvector");
        w.add_tensor_f32(name, shape, &[1.0, 2.0]).unwrap();
        let path = scratch(test);
        w.write(&path).unwrap();
        assert_err_mentions(
            &err_of(import(&path)),
            &[&format!("cvec-{test}.gguf"), needle],
        );
    }

    let path = scratch("no-directions");
    cvec_writer("controlvector").write(&path).unwrap();
    assert_err_mentions(
        &err_of(import(&path)),
        &["cvec-no-directions.gguf", "no direction.N tensors"],
    );

    let path = scratch("no-hint");
    let mut w = GgufWriter::new();
    w.add(
        "general.architecture",
        Value::String("controlvector".into()),
    );
    w.write(&path).unwrap();
    assert_err_mentions(
        &err_of(import(&path)),
        &["cvec-no-hint.gguf", "controlvector.model_hint"],
    );
}

#[test]
fn export_rejects_unusable_vectors() {
    let path = scratch("bad-export");
    assert_err_mentions(
        &err_of(export(&persona_vector(1, 4), 1.0, "llama", &path)),
        &["cvec-bad-export.gguf", "at least 2 blocks", "2 rows"],
    );
    let mut ragged = persona_vector(3, 4);
    ragged[2].pop();
    assert_err_mentions(
        &err_of(export(&ragged, 1.0, "llama", &path)),
        &["cvec-bad-export.gguf", "row 2 has 3 elements, row 0 has 4"],
    );
    assert!(!path.exists(), "a failed export writes nothing");
}
