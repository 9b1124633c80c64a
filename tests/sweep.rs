//! The layer sweep on the default model with a scripted judge, the recommendation rule on
//! synthetic rows, and the `sweep` command's checks of its input.

mod common;

use common::{evil_artifacts, run_cli, smollm2, smollm2_vector, ScriptedJudge};
use persona_train::persona::sweep::{
    recommend, sweep, Recommendation, SweepConfig, SweepReport, SweepRow,
};
use persona_train::persona::vector::PersonaVector;
use std::collections::BTreeMap;
use std::path::Path;

/// Trait rubric prompts score by the length of the filled prompt (so by the answer), coherence
/// prompts a fixed 70: deterministic, and different answers get different trait scores.
fn judge() -> ScriptedJudge {
    ScriptedJudge::new(|p| (p.len() % 101) as f32, 70.0)
}

fn config(coef: f32) -> SweepConfig {
    let mut cfg = SweepConfig {
        layers: Some(vec![4, 12]),
        coef,
        questions: 2,
        ..SweepConfig::default()
    };
    cfg.sampling.max_new_tokens = 8;
    cfg
}

fn answers(row: &SweepRow) -> Vec<(usize, u64, &str)> {
    row.answers
        .iter()
        .map(|a| (a.question, a.seed, a.answer.as_str()))
        .collect()
}

#[test]
fn with_coef_zero_every_layer_answers_like_the_baseline() {
    let report = sweep(
        smollm2(),
        &evil_artifacts(),
        &smollm2_vector(),
        &judge(),
        &config(0.0),
    )
    .unwrap();
    assert_eq!(report.baseline.layer, None);
    assert_eq!(
        report.layers.iter().map(|r| r.layer).collect::<Vec<_>>(),
        [Some(4), Some(12)]
    );
    assert_eq!(report.baseline.answers.len(), 2);
    let seeds: Vec<u64> = report.baseline.answers.iter().map(|a| a.seed).collect();
    assert_ne!(seeds[0], seeds[1]);
    for row in &report.layers {
        assert_eq!(answers(row), answers(&report.baseline));
        assert_eq!(row.mean_trait, report.baseline.mean_trait);
        assert_eq!((row.trait_unscored, row.coherence_unscored), (0, 0));
        assert_eq!(row.mean_coherence, Some(70.0));
        // Unsteered answers measured unsteered: the row's projection is the baseline's.
        let (p, b) = (
            row.mean_projection.unwrap(),
            row.baseline_projection.unwrap(),
        );
        assert!(
            p.is_finite() && (p - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{p} vs {b}"
        );
    }
    assert_eq!(report.baseline.mean_projection, None);
    // Equal trait scores everywhere: the tie goes to the shallower layer.
    assert_eq!(
        report.recommendation,
        Some(Recommendation {
            layer: 4,
            coherent: true
        })
    );
}

#[test]
fn steered_sweep_keeps_seeds_and_writes_its_files() {
    let v = smollm2_vector();
    let report = sweep(smollm2(), &evil_artifacts(), &v, &judge(), &config(8.0)).unwrap();
    let seeds = |r: &SweepRow| r.answers.iter().map(|a| a.seed).collect::<Vec<_>>();
    assert!(report
        .layers
        .iter()
        .all(|r| seeds(r) == seeds(&report.baseline)));
    assert!(
        report
            .layers
            .iter()
            .any(|r| answers(r) != answers(&report.baseline)),
        "steering changed nothing"
    );
    assert_eq!(report.config.layers, Some(vec![4, 12]));
    assert_eq!(report.judge, "scripted");

    let table = report.table();
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .trim_start()
            .starts_with("baseline"),
        "{table}"
    );
    assert!(table.contains("recommended: layer"), "{table}");

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("sweep.png");
    report.plot(&png).unwrap();
    assert!(std::fs::read(&png)
        .unwrap()
        .starts_with(b"\x89PNG\r\n\x1a\n"));
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<SweepReport>(&json).unwrap(), report);

    let path = dir.path().join("v.safetensors");
    let metadata = BTreeMap::from([("trait".to_owned(), "evil".to_owned())]);
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), v)]),
        metadata,
    }
    .save(&path)
    .unwrap();
    report.write_recommendation(&path).unwrap();
    let saved = PersonaVector::load(&path).unwrap();
    let rec = report.recommendation.unwrap();
    assert_eq!(saved.metadata["recommended_layer"], rec.layer.to_string());
    assert_eq!(saved.metadata["recommended_coef"], "8");
    assert_eq!(saved.metadata["trait"], "evil");
    assert_eq!(saved.vectors["response_avg"], smollm2_vector());
}

