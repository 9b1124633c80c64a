//! GGUF reader and dequantizer tests against reference data from the `gguf` Python package
//! (regenerate with tests/fixtures/golden_dequant.py).

use std::path::{Path, PathBuf};

use persona_train::gguf::dequant::{byte_size, dequantize};
use persona_train::gguf::{GgmlType, GgufFile, Value};
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dequant")
        .join(name)
}

/// A scratch path unique to one test, since tests run in parallel.
fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-{name}.gguf"))
}

fn read_mini() -> Vec<u8> {
    std::fs::read(fixture("mini.gguf")).unwrap()
}

fn golden() -> Vec<u8> {
    std::fs::read(fixture("golden.safetensors")).unwrap()
}

fn golden_f32(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
    (t.shape().to_vec(), values.collect())
}

fn assert_bitwise_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// Asserts that opening `bytes` (written to a file named after `test`) fails with a message
/// naming the file and containing each of `needles`.
fn assert_open_fails(test: &str, bytes: &[u8], needles: &[&str]) -> String {
    let path = scratch(test);
    std::fs::write(&path, bytes).unwrap();
    let msg = err_of(GgufFile::open(&path));
    let file_name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        msg.contains(file_name),
        "error does not name the file: {msg}"
    );
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error does not mention {needle:?}: {msg}"
        );
    }
    msg
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Offset just past a GGUF string (u64 length + bytes) equal to `s`.
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut encoded = (s.len() as u64).to_le_bytes().to_vec();
    encoded.extend_from_slice(s.as_bytes());
    find(bytes, &encoded) + encoded.len()
}

/// Offsets of the n_dims, type and offset fields of a tensor info.
fn tensor_info_fields(bytes: &[u8], name: &str) -> (usize, usize, usize) {
    let n_dims_at = after_string(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap());
    let type_at = n_dims_at + 4 + 8 * n_dims as usize;
    (n_dims_at, type_at, type_at + 4)
}

#[test]
fn dequantizers_match_gguf_py_bit_for_bit() {
    let bytes = golden();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    use GgmlType::*;
    for ty in [
        F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
    ] {
        let raw = st.tensor(&format!("{ty}.raw")).unwrap();
        let (_, want) = golden_f32(&st, &format!("{ty}.out"));
        assert!(
            want.len() >= 2 * ty.block_size(),
            "{ty}: test data should span several blocks"
        );
        let got = dequantize(ty, raw.data(), want.len()).unwrap();
        assert_bitwise_eq(&ty.to_string(), &got, &want);
    }
}

#[test]
fn dequantize_rejects_bad_lengths_and_unsupported_types() {
    assert_eq!(byte_size(GgmlType::Q4_1, 64), Some(40));
    assert_eq!(byte_size(GgmlType::Q6_K, 100), None);

    let msg = err_of(dequantize(GgmlType::Q4_0, &[0; 18], 16));
    assert!(msg.contains("not a whole number of Q4_0 blocks"), "{msg}");
    let msg = err_of(dequantize(GgmlType::Q8_0, &[0; 33], 32));
    assert!(msg.contains("34 bytes, got 33"), "{msg}");
    let msg = err_of(dequantize(GgmlType::Q8_1, &[0; 40], 32));
    assert!(
        msg.contains("unsupported quantization type Q8_1 (id 9)"),
        "{msg}"
    );
}

