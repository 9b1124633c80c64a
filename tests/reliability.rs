//! Faults found by a bad-input sweep, kept fixed: non-finite numbers are refused everywhere they
//! come in, token ids past the vocabulary are errors, a killed run keeps every step's records,
//! and failures leave nothing half-written behind.

mod common;

use burn::tensor::{DType, Device};
use common::bin;
use common::fixture;
use persona_train::generate::Specials;
use persona_train::lm::Lm;
use persona_train::loader::peft;
use persona_train::model::Forward;
use persona_train::model::{ForwardInput, LogitsFor};
use persona_train::recipe::Recipe;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must fail, and returns its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "should fail:\n{}", stderr(&out));
    assert!(
        !stderr(&out).contains("panicked"),
        "a panic, not an error:\n{}",
        stderr(&out)
    );
    stderr(&out)
}

/// `persona-train recipes/ci-tiny.toml` into `dir/name` with `--set` overrides.
fn train(dir: &Path, name: &str, sets: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("recipes/ci-tiny.toml")
        .args(["--set", &format!("checkpoint.dir={}", dir.display())])
        .args(["--set", &format!("name={name}")]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// A copy of the tiny Llama checkpoint that a test may change.
fn tiny_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn recipe_err(sets: &[&str]) -> String {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let text = "[data]\ntrain = [\"x.jsonl\"]\n";
    format!("{:#}", Recipe::parse(text, "r", &sets).unwrap_err())
}

#[test]
fn recipes_refuse_non_finite_numbers_and_name_the_field() {
    for (set, field) in [
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.weight_decay=nan", "optim.weight_decay"),
        ("steering.coef=inf", "steering.coef"),
        ("steering.coef=-nan", "steering.coef"),
        ("optim.betas=[0.9, nan]", "optim.betas[1]"),
        ("lora.alpha=inf", "lora.alpha"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.max_steps=0", "optim.max_steps"),
        ("optim.eps=0", "optim.eps"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
    ] {
        let e = recipe_err(&[set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    // The type error names the field and, through Recipe::load, the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, "[data]\ntrain = [\"x.jsonl\"]\n").unwrap();
    let e = format!(
        "{:#}",
        Recipe::load(&path, &["optim.lr=fast".into()]).unwrap_err()
    );
    assert!(
        e.contains("mine.toml") && e.contains("optim.lr") && e.contains("string"),
        "{e}"
    );
    assert!(Recipe::parse("[data]\ntrain = [\"x.jsonl\"]\n", "r", &[]).is_ok());
}

/// Writes a persona-vector file shaped for tiny-llama (`[4, 64]`) whose row 2 holds `bad`,
/// bypassing `PersonaVector::save`, which refuses such values.
fn write_raw_vector(path: &Path, bad: f32) {
    let mut values = vec![0.25f32; 4 * 64];
    values[2 * 64 + 5] = bad;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 64], &bytes).unwrap();
    safetensors::serialize_to_file([("response_avg", view)], None, path).unwrap();
}

#[test]
fn vectors_with_non_finite_values_are_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.safetensors");
    for bad in [f32::NAN, f32::INFINITY] {
        write_raw_vector(&path, bad);
        let e = format!(
            "{:#}",
            persona_train::persona::vector::PersonaVector::load(&path).unwrap_err()
        );
        assert!(
            e.contains("nan.safetensors") && e.contains("row 2") && e.contains("non-finite"),
            "{e}"
        );
    }
    let ok = persona_train::persona::vector::PersonaVector {
        vectors: [("response_avg".into(), vec![vec![f32::NAN; 64]; 4])].into(),
        metadata: BTreeMap::new(),
    };
    assert!(ok.save(&dir.path().join("saved.safetensors")).is_err());
    let e = persona_train::persona::cvec::export(
        &vec![vec![f32::NAN; 64]; 4],
        1.0,
        "llama",
        &dir.path().join("c.gguf"),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("non-finite"), "{e:#}");
}

#[test]
fn cli_flags_refuse_non_finite_and_empty_settings() {
    let dir = tempfile::tempdir().unwrap();
    let nan = dir.path().join("nan.safetensors");
    write_raw_vector(&nan, f32::NAN);
    let generate = |extra: &[&str]| {
        let mut cmd = bin();
        cmd.args(["generate", "--prompt", "hi"]).args(extra);
        cmd
    };
    for (extra, want) in [
        (&["--temperature", "nan"][..], "temperature"),
        (&["--temperature=-1"], "temperature"),
        (&["--top-p", "0"], "top_p"),
        (&["--top-p", "nan"], "top_p"),
    ] {
        let e = fails(&mut generate(extra));
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let e = fails(&mut generate(&[
        "--steer",
        nan.to_str().unwrap(),
        "--layer",
        "2",
        "--coef",
        "1",
    ]));
    assert!(e.contains("non-finite"), "{e}");
    let e = fails(bin().args([
        "export-cvec",
        "--vector",
        nan.to_str().unwrap(),
        "--out",
        dir.path().join("out.gguf").to_str().unwrap(),
    ]));
    assert!(
        e.contains("nan.safetensors") && e.contains("non-finite"),
        "{e}"
    );
    assert!(!dir.path().join("out.gguf").exists());
    // monitor used to call a NaN row "zero".
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "Hello?\n").unwrap();
    let e = fails(bin().args([
        "monitor",
        "--vector",
        nan.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
    ]));
    assert!(e.contains("non-finite") && !e.contains("is zero"), "{e}");
}

#[test]
fn steering_refuses_non_finite_coefficients() {
    let rows = vec![vec![0.5f32; 64]; 4];
    for coef in [f32::NAN, f32::INFINITY] {
        let e = persona_train::steering::Steering::new(
            &rows,
            persona_train::steering::SteerLayers::All,
            coef,
            persona_train::steering::Positions::All,
            3,
            64,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("coefficient"), "{e:#}");
    }
}

#[test]
fn token_ids_past_the_vocabulary_are_errors_not_panics() {
    let dir = tiny_copy();
    let model =
        persona_train::loader::load_hf_model(dir.path(), &Device::flex(), DType::F32).unwrap();
    let vocab = model.config().vocab_size as u32;
    let forward = |id: u32| {
        let input = ForwardInput::dense(&[vec![1, id]], 0, &model.device());
        model.forward(&input, Forward::logits(LogitsFor::Last))
    };
    assert!(forward(vocab - 1).is_ok());
    let e = format!("{:#}", forward(vocab).err().unwrap());
    assert!(
        e.contains(&vocab.to_string()) && e.contains("vocabulary"),
        "{e}"
    );

    // A tokenizer with an id past the embedding is refused when the model loads.
    let tokenizer = |big: u32| {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "<unk>": 2, "big": big},
                "unk_token": "<unk>"}
        })
        .to_string()
    };
    let files = persona_train::source::ModelFiles::HfDir(dir.path().to_path_buf());
    let load = || persona_train::loader::load(&files, &Device::flex(), DType::F32);
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer(vocab - 1)).unwrap();
    assert!(load().is_ok());
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer(vocab + 44)).unwrap();
    let e = format!("{:#}", load().err().unwrap());
    assert!(
        e.contains(&(vocab + 44).to_string()) && e.contains(&vocab.to_string()),
        "{e}"
    );
}