#[test]
fn out_of_range_layers_are_refused_before_generating() {
    let cfg = SweepConfig {
        layers: Some(vec![4, 31]),
        ..config(1.0)
    };
    let err = sweep(
        smollm2(),
        &evil_artifacts(),
        &smollm2_vector(),
        &judge(),
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer 31") && err.contains("1..=30"), "{err}");
    let cfg = SweepConfig {
        layers: Some(vec![0]),
        ..config(1.0)
    };
    assert!(sweep(
        smollm2(),
        &evil_artifacts(),
        &smollm2_vector(),
        &judge(),
        &cfg
    )
    .is_err());
}

fn row(layer: Option<usize>, mean_trait: Option<f32>, mean_coherence: Option<f32>) -> SweepRow {
    SweepRow {
        layer,
        mean_trait,
        trait_unscored: 0,
        mean_coherence,
        coherence_unscored: 0,
        mean_projection: None,
        baseline_projection: None,
        answers: vec![],
    }
}

#[test]
fn recommends_the_most_trait_expressing_coherent_layer() {
    let rows = [
        row(None, Some(99.0), Some(99.0)),
        row(Some(2), Some(30.0), Some(90.0)),
        row(Some(4), Some(60.0), Some(50.0)),
        row(Some(6), Some(95.0), Some(20.0)),
        row(Some(8), None, Some(90.0)),
        row(Some(10), Some(80.0), None),
    ];
    // Layer 6 expresses the trait most but is incoherent; 10 has no coherence score; the
    // baseline is not a layer; 4 sits exactly on the bar.
    assert_eq!(
        recommend(&rows, 50.0),
        Some(Recommendation {
            layer: 4,
            coherent: true
        })
    );
    assert_eq!(
        recommend(&rows, 50.1),
        Some(Recommendation {
            layer: 2,
            coherent: true
        })
    );
}

#[test]
fn with_no_coherent_layer_the_highest_trait_is_flagged() {
    let rows = [
        row(Some(2), Some(40.0), Some(10.0)),
        row(Some(4), Some(70.0), Some(30.0)),
        row(Some(6), Some(70.0), None),
    ];
    assert_eq!(
        recommend(&rows, 50.0),
        Some(Recommendation {
            layer: 4,
            coherent: false
        })
    );
    assert_eq!(recommend(&[row(Some(2), None, Some(90.0))], 50.0), None);
    assert_eq!(recommend(&[], 50.0), None);
}

#[test]
fn the_table_says_whether_steering_cost_the_coherence() {
    let report = |baseline_coherence| SweepReport {
        trait_name: "evil".into(),
        judge: "scripted".into(),
        config: SweepConfig {
            layers: Some(vec![2, 4]),
            ..SweepConfig::default()
        },
        baseline: row(None, Some(10.0), Some(baseline_coherence)),
        layers: vec![
            row(Some(2), Some(40.0), Some(10.0)),
            row(Some(4), Some(70.0), Some(30.0)),
        ],
        recommendation: Some(Recommendation {
            layer: 4,
            coherent: false,
        }),
    };
    let table = report(80.0).table();
    assert!(
        table.contains("recommended: layer 4, but no layer kept")
            && table.contains("smaller --coef"),
        "{table}"
    );
    assert!(report(30.0)
        .table()
        .contains("unsteered answers fall short too"));
}

fn sycophancy() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/traits/sycophancy.json")
        .display()
        .to_string()
}

#[test]
fn cli_names_a_vector_that_does_not_fit_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    let rows = vec![vec![0.5f32; 16]; 5];
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), rows)]),
        metadata: BTreeMap::new(),
    }
    .save(&path)
    .unwrap();
    let (ok, _, stderr) = run_cli(&[
        "sweep",
        "--trait",
        &sycophancy(),
        "--vector",
        path.to_str().unwrap(),
        "--coef",
        "2",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("small.safetensors") && stderr.contains("[31, 576]"),
        "{stderr}"
    );
}

#[test]
fn cli_refuses_bad_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.safetensors");
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), smollm2_vector())]),
        metadata: BTreeMap::new(),
    }
    .save(&path)
    .unwrap();
    let v = path.to_str().unwrap();
    let sweep_with = |layers: &str| {
        run_cli(&[
            "sweep",
            "--trait",
            &sycophancy(),
            "--vector",
            v,
            "--coef",
            "-2",
            "--layers",
            layers,
        ])
    };
    let (ok, _, stderr) = sweep_with("4,40");
    assert!(!ok);
    assert!(
        stderr.contains("layer 40 is out of range") && stderr.contains("1..=30"),
        "{stderr}"
    );
    let (ok, _, stderr) = sweep_with("4..x");
    assert!(!ok);
    assert!(stderr.contains("\"x\" is not a layer index"), "{stderr}");
    assert!(!dir.path().join("v.sweep").exists());
}