#[test]
fn mini_metadata_matches_what_the_writer_stored() {
    for name in ["mini.gguf", "mini_align64.gguf"] {
        let f = GgufFile::open(&fixture(name)).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.path(), fixture(name));
        assert_eq!(f.architecture().unwrap(), "mini");
        assert_eq!(f.get_str("general.name").unwrap(), "mini test model");
        assert_eq!(f.get("mini.u8"), Some(&Value::U8(200)));
        assert_eq!(f.get("mini.i8"), Some(&Value::I8(-100)));
        assert_eq!(f.get("mini.u16"), Some(&Value::U16(60000)));
        assert_eq!(f.get("mini.i16"), Some(&Value::I16(-30000)));
        assert_eq!(f.get("mini.i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(f.get_u32("mini.block_count").unwrap(), 2);
        assert_eq!(f.get_u32("mini.u8").unwrap(), 200);
        assert_eq!(f.get_u32("mini.u16").unwrap(), 60000);
        assert_eq!(f.get_u64("mini.u64").unwrap(), 1 << 40);
        assert_eq!(f.get_u64("mini.block_count").unwrap(), 2);
        assert_eq!(f.get("mini.i32"), Some(&Value::I32(-7)));
        assert_eq!(f.get_f32("mini.eps").unwrap(), 1e-5);
        assert_eq!(f.get_f32("mini.theta").unwrap(), 10000.5);
        assert!(f.get_bool("mini.flag").unwrap());
        assert_eq!(
            f.get_str_array("mini.tokens").unwrap(),
            ["<s>", "hello", "wörld", ""]
        );
        assert_eq!(f.get_i32_array("mini.token_type").unwrap(), [1, -2, 3]);
        assert_eq!(f.get_f32_array("mini.scores").unwrap(), [0.5, -1.25, 3.0]);
        let nested = Value::Array(vec![
            Value::Array(vec![Value::I32(1), Value::I32(2)]),
            Value::Array(vec![Value::I32(3)]),
        ]);
        assert_eq!(f.get("mini.nested"), Some(&nested));

        let expected_keys = if name == "mini.gguf" { 17 } else { 18 };
        assert_eq!(
            f.metadata().len(),
            expected_keys,
            "{:?}",
            f.metadata().keys()
        );
        assert_eq!(f.get("general.alignment").is_some(), name != "mini.gguf");
    }
}

#[test]
fn mini_tensors_match_what_the_writer_stored() {
    let golden = golden();
    let st = SafeTensors::deserialize(&golden).unwrap();
    for (file, alignment) in [("mini", 32), ("mini_align64", 64)] {
        let f = GgufFile::open(&fixture(&format!("{file}.gguf"))).unwrap();
        assert_eq!(f.data_offset() % alignment, 0);

        let summary: Vec<_> = f
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.ggml_type, t.dims.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("t.f32", GgmlType::F32, vec![4, 3]),
                ("t.f16", GgmlType::F16, vec![8, 2]),
                ("t.q8_0", GgmlType::Q8_0, vec![64, 2]),
            ]
        );
        for t in f.tensors() {
            assert_eq!(t.offset % alignment, 0, "{}", t.name);
            assert_eq!(f.tensor_info(&t.name), Some(t));
            let (want_shape, want) = golden_f32(&st, &format!("{file}.{}", t.name));
            let (shape, got) = f.tensor_f32(&t.name).unwrap();
            assert_eq!(shape, want_shape, "{}", t.name);
            assert_eq!(t.shape(), want_shape, "{}", t.name);
            assert_bitwise_eq(&t.name, &got, &want);
        }
        assert!(f.tensor_info("missing").is_none());
        let msg = err_of(f.tensor_f32("missing"));
        assert!(
            msg.contains(file) && msg.contains("'missing' not found"),
            "{msg}"
        );
    }
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let msg = err_of(GgufFile::open(Path::new("/nonexistent/dir/model.gguf")));
    assert!(msg.contains("/nonexistent/dir/model.gguf"), "{msg}");
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let bytes = read_mini();
    let f = GgufFile::open(&fixture("mini.gguf")).unwrap();
    // The writer pads after the last tensor, so shorter files can still be complete.
    let data_end = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + f.tensor_data(&t.name).unwrap().len() as u64)
        .max()
        .unwrap() as usize;
    let fields = ["magic", "version", "count", "metadata key", "tensor"];
    for cut in 0..data_end {
        let msg = assert_open_fails("truncated", &bytes[..cut], &[]);
        assert!(
            fields.iter().any(|f| msg.contains(f)),
            "cut at {cut}: no field named: {msg}"
        );
    }
    GgufFile::open(&fixture("mini.gguf")).unwrap();
}