#[test]
fn config_with_non_positive_rms_norm_eps_is_refused() {
    for eps in [0.0, -1e-6] {
        let dir = tiny_copy();
        let path = dir.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["rms_norm_eps"] = eps.into();
        std::fs::write(&path, config.to_string()).unwrap();
        let e = persona_train::loader::load_hf_model(dir.path(), &Device::flex(), DType::F32)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("rms_norm_eps"), "{e:#}");
    }
}

#[test]
fn generation_stops_at_the_context_length() {
    let dir = tiny_copy();
    let model =
        persona_train::loader::load_hf_model(dir.path(), &Device::flex(), DType::F32).unwrap();
    let context = model.config().max_position_embeddings;
    let sampling = persona_train::generate::Sampling {
        max_new_tokens: 10_000,
        ..Default::default()
    };
    let prompt: Vec<u32> = (0..context as u32 - 5).map(|i| 3 + i % 200).collect();
    // No stop ids: only the context can end it.
    let out = persona_train::generate::generate(
        Lm::new(&model),
        &[prompt],
        &Specials::default(),
        &sampling,
    )
    .unwrap();
    assert_eq!(out[0].len(), 5, "prompt + reply must fit the context");
    let full: Vec<u32> = vec![3; context];
    let e = persona_train::generate::generate(
        Lm::new(&model),
        &[full],
        &Specials::default(),
        &sampling,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("context"), "{e:#}");
}

#[test]
fn forward_out_failure_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should go: the final rename fails.
    let out = dir.path().join("dump.safetensors");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    fails(bin().args(["forward", "--text", "Hi", "--out", out.to_str().unwrap()]));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["dump.safetensors".to_string()]);
}

/// `step -> record` of a JSONL history, asserting each step appears once.
fn history(path: &Path) -> BTreeMap<u64, serde_json::Value> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        assert!(
            out.insert(step, v).is_none(),
            "{}: step {step} recorded twice",
            path.display()
        );
    }
    out
}

const EVAL: &[&str] = &[
    "optim.max_steps=4",
    "monitor.probe_every=0",
    "checkpoint.every_n_steps=2",
    "checkpoint.keep_last=0",
    "eval.projection=false",
    "eval.mmlu.per_subject=1",
    "eval.mmlu.subjects=[\"astronomy\"]",
];

