//! Persona-vector extraction on the default model with a scripted judge.

mod common;

use common::{evil_artifacts, smollm2, ScriptedJudge};
use persona_train::persona::extract::{extract, rollouts_path, ExtractConfig};
use persona_train::persona::vector::PersonaVector;
use std::sync::atomic::Ordering;

/// Trait rubrics score `trait_score`, coherence 90.
fn scripted(trait_score: f32) -> ScriptedJudge {
    ScriptedJudge::new(move |_| trait_score, 90.0)
}

fn config(no_filter: bool) -> ExtractConfig {
    let mut cfg = ExtractConfig {
        no_filter,
        ..ExtractConfig::default()
    };
    cfg.sampling.max_new_tokens = 8;
    cfg
}

#[test]
fn extracts_every_layer_and_resumes_from_rollouts() {
    let m = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evil.safetensors");
    let judge = scripted(80.0);
    let summary = extract(
        m,
        "default",
        &evil_artifacts(),
        Some(&judge),
        &config(true),
        &out,
    )
    .unwrap();
    assert_eq!((summary.kept, summary.dropped), (2, 0));
    // 2 questions × 1 instruction × 1 rollout × 2 polarities, each judged for trait and coherence.
    assert_eq!(judge.calls.load(Ordering::SeqCst), 8);
    let rollouts = std::fs::read_to_string(rollouts_path(&out)).unwrap();
    assert_eq!(rollouts.lines().count(), 4);

    let v = PersonaVector::load(&out).unwrap();
    for kind in ["response_avg", "prompt_avg", "prompt_last"] {
        let rows = v.get(kind, 30, 576).unwrap();
        assert!(rows.iter().flatten().all(|x| x.is_finite()));
        // Different system prompts make different activations at every layer past the embedding.
        assert!(
            rows[1..].iter().all(|r| r.iter().any(|&x| x != 0.0)),
            "{kind}"
        );
    }
    assert_eq!(v.metadata["pairs_kept"], "2");
    assert_eq!(v.metadata["trait"], "evil");
    assert_eq!(v.metadata["model_sha256"].len(), 64);

    // A re-run finds every rollout on disk: no generation or judging, and the same vector.
    let again = scripted(80.0);
    extract(
        m,
        "default",
        &evil_artifacts(),
        Some(&again),
        &config(true),
        &out,
    )
    .unwrap();
    assert_eq!(again.calls.load(Ordering::SeqCst), 0);
    assert_eq!(PersonaVector::load(&out).unwrap(), v);

    // A torn last line (a crash mid-write) is dropped and that rollout redone.
    let path = rollouts_path(&out);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 20]).unwrap();
    let third = scripted(80.0);
    extract(
        m,
        "default",
        &evil_artifacts(),
        Some(&third),
        &config(true),
        &out,
    )
    .unwrap();
    assert_eq!(third.calls.load(Ordering::SeqCst), 2);
    // Rollouts are seeded by their key, so the redone one is what the first run wrote.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn the_filter_drops_pairs_the_judge_does_not_separate() {
    let m = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evil.safetensors");
    // Both polarities score 80: no negative answer is below the threshold, so nothing is kept.
    let judge = scripted(80.0);
    let err = extract(
        m,
        "default",
        &evil_artifacts(),
        Some(&judge),
        &config(false),
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no rollout pair passed") && err.contains("--no-filter"),
        "{err}"
    );
    assert!(!out.exists());
}