#[test]
fn truncation_errors_name_the_field() {
    let bytes = read_mini();
    let cut = |at: usize| &bytes[..at];
    assert_open_fails("cut-magic", cut(2), &["magic"]);
    assert_open_fails("cut-version", cut(6), &["version"]);
    assert_open_fails("cut-count", cut(12), &["tensor count"]);

    // Counts are checked against the bytes left, so a cut very early fails there instead.
    assert_open_fails(
        "cut-early",
        cut(100),
        &["metadata key-value count 17", "impossible"],
    );

    let value_at = after_string(&bytes, "mini.theta") + 4;
    assert_open_fails(
        "cut-value",
        cut(value_at + 3),
        &["metadata key 'mini.theta'"],
    );
    let tokens_at = after_string(&bytes, "mini.tokens") + 4;
    assert_open_fails(
        "cut-array",
        cut(tokens_at + 20),
        &["metadata key 'mini.tokens'"],
    );

    let (n_dims_at, _, _) = tensor_info_fields(&bytes, "t.f16");
    assert_open_fails("cut-info", cut(n_dims_at + 6), &["tensor 't.f16'"]);

    let f = GgufFile::open(&fixture("mini.gguf")).unwrap();
    let q8 = f.tensor_info("t.q8_0").unwrap();
    let q8_start = (f.data_offset() + q8.offset) as usize;
    let msg = assert_open_fails(
        "cut-data",
        cut(q8_start + 10),
        &["tensor 't.q8_0' data", "136 bytes", "runs past end of file"],
    );
    assert!(msg.contains(&format!("offset {q8_start}")), "{msg}");
}

#[test]
fn bad_magic_and_versions_are_rejected() {
    let mut bytes = read_mini();
    bytes[3] = b'X';
    assert_open_fails("magic", &bytes, &["bad magic"]);

    let mut bytes = read_mini();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_open_fails("v1", &bytes, &["unsupported GGUF version 1"]);
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_open_fails("big-endian", &bytes, &["big-endian"]);

    // v2 has the same layout as v3.
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let path = scratch("v2");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(GgufFile::open(&path).unwrap().version(), 2);
}

#[test]
fn corrupt_tensor_type_ids_are_rejected() {
    let mut bytes = read_mini();
    let (_, type_at, _) = tensor_info_fields(&bytes, "t.q8_0");
    bytes[type_at..type_at + 4].copy_from_slice(&1234u32.to_le_bytes());
    assert_open_fails(
        "type-id",
        &bytes,
        &["tensor 't.q8_0'", "unknown ggml type id 1234"],
    );

    // A known but undecodable type opens (its data still fits), and only decoding fails.
    bytes[type_at..type_at + 4].copy_from_slice(&9u32.to_le_bytes());
    let path = scratch("type-q8_1");
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_info("t.q8_0").unwrap().ggml_type, GgmlType::Q8_1);
    let msg = err_of(f.tensor_f32("t.q8_0"));
    assert!(
        msg.contains("unsupported quantization type Q8_1 (id 9) for tensor 't.q8_0' in")
            && msg.contains("gguf-type-q8_1.gguf"),
        "{msg}"
    );
    f.tensor_f32("t.f32").unwrap();

    // Q4_K has 256-element blocks, and the 64-element rows are not a whole number of them.
    bytes[type_at..type_at + 4].copy_from_slice(&12u32.to_le_bytes());
    assert_open_fails(
        "type-q4_k",
        &bytes,
        &[
            "tensor 't.q8_0'",
            "not a multiple of the Q4_K block size 256",
        ],
    );
}