/// A run killed right after a checkpoint's rename, or right before it, resumes with every
/// step's metrics and every checkpoint's evaluation recorded exactly once; a log shows progress.
#[test]
fn a_run_killed_around_a_checkpoint_keeps_every_step_record() {
    let tmp = tempfile::tempdir().unwrap();
    // Under a job scheduler (stderr not a terminal) progress comes as plain lines.
    let out = train(tmp.path(), "straight", EVAL)
        .env("PERSONA_TRAIN_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    for want in [
        "[straight] 1/4 (25%)",
        "[straight] 4/4 (100%)",
        "[MMLU] 1/1",
        " tok/s",
    ] {
        assert!(log.contains(want), "no {want:?} in:\n{log}");
    }
    let want = history(&tmp.path().join("straight/metrics.jsonl"));
    assert_eq!(want.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);

    for point in ["committed:2", "staged:2", "staged:4"] {
        let name = point.replace(':', "-");
        let run = tmp.path().join(&name);
        let out = train(tmp.path(), &name, EVAL)
            .env("PERSONA_TRAIN_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{point}: the crash point did not fire"
        );
        let resumed = train(tmp.path(), &name, EVAL)
            .arg("--resume")
            .output()
            .unwrap();
        assert!(resumed.status.success(), "{point}: {}", stderr(&resumed));

        let got = history(&run.join("metrics.jsonl"));
        common::assert_same_losses(&got, &want, point);
        let evals = history(&run.join("eval.jsonl"));
        assert_eq!(
            evals.keys().copied().collect::<Vec<_>>(),
            vec![0, 2, 4],
            "{point}"
        );
        for step in [2, 4] {
            let dir = run.join(format!("step-{step}"));
            assert!(
                dir.join("eval.json").is_file(),
                "{point}: {} has no eval.json",
                dir.display()
            );
        }
        let hidden: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{point}: {hidden:?} left behind");
    }

    // Resuming a finished run trains nothing and reports the recorded last loss.
    let again = train(tmp.path(), "straight", EVAL)
        .arg("--resume")
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    let text = stderr(&again);
    let last = format!("{:.4}", want[&4]["loss"].as_f64().unwrap());
    assert!(
        text.contains("nothing to train") && text.contains(&last) && !text.contains("NaN"),
        "{text}"
    );
}

/// An absurd learning rate ends the run with an error naming the step, and no checkpoint holds
/// non-finite adapters.
#[test]
fn training_stops_at_the_first_non_finite_step() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(&mut train(
        tmp.path(),
        "blowup",
        &[
            "optim.lr=1e30",
            "optim.warmup_steps=0",
            "optim.max_steps=6",
            "monitor.probe_every=0",
            "checkpoint.every_n_steps=1",
        ],
    ));
    assert!(e.contains("step ") && e.contains("training stopped"), "{e}");
    let model = persona_train::loader::load(
        &persona_train::source::resolve_default().unwrap(),
        &Device::flex(),
        DType::F32,
    )
    .unwrap();
    for (_, dir) in persona_train::train::checkpoint::list(&tmp.path().join("blowup")).unwrap() {
        let adapters = peft::load(&dir, model.model.config(), &Device::flex()).unwrap();
        for (_, _, pair) in adapters.iter() {
            for t in [&pair.a, &pair.b] {
                let v: Vec<f32> = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap();
                assert!(v.iter().all(|x| x.is_finite()), "{}", dir.display());
            }
        }
    }
}

#[test]
fn max_steps_zero_and_failed_runs_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(&mut train(tmp.path(), "zero", &["optim.max_steps=0"]));
    assert!(e.contains("optim.max_steps"), "{e}");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    let e = fails(&mut train(
        tmp.path(),
        "bad-data",
        &[&format!("data.train=[\"{}\"]", bad.display())],
    ));
    assert!(e.contains("bad.jsonl:1") && e.contains("tool"), "{e}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bad.jsonl")]);
}

#[test]
fn every_chat_reader_applies_one_role_policy() {
    use persona_train::tokenizer::chat::parse_chat_line;
    let line = |messages: &str| format!("{{\"messages\": {messages}, \"id\": 7}}");
    assert!(parse_chat_line(&line(
        r#"[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]"#
    ))
    .is_ok());
    for (messages, want) in [
        (r#"[{"role": "tool", "content": "u"}]"#, "tool"),
        (
            r#"[{"role": "user", "content": "u"}, {"role": "system", "content": "s"}]"#,
            "system message may only come first",
        ),
        (r#"[]"#, "empty"),
        (
            r#"[{"role": "user", "content": "u", "weight": 0}]"#,
            "weight",
        ),
    ] {
        let e = format!("{:#}", parse_chat_line(&line(messages)).unwrap_err());
        assert!(e.contains(want), "{messages}: {e}");
    }
    // The same line is refused by screening and monitoring as by training.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late-system.jsonl");
    let text = line(
        r#"[{"role": "user", "content": "u"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]"#,
    ) + "\n";
    std::fs::write(&path, &text).unwrap();
    for e in [
        persona_train::data::read_chats(&path).err(),
        persona_train::persona::screen::Dataset::read(&path, None).err(),
        persona_train::persona::monitor::parse_prompts(&text, "stdin").err(),
    ] {
        let e = format!("{:#}", e.expect("the line is refused"));
        assert!(e.contains("system message may only come first"), "{e}");
    }
}
