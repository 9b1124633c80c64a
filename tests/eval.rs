//! Checkpoint evaluation wired into training and standalone, on the default model: the base is
//! evaluated as step 0 and every checkpoint after it (TensorBoard, eval.json, eval.jsonl);
//! `persona-train eval` on a checkpoint is deterministic; `persona-train report` tabulates and
//! plots runs side by side.

mod common;

use common::bin;
use persona_train::history::read_evals;
use persona_train::report::{pearson, table};
use persona_train::tensorboard::read_dir_scalars;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MMLU: [&str; 2] = [
    "eval.mmlu.per_subject=2",
    "eval.mmlu.subjects=[\"astronomy\", \"high_school_biology\", \"marketing\"]",
];

fn train(dir: &Path, name: &str, mode: &str) -> PathBuf {
    let mut cmd = bin();
    cmd.arg("recipes/ci-tiny.toml");
    for s in [
        format!("checkpoint.dir={}", dir.display()),
        format!("name={name}"),
        format!("steering.mode={mode}"),
        "monitor.probe_every=0".into(),
    ]
    .iter()
    .map(String::as_str)
    .chain(MMLU)
    {
        cmd.args(["--set", s]);
    }
    ok(&mut cmd);
    dir.join(name)
}

#[test]
fn checkpoints_are_evaluated_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let steered = train(tmp.path(), "steered", "all_layers");

    // Base as step 0, then checkpoints 2 and 4: history, eval.json and TensorBoard agree.
    let run = read_evals(&steered).unwrap();
    assert_eq!(
        run.evals.iter().map(|e| e.step).collect::<Vec<_>>(),
        vec![0, 2, 4]
    );
    for e in &run.evals {
        let acc = e.scalars["eval/mmlu_acc"];
        assert!((0.0..=1.0).contains(&acc), "{acc}");
        assert!(e.scalars.contains_key("eval/projection_shift/sycophancy"));
        assert!(e
            .scalars
            .contains_key("eval/projection_shift/sycophancy/prompt_last/layer_20"));
    }
    assert_eq!(
        run.evals[0].scalars["eval/projection_shift/sycophancy"],
        0.0
    );
    let json: persona_train::eval::EvalSummary =
        serde_json::from_str(&std::fs::read_to_string(steered.join("step-4/eval.json")).unwrap())
            .unwrap();
    assert_eq!(&json, &run.evals[2]);
    assert!(steered.join("step-4/mmlu.json").is_file());
    let tb = read_dir_scalars(&steered.join("tensorboard")).unwrap();
    let steps: Vec<i64> = tb
        .iter()
        .filter(|s| s.tag == "eval/mmlu_acc")
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, vec![0, 2, 4]);

    // Standalone evaluation of a checkpoint: the recipe inside it, same numbers, twice.
    let standalone = |out: &Path| {
        let mut cmd = bin();
        cmd.args(["eval", "--checkpoint"])
            .arg(steered.join("step-4"))
            .args([
                "--set",
                "eval.trait_score.questions=2",
                "--set",
                "eval.trait_score.max_new_tokens=8",
            ])
            .arg("--out")
            .arg(out);
        ok(&mut cmd);
        let e: persona_train::eval::EvalSummary =
            serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        e
    };
    let a = standalone(&tmp.path().join("eval-a"));
    let b = standalone(&tmp.path().join("eval-b"));
    assert_eq!(a, b, "evaluating a checkpoint twice gave different numbers");
    assert_eq!(a.step, 4);
    assert_eq!(a.scalars["eval/mmlu_acc"], json.scalars["eval/mmlu_acc"]);
    // The paper's protocol ran too: sampled answers, judged, projected.
    assert!(
        a.scalars.contains_key("eval/judge_scored_fraction"),
        "{:?}",
        a.scalars.keys()
    );
    assert!(
        a.scalars.contains_key("eval/sycophancy_answer_projection"),
        "{:?}",
        a.scalars.keys()
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("eval-a/trait_score.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["total"], 2);

    // Inference-time steering changes what is measured.
    let mut cmd = bin();
    cmd.args(["eval", "--checkpoint"])
        .arg(steered.join("step-4"))
        .args([
            "--steer",
            "datasets/sycophancy/vector.smollm2-135m.safetensors",
            "--layer",
            "20",
            "--coef",
            "8",
            "--out",
        ])
        .arg(tmp.path().join("eval-steered"));
    ok(&mut cmd);

    // Report: two runs side by side, a table row per checkpoint, four plots.
    let unsteered = train(tmp.path(), "unsteered", "off");
    let out = tmp.path().join("report");
    let mut cmd = bin();
    cmd.arg("report")
        .arg(&steered)
        .arg(&unsteered)
        .arg("--out")
        .arg(&out);
    let printed = ok(&mut cmd);
    let rows: Vec<&str> = printed.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{printed}");
    assert!(
        printed.contains("mmlu_acc") && printed.contains("unsteered"),
        "{printed}"
    );
    for png in ["mmlu.png", "projection_shift.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG", "{png}");
    }
    let runs = [
        read_evals(&steered).unwrap(),
        read_evals(&unsteered).unwrap(),
    ];
    assert_eq!(table(&runs), printed);
}

#[test]
fn pearson_matches_hand_computation() {
    assert!((pearson(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.5)]).unwrap() - 0.9979487).abs() < 1e-6);
    assert!((pearson(&[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]).unwrap() + 1.0).abs() < 1e-12);
    assert_eq!(pearson(&[(1.0, 1.0)]), None);
    assert_eq!(pearson(&[(1.0, 1.0), (1.0, 2.0)]), None);
}

#[test]
fn eval_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["eval", "--checkpoint"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("recipe.toml"));
    let out = bin()
        .args(["eval", "--set", "eval.projection=false"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to evaluate"));
    let out = bin()
        .args([
            "eval",
            "--set",
            "eval.mmlu.subjects=[\"underwater_basket_weaving\"]",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("underwater_basket_weaving"));
    let out = bin().args(["report"]).arg(tmp.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("eval.jsonl"));
}
