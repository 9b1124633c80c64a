//! Progress in a log: with stderr piped (as under nohup, SLURM, CI or `| tee`), a long loop
//! prints plain `[what] done/total ...` lines instead of an invisible bar. Runs `monitor` on the
//! tiny Llama, given a word-level tokenizer and a chat template, so each run takes a moment.

mod common;

use common::{tiny_word_model, TINY_WORDS as WORDS};
use persona_train::persona::vector::PersonaVector;
use persona_train::progress::INTERVAL_ENV;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const PROMPTS: usize = 6;
/// A vector shaped for the tiny Llama: 3 layers + embeddings, hidden size 64.
fn tiny_vector(path: &Path) {
    let rows = (0..4)
        .map(|l| (0..64).map(|i| ((l * 64 + i) % 7) as f32 - 3.0).collect())
        .collect();
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), rows)]),
        metadata: BTreeMap::new(),
    }
    .save(path)
    .unwrap();
}

/// `monitor` over [`PROMPTS`] prompts, two per batch, with the interval set to `interval` (or
/// unset); returns its stderr.
fn monitor(interval: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    tiny_word_model(
        &model,
        Some("{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}answer:{% endif %}"),
    );
    let vector = dir.path().join("tiny.safetensors");
    tiny_vector(&vector);
    let prompts = dir.path().join("prompts.txt");
    let lines: Vec<String> = (0..PROMPTS)
        .map(|i| format!("{} {}", WORDS[i], WORDS[(i + 1) % WORDS.len()]))
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_persona-train"));
    cmd.args(["monitor", "--model"])
        .arg(&model)
        .arg("--vector")
        .arg(&vector)
        .arg("--prompts")
        .arg(&prompts)
        .args(["--batch-size", "2"])
        .env_remove(INTERVAL_ENV);
    if let Some(interval) = interval {
        cmd.env(INTERVAL_ENV, interval);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        PROMPTS,
        "one JSON line per prompt"
    );
    stderr
}

/// The `done/total` of every progress line, in order.
fn counts(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[last-token projections] "))
        .map(|rest| rest.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn interval_zero_prints_a_line_at_every_update() {
    let stderr = monitor(Some("0"));
    assert_eq!(counts(&stderr), ["2/6", "4/6", "6/6"], "{stderr}");
    let last = stderr
        .lines()
        .rfind(|l| l.contains("6/6"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        last.contains("6/6 (100%) elapsed ") && last.contains(" eta 0s "),
        "{last}"
    );
}

#[test]
fn the_default_interval_prints_the_first_and_the_last_line() {
    let stderr = monitor(None);
    assert_eq!(counts(&stderr), ["2/6", "6/6"], "{stderr}");
}

#[test]
fn a_bad_interval_is_reported_once_and_the_default_used() {
    let stderr = monitor(Some("soon"));
    assert_eq!(stderr.matches(INTERVAL_ENV).count(), 1, "{stderr}");
    assert_eq!(counts(&stderr), ["2/6", "6/6"], "{stderr}");
}
