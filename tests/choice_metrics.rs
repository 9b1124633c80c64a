//! Judge-free trait metrics (`eval::choice`) against transformers on the default model, on the
//! first items of real sets read from ../shared/data at test time (never copied into the
//! project; the checks that need them skip with a printed reason when it is absent), and the
//! errors bad input gets.
//!
//! References: `tests/fixtures/golden_choice.py` (run by `tests/fixtures/make_golden.py`), stored
//! in `tests/fixtures/choice/golden.json` as file names, item indices and numbers only.

mod common;

use common::fixture;
use common::smollm2;
use persona_train::eval::choice::{self, ChoiceConfig, ChoiceKind, ChoiceSet, ItemScore};
use persona_train::lm::Lm;
use persona_train::tokenizer::ChatMessage;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Per-item scores and aggregates: probabilities, compared as absolute differences.
const SCORE_TOL: f64 = 1e-3;
/// Log-probabilities and total log-likelihoods (sums over up to ~20 tokens).
const LOGPROB_TOL: f64 = 5e-3;

fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} is absent (the real evaluation sets are read from there at test time)",
            dir.display()
        );
        None
    }
}

fn golden() -> Value {
    let path = fixture("choice/golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, transformers {want} (|diff| {} > {tol})",
        (got - want).abs()
    );
}

fn close_all(what: &str, got: &[f64], want: &Value, tol: f64) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{what}[{i}]"), *g, f(w), tol);
    }
}

/// The golden items each check scores, kept small for time (2 cores): the first 12 A/B items,
/// all 20 yes/no items (twice), and TruthfulQA items 2 and 5 (the ones with fewest answers; MC1
/// wrong and right). `None`: the set's first `limit` items through `ChoiceConfig::limit`.
fn picked(kind: ChoiceKind) -> (Option<usize>, Option<Vec<usize>>) {
    match kind {
        ChoiceKind::Ab => (Some(12), None),
        ChoiceKind::YesNo => (Some(20), None),
        ChoiceKind::TruthfulQa => (None, Some(vec![2, 5])),
    }
}