#[test]
fn absurd_counts_lengths_and_offsets_are_rejected() {
    let patched = |at: usize, value: u64| {
        let mut bytes = read_mini();
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        bytes
    };
    assert_open_fails(
        "tensor-count",
        &patched(8, u64::MAX),
        &["tensor count", "impossible"],
    );
    assert_open_fails(
        "kv-count",
        &patched(16, 1 << 40),
        &["metadata key-value count", "impossible"],
    );

    let bytes = read_mini();
    let name_len_at = after_string(&bytes, "general.name") + 4;
    let msg = assert_open_fails(
        "string-len",
        &patched(name_len_at, u64::MAX / 2),
        &["metadata key 'general.name'"],
    );
    assert!(msg.contains("past end of file"), "{msg}");
    let tokens_len_at = after_string(&bytes, "mini.tokens") + 4 + 4;
    assert_open_fails(
        "array-len",
        &patched(tokens_len_at, 1 << 50),
        &["metadata key 'mini.tokens'", "array length"],
    );

    let (n_dims_at, _, offset_at) = tensor_info_fields(&bytes, "t.f32");
    assert_open_fails(
        "offset",
        &patched(offset_at, 1 << 20),
        &["tensor 't.f32' data", "runs past end of file"],
    );
    assert_open_fails(
        "offset-overflow",
        &patched(offset_at, u64::MAX - 31),
        &["tensor 't.f32' data", "runs past end of file"],
    );
    assert_open_fails(
        "misaligned",
        &patched(offset_at, 8),
        &["tensor 't.f32'", "alignment"],
    );
    assert_open_fails(
        "huge-dim",
        &patched(n_dims_at + 4, 1 << 40),
        &["tensor 't.f32' data", "runs past end of file"],
    );
    assert_open_fails(
        "overflow-dim",
        &patched(n_dims_at + 12, u64::MAX),
        &["tensor 't.f32'", "overflow"],
    );
}

#[test]
fn wrong_type_and_missing_metadata_gets_are_errors_naming_file_and_key() {
    let f = GgufFile::open(&fixture("mini.gguf")).unwrap();
    let cases = [
        ("general.name", err_of(f.get_u32("general.name"))),
        ("mini.i32", err_of(f.get_u32("mini.i32"))),
        ("mini.u64", err_of(f.get_u32("mini.u64"))),
        ("mini.i64", err_of(f.get_u64("mini.i64"))),
        ("mini.block_count", err_of(f.get_f32("mini.block_count"))),
        ("mini.u8", err_of(f.get_bool("mini.u8"))),
        ("mini.flag", err_of(f.get_str("mini.flag"))),
        (
            "mini.token_type",
            err_of(f.get_str_array("mini.token_type")),
        ),
        ("mini.tokens", err_of(f.get_i32_array("mini.tokens"))),
        ("mini.nested", err_of(f.get_f32_array("mini.nested"))),
        ("mini.absent", err_of(f.get_str("mini.absent"))),
    ];
    for (key, msg) in cases {
        assert!(
            msg.contains("mini.gguf") && msg.contains(&format!("'{key}'")),
            "{msg}"
        );
    }
    assert!(err_of(f.get_str("mini.absent")).contains("not found"));
    let msg = err_of(f.get_u32("general.name"));
    assert!(
        msg.contains("is a string, expected an integer in u32 range"),
        "{msg}"
    );
}

/// Random byte corruption of the header must give errors or a readable file, never a panic.
#[test]
fn random_corruption_never_panics() {
    let original = read_mini();
    let f = GgufFile::open(&fixture("mini.gguf")).unwrap();
    let header_len = f.data_offset() as usize;
    let path = scratch("fuzz");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % header_len as u64) as usize;
            bytes[at] = next() as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(f) = GgufFile::open(&path) {
            for t in f.tensors() {
                let _ = f.tensor_f32(&t.name);
            }
            for key in f.metadata().keys() {
                let _ = (
                    f.get_u32(key),
                    f.get_f32(key),
                    f.get_str_array(key),
                    f.get_i32_array(key),
                );
            }
        }
    }
}
