//! The command line end to end on the default model (fetched once by the resolver).

mod common;

use common::{run_cli, smollm2_vector, tiny_word_model, TINY_WORDS};
use persona_train::persona::vector::PersonaVector;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(serde::Deserialize)]
struct GreedyCase {
    system: Option<String>,
    prompt: String,
    reply: String,
}

#[test]
fn generate_prints_the_greedy_reply() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/greedy.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let case: GreedyCase = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut args = vec![
        "generate",
        "--prompt",
        &case.prompt,
        "--max-new-tokens",
        "40",
    ];
    if let Some(s) = &case.system {
        args.extend(["--system", s]);
    }
    let (ok, stdout, stderr) = run_cli(&args);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim_end_matches('\n'), case.reply);
}

#[derive(serde::Deserialize)]
struct RawCase {
    prompt: String,
    max_new_tokens: usize,
    continuation: String,
}

/// `generate --raw`: the prompt as plain text (no chat template), only the continuation printed,
/// as transformers' text-generation pipeline returns it (tests/fixtures/make_golden.py smollm2-raw).
#[test]
fn generate_raw_continues_plain_text() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/raw.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines() {
        let case: RawCase = serde_json::from_str(line).unwrap();
        let max = case.max_new_tokens.to_string();
        let (ok, stdout, stderr) = run_cli(&[
            "generate",
            "--raw",
            "--prompt",
            &case.prompt,
            "--max-new-tokens",
            &max,
        ]);
        assert!(ok, "{stderr}");
        assert_eq!(stdout.strip_suffix('\n'), Some(case.continuation.as_str()));
    }
    let (ok, _, stderr) = run_cli(&["generate", "--raw", "--system", "x", "--prompt", "y"]);
    assert!(
        !ok && stderr.contains("--system") && stderr.contains("--raw"),
        "{stderr}"
    );
}

/// A model without a chat template (a base model) continues text with --raw, and the commands
/// that need a template say so before doing anything.
#[test]
fn a_base_model_needs_raw() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    tiny_word_model(&model_dir, None);
    let model = model_dir.to_str().unwrap();
    let (ok, _, stderr) = run_cli(&["generate", "--model", model, "--prompt", "hello how"]);
    assert!(
        !ok && stderr.contains("has none") && stderr.contains("--raw"),
        "{stderr}"
    );
    let args = [
        "generate",
        "--model",
        model,
        "--prompt",
        "hello how",
        "--raw",
    ];
    let (ok, stdout, stderr) = run_cli(&[&args[..], &["--max-new-tokens", "3"]].concat());
    // The words it picks are arbitrary (random weights; ids past the ten words decode to
    // nothing), but only they are printed, not the prompt.
    assert!(ok, "{stderr}");
    assert!(
        stdout.ends_with('\n')
            && !stdout.contains("hello how")
            && stdout
                .split_whitespace()
                .all(|w| TINY_WORDS.contains(&w) || w.starts_with('<') || w == "answer:"),
        "{stdout:?}"
    );
    let (ok, _, stderr) = run_cli(&["serve", "--model", model, "--port", "0"]);
    assert!(
        !ok && stderr.contains("chat completions only") && stderr.contains("has none"),
        "{stderr}"
    );

    // Any other command that formats chats: its first chat fails, naming why.
    let vector = dir.path().join("v.safetensors");
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), vec![vec![1.0; 64]; 4])]),
        metadata: BTreeMap::new(),
    }
    .save(&vector)
    .unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "hello how\n").unwrap();
    let (ok, _, stderr) = run_cli(&[
        "monitor",
        "--model",
        model,
        "--vector",
        vector.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("no chat template") && stderr.contains("a base model?"),
        "{stderr}"
    );
}

#[test]
fn forward_writes_ids_logits_and_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.safetensors");
    let (ok, _, stderr) = run_cli(&[
        "forward",
        "--text",
        "Hello there",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("input_ids").unwrap().shape()[0];
    assert!(t >= 2);
    assert_eq!(st.tensor("logits").unwrap().shape(), &[t, 49152]);
    assert_eq!(st.tensor("hidden_states").unwrap().shape(), &[31, t, 576]);
}

/// [`smollm2_vector`] as a persona-vector file.
fn write_vector(path: &Path) {
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), smollm2_vector())]),
        metadata: BTreeMap::new(),
    }
    .save(path)
    .unwrap();
}

#[test]
fn steering_changes_the_reply_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let vector = dir.path().join("v.safetensors");
    write_vector(&vector);
    let v = vector.to_str().unwrap();
    let base = [
        "generate",
        "--prompt",
        "Tell me about cats.",
        "--max-new-tokens",
        "12",
    ];
    let (ok, plain, stderr) = run_cli(&base);
    assert!(ok, "{stderr}");
    let steered_args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--steer", v, "--all-layers", "--coef", "6"])
        .collect();
    let (ok, steered, stderr) = run_cli(&steered_args);
    assert!(ok, "{stderr}");
    assert_ne!(plain, steered);

    // Without --coef, the coefficient a sweep recommended (and nothing silently otherwise).
    let no_coef: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--steer", v, "--all-layers"])
        .collect();
    let (ok, _, stderr) = run_cli(&no_coef);
    assert!(!ok && stderr.contains("recommended_coef"), "{stderr}");
    let mut with_recommendation = PersonaVector::load(&vector).unwrap();
    with_recommendation
        .metadata
        .insert("recommended_coef".into(), "6".into());
    let recommended = dir.path().join("recommended.safetensors");
    with_recommendation.save(&recommended).unwrap();
    let rec_args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--steer", recommended.to_str().unwrap(), "--all-layers"])
        .collect();
    let (ok, rec_steered, stderr) = run_cli(&rec_args);
    assert!(ok, "{stderr}");
    assert_eq!(rec_steered, steered);

    let no_layer: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--steer", v, "--coef", "2"])
        .collect();
    let (ok, _, stderr) = run_cli(&no_layer);
    assert!(!ok && stderr.contains("--layer"), "{stderr}");
    let bad_layer: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--steer", v, "--coef", "2", "--layer", "31"])
        .collect();
    let (ok, _, stderr) = run_cli(&bad_layer);
    assert!(!ok && stderr.contains("out of range"), "{stderr}");
}

#[test]
fn control_vector_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let vector = dir.path().join("v.safetensors");
    write_vector(&vector);
    let gguf = dir.path().join("v.gguf");
    let back = dir.path().join("back.safetensors");
    let (ok, _, stderr) = run_cli(&[
        "export-cvec",
        "--vector",
        vector.to_str().unwrap(),
        "--out",
        gguf.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run_cli(&[
        "import-cvec",
        "--cvec",
        gguf.to_str().unwrap(),
        "--layers",
        "30",
        "--out",
        back.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (orig, back) = (
        PersonaVector::load(&vector).unwrap(),
        PersonaVector::load(&back).unwrap(),
    );
    let (orig, back) = (&orig.vectors["response_avg"], &back.vectors["response_avg"]);
    assert_eq!(back.len(), 31);
    // llama.cpp cannot steer block 0, so rows 0 and 1 do not survive; the rest do, exactly.
    assert_eq!(&orig[2..], &back[2..]);
    assert!(back[1].iter().all(|&x| x == 0.0));
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let (ok, _, stderr) = run_cli(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");
}