#[test]
fn scores_match_transformers_and_repeat_exactly() {
    let Some(data) = shared_data() else { return };
    let m = smollm2();
    let g = golden();
    let mut max_diff: f64 = 0.0;
    for set in g["sets"].as_array().unwrap() {
        let file = set["file"].as_str().unwrap();
        let kind = match set["kind"].as_str().unwrap() {
            "ab" => ChoiceKind::Ab,
            "yes_no" => ChoiceKind::YesNo,
            "truthfulqa" => ChoiceKind::TruthfulQa,
            other => panic!("golden kind {other}"),
        };
        let golden_items = set["items"].as_array().unwrap();
        let metrics = set["metrics"].as_object().unwrap();
        let mean = |items: &[&Value], key: &str| {
            items.iter().map(|it| f(&it[key])).sum::<f64>() / items.len() as f64
        };
        // The stored aggregates are the means of the stored items.
        let all: Vec<&Value> = golden_items.iter().collect();
        for (key, value) in metrics {
            close(
                &format!("{file}: golden {key}"),
                mean(&all, key),
                f(value),
                1e-12,
            );
        }

        let full = choice::load(&data.join(file)).unwrap();
        assert_eq!(full.kind(), kind, "{file}: detected format");
        let (limit, pick) = picked(kind);
        let indices: Vec<usize> = pick
            .clone()
            .unwrap_or_else(|| (0..limit.unwrap()).collect());
        let loaded = match (&full, &pick) {
            (ChoiceSet::TruthfulQa(items), Some(pick)) => {
                ChoiceSet::TruthfulQa(pick.iter().map(|&i| items[i].clone()).collect())
            }
            (_, None) => full.clone(),
            _ => unreachable!(),
        };
        let want: Vec<&Value> = indices
            .iter()
            .map(|&i| {
                let it = &golden_items[i];
                assert_eq!(it["index"].as_u64(), Some(i as u64));
                it
            })
            .collect();

        // The prompts tokenize to as many tokens as transformers' (a cheap check that they agree).
        let chat = |text: &str| {
            m.tokenizer
                .encode_chat(&[ChatMessage::new("user", text)], true)
                .unwrap()
                .ids
                .len()
        };
        let prompt_tokens: Vec<usize> = match &full {
            ChoiceSet::AB(items) => indices
                .iter()
                .map(|&i| {
                    chat(&items[i].question)
                        + m.tokenizer
                            .encode(choice::AB_ANSWER_PREFIX, false)
                            .unwrap()
                            .len()
                })
                .collect(),
            ChoiceSet::YesNo(items) => indices
                .iter()
                .map(|&i| chat(&choice::yes_no_prompt(&items[i].statement)))
                .collect(),
            ChoiceSet::TruthfulQa(items) => indices
                .iter()
                .map(|&i| {
                    m.tokenizer
                        .encode(&choice::truthfulqa_prompt(&items[i].question), true)
                        .unwrap()
                        .len()
                })
                .collect(),
        };
        let want_tokens: Vec<usize> = want
            .iter()
            .map(|it| it["prompt_tokens"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            prompt_tokens, want_tokens,
            "{file}: prompt lengths in tokens"
        );

        let cfg = ChoiceConfig {
            path: data.join(file),
            name: Some("m".into()),
            limit,
            batch_size: 8,
        };
        let start = std::time::Instant::now();
        let report = choice::evaluate(Lm::new(&m.model), &m.tokenizer, &loaded, &cfg).unwrap();
        eprintln!(
            "{file}: items {indices:?} in {:.1} s: {:?}",
            start.elapsed().as_secs_f64(),
            report.metrics
        );
        assert_eq!(report.items.len(), want.len(), "{file}: item count");
        for (k, (got, want)) in report.items.iter().zip(&want).enumerate() {
            assert_eq!(got.index(), k, "{file}: item order");
            let what = format!("{file} item {}", indices[k]);
            match got {
                ItemScore::Ab {
                    matching,
                    score,
                    logprob_a,
                    logprob_b,
                    ..
                } => {
                    assert_eq!(format!("{matching:?}"), want["matching"].as_str().unwrap());
                    close(
                        &format!("{what} score"),
                        *score,
                        f(&want["score"]),
                        SCORE_TOL,
                    );
                    close(
                        &format!("{what} logprob A"),
                        *logprob_a,
                        f(&want["logprob_a"]),
                        LOGPROB_TOL,
                    );
                    close(
                        &format!("{what} logprob B"),
                        *logprob_b,
                        f(&want["logprob_b"]),
                        LOGPROB_TOL,
                    );
                    max_diff = max_diff.max((score - f(&want["score"])).abs());
                }
                ItemScore::YesNo {
                    matching,
                    score,
                    logprob_yes,
                    logprob_no,
                    ..
                } => {
                    assert_eq!(format!("{matching:?}"), want["matching"].as_str().unwrap());
                    close(
                        &format!("{what} score"),
                        *score,
                        f(&want["score"]),
                        SCORE_TOL,
                    );
                    close(
                        &format!("{what} logprob Yes"),
                        *logprob_yes,
                        f(&want["logprob_yes"]),
                        LOGPROB_TOL,
                    );
                    close(
                        &format!("{what} logprob No"),
                        *logprob_no,
                        f(&want["logprob_no"]),
                        LOGPROB_TOL,
                    );
                    max_diff = max_diff.max((score - f(&want["score"])).abs());
                }
                ItemScore::TruthfulQa {
                    mc1,
                    mc2,
                    mc1_logliks,
                    mc2_logliks,
                    ..
                } => {
                    close(&format!("{what} mc2"), *mc2, f(&want["mc2"]), SCORE_TOL);
                    // MC1 is a comparison: a near tie could flip under float noise.
                    if f(&want["mc1_margin"]).abs() > 2.0 * LOGPROB_TOL {
                        assert_eq!(*mc1, f(&want["mc1"]), "{what} mc1");
                    }
                    close_all(
                        &format!("{what} mc1 logliks"),
                        mc1_logliks,
                        &want["mc1_logliks"],
                        LOGPROB_TOL,
                    );
                    close_all(
                        &format!("{what} mc2 logliks"),
                        mc2_logliks,
                        &want["mc2_logliks"],
                        LOGPROB_TOL,
                    );
                    max_diff = max_diff.max((mc2 - f(&want["mc2"])).abs());
                }
            }
        }

        // Aggregates: transformers' mean over the same items.
        let expected: Vec<(String, &str)> = match kind {
            ChoiceKind::TruthfulQa => vec![("m/mc1".into(), "mc1"), ("m/mc2".into(), "mc2")],
            _ => vec![("m".into(), "score")],
        };
        assert_eq!(
            report.metrics.keys().collect::<Vec<_>>(),
            expected.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        for (ours, key) in &expected {
            close(
                &format!("{file} metric {ours}"),
                report.metrics[ours],
                mean(&want, key),
                SCORE_TOL,
            );
        }

        // The same evaluation again gives the very same numbers.
        if kind == ChoiceKind::YesNo {
            let again = choice::evaluate(Lm::new(&m.model), &m.tokenizer, &loaded, &cfg).unwrap();
            assert_eq!(again, report, "{file}: a second evaluation differs");
        }
    }
    eprintln!("largest per-item score difference from transformers: {max_diff:.2e}");
}

#[test]
fn metric_names_limits_and_serialisation() {
    let Some(data) = shared_data() else { return };
    let path = data.join("truthfulqa/data/mc_task.json");
    let set = choice::load(&path).unwrap();
    let ChoiceSet::TruthfulQa(items) = &set else {
        panic!("mc_task.json is not TruthfulQA")
    };
    assert_eq!(items.len(), 790);
    // The file's order is kept (serde_json's own maps would sort the answers).
    assert!(items[0].mc1[0].correct && !items[0].mc1[1].correct);
    let persona = choice::load(&data.join("anthropic-evals/persona/psychopathy.jsonl")).unwrap();
    assert_eq!(persona.len(), 1000);
    let ab = choice::load(
        &data.join("nrimsky-CAA/datasets/generate/hallucination/generate_dataset.json"),
    )
    .unwrap();
    assert_eq!((ab.kind(), ab.len()), (ChoiceKind::Ab, 1000));

    // Default name: the file stem; one item; the report serialises.
    let m = smollm2();
    let cfg = ChoiceConfig {
        limit: Some(1),
        ..ChoiceConfig::new(data.join("anthropic-evals/persona/psychopathy.jsonl"))
    };
    let report = choice::evaluate(Lm::new(&m.model), &m.tokenizer, &persona, &cfg).unwrap();
    assert_eq!(report.name, "psychopathy");
    assert_eq!(report.items.len(), 1);
    assert_eq!(report.metrics.keys().collect::<Vec<_>>(), ["psychopathy"]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["kind"], "yes_no");
    assert_eq!(json["items"][0]["kind"], "yes_no");
    assert_eq!(json["items"][0]["matching"], "Yes");
    assert!(json["metrics"]["psychopathy"].is_f64());
}

#[test]
fn config_is_a_strict_recipe_entry() {
    #[derive(serde::Deserialize)]
    struct Eval {
        choice: Vec<ChoiceConfig>,
    }
    let eval: Eval = toml::from_str(
        "[[choice]]\npath = \"sets/a.json\"\n\n[[choice]]\npath = \"b.jsonl\"\nname = \"evil\"\nlimit = 50\nbatch_size = 4\n",
    )
    .unwrap();
    assert_eq!(eval.choice[0], ChoiceConfig::new("sets/a.json"));
    assert_eq!(eval.choice[0].metric_name(), "a");
    assert_eq!(eval.choice[1].metric_name(), "evil");
    assert_eq!(
        (eval.choice[1].limit, eval.choice[1].batch_size),
        (Some(50), 4)
    );
    let err = toml::from_str::<ChoiceConfig>("path = \"a.json\"\nbatchsize = 4\n").unwrap_err();
    assert!(err.to_string().contains("batchsize"), "{err}");
}

/// Writes `text` as `name` in a fresh directory and returns `load`'s error message.
fn load_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let err = choice::load(&path).expect_err("bad input was accepted");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(name),
        "the error does not name the file: {msg}"
    );
    msg
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} lacks {p:?}");
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let ab = r#"{"question": "Q?\n (A) x\n (B) y", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}"#;

    // A malformed JSON line.
    let msg = load_error(
        "bad.jsonl",
        &format!("{ab}\n{{\"question\": \"Q\", \"answer_matching\n"),
    );
    assert_has(&msg, &["bad.jsonl:2", "invalid JSON"]);

    // A malformed JSON list: serde_json's line and column.
    let msg = load_error("bad.json", &format!("[\n{ab},\n{ab}\n{ab}\n]"));
    assert_has(&msg, &["bad.json", "invalid JSON list", "line 4"]);

    // A row of an unknown shape, on line 3 of a list.
    let msg = load_error(
        "shape.json",
        &format!("[\n{ab},\n{{\"prompt\": \"hi\", \"completion\": \"x\"}}\n]"),
    );
    assert_has(
        &msg,
        &[
            "shape.json:3",
            "fits none",
            "prompt",
            "completion",
            "mc1_targets",
            "statement",
        ],
    );

    // Not an object: a line of JSON lines, an element of a list.
    let msg = load_error("string.jsonl", &format!("{ab}\n\"hello\"\n"));
    assert_has(
        &msg,
        &["string.jsonl:2", "expected a JSON object, found a string"],
    );
    let msg = load_error("numbers.json", "[\n  1,\n  2\n]");
    assert_has(
        &msg,
        &["numbers.json:2", "expected a JSON object, found a number"],
    );

    // An answer letter that is not A or B.
    let msg = load_error(
        "letters.jsonl",
        &format!("{ab}\n\n{}\n", ab.replace("\"(A)\"", "\"(C)\"")),
    );
    assert_has(
        &msg,
        &[
            "letters.jsonl:3",
            "answer_matching_behavior",
            "(C)",
            "A or B",
        ],
    );

    // The same letter twice.
    let msg = load_error("same.jsonl", &ab.replace("\"(B)\"", "\"(A)\""));
    assert_has(&msg, &["same.jsonl:1", "both A"]);

    // A yes/no answer that is neither.
    let msg = load_error(
        "yesno.jsonl",
        "{\"statement\": \"I like cake\", \"answer_matching_behavior\": \" Maybe\"}\n",
    );
    assert_has(
        &msg,
        &["yesno.jsonl:1", "answer_matching_behavior", "Maybe", "Yes"],
    );

    // A non-string field.
    let msg = load_error(
        "type.jsonl",
        "{\"statement\": 3, \"answer_matching_behavior\": \" Yes\"}\n",
    );
    assert_has(
        &msg,
        &[
            "type.jsonl:1",
            "'statement'",
            "must be a string",
            "a number",
        ],
    );

    // Formats mixed in one file.
    let msg = load_error(
        "mixed.jsonl",
        &format!("{ab}\n{{\"statement\": \"s\", \"answer_matching_behavior\": \" No\"}}\n"),
    );
    assert_has(
        &msg,
        &["mixed.jsonl:2", "yes/no", "first row (line 1)", "A/B"],
    );

    // Missing mc targets, and targets that cannot be scored.
    let q = r#""question": "Q?", "mc1_targets": {"t": 1, "f": 0}"#;
    let msg = load_error("mc.json", &format!("[{{{q}}}]"));
    assert_has(&msg, &["mc.json:1", "missing field 'mc2_targets'"]);
    let msg = load_error(
        "mc2.json",
        &format!("[\n{{{q}, \"mc2_targets\": {{\"t\": 1}}}}\n]"),
    );
    assert_has(&msg, &["mc2.json:2", "mc2_targets", "1 true and 0 false"]);
    let msg = load_error("mc3.json", &format!("[{{{q}, \"mc2_targets\": [\"t\"]}}]"));
    assert_has(&msg, &["mc3.json:1", "mc2_targets", "must be an object"]);
    let msg = load_error(
        "mc4.json",
        r#"[{"question": "Q?", "mc1_targets": {"t": 1, "u": 1, "f": 0}, "mc2_targets": {"t": 1, "f": 0}}]"#,
    );
    assert_has(
        &msg,
        &["mc4.json:1", "mc1_targets", "2 true", "exactly one true"],
    );
    let msg = load_error(
        "mc5.json",
        r#"[{"question": "Q?", "mc1_targets": {"t": 1, "f": "no"}, "mc2_targets": {"t": 1, "f": 0}}]"#,
    );
    assert_has(
        &msg,
        &[
            "mc5.json:1",
            "mc1_targets",
            "\"f\"",
            "1 (true) or 0 (false)",
        ],
    );

    // Empty file.
    let msg = load_error("empty.jsonl", "\n\n");
    assert_has(&msg, &["empty.jsonl", "no items"]);

    // Missing file.
    let err = choice::load(Path::new("/nonexistent/set.json")).unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/set.json"),
        "{err:#}"
    );
}

