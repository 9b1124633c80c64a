//! Broken checkpoints give errors naming the file and the field, never panics.

mod common;

use burn::tensor::{DType, Device};
use common::fixture;
use persona_train::loader::load_hf_model;
use std::path::Path;

/// A copy of the tiny Llama checkpoint that a test may break.
fn tiny_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match load_hf_model(dir, &Device::flex(), DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn missing_config_names_the_file() {
    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn missing_weights_name_the_directory() {
    let dir = tiny_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unknown_architecture_names_the_field() {
    let dir = tiny_copy();
    edit_config(dir.path(), |c| c["model_type"] = "gpt2".into());
    let err = load_err(dir.path());
    assert!(
        err.contains("model_type") && err.contains("gpt2") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn malformed_config_names_the_file() {
    let dir = tiny_copy();
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\", ",
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn wrong_shape_names_the_tensor_and_file() {
    let dir = tiny_copy();
    edit_config(dir.path(), |c| c["intermediate_size"] = 100.into());
    let err = load_err(dir.path());
    assert!(
        err.contains("mlp.gate_proj.weight") && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_is_an_error() {
    let dir = tiny_copy();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("model.safetensors"), "cut at {cut}: {err}");
    }
}

#[test]
fn inconsistent_heads_are_rejected() {
    let dir = tiny_copy();
    edit_config(dir.path(), |c| c["num_key_value_heads"] = 3.into());
    let err = load_err(dir.path());
    assert!(err.contains("num_key_value_heads"), "{err}");
}