#[test]
fn formats_are_detected_and_order_kept() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // A/B as JSON lines, letters with and without parentheses and spaces.
    let set = choice::load(&write(
        "ab.jsonl",
        "{\"question\": \"q1\", \"answer_matching_behavior\": \" (B)\", \"answer_not_matching_behavior\": \" (A)\"}\n\
         {\"question\": \"q2\", \"answer_matching_behavior\": \"A\", \"answer_not_matching_behavior\": \"B\"}\n",
    ))
    .unwrap();
    let ChoiceSet::AB(items) = set else {
        panic!("not A/B")
    };
    assert_eq!(items.len(), 2);
    assert_eq!(
        format!("{:?} {:?}", items[0].matching, items[1].matching),
        "B A"
    );
    // Yes/no as a JSON list (BOM tolerated), the question field ignored.
    let set = choice::load(&write(
        "yn.json",
        "\u{feff}[{\"question\": \"ignored\", \"statement\": \"s\", \"answer_matching_behavior\": \" No\", \"answer_not_matching_behavior\": \" Yes\"}]",
    ))
    .unwrap();
    let ChoiceSet::YesNo(items) = set else {
        panic!("not yes/no")
    };
    assert_eq!(
        (
            items[0].statement.as_str(),
            format!("{:?}", items[0].matching)
        ),
        ("s", "No".into())
    );
    // TruthfulQA as JSON lines; answers keep their order, strings with brackets and escapes.
    let set = choice::load(&write(
        "mc.jsonl",
        r#"{"question": "Q [x], {y}?", "mc1_targets": {"z \"q\"]": 0, "a": 1}, "mc2_targets": {"z \"q\"]": 0, "b": true, "a": 1}}"#,
    ))
    .unwrap();
    let ChoiceSet::TruthfulQa(items) = set else {
        panic!("not TruthfulQA")
    };
    let answers: Vec<(&str, bool)> = items[0]
        .mc2
        .iter()
        .map(|c| (c.answer.as_str(), c.correct))
        .collect();
    assert_eq!(answers, [("z \"q\"]", false), ("b", true), ("a", true)]);
    assert_eq!(items[0].question, "Q [x], {y}?");
}
