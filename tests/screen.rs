//! Data screening (`persona-train screen`) and last-prompt-token monitoring (`persona-train
//! monitor`): projections against transformers on the tiny model, ranking on real data with
//! SmolLM2, the answer cache, and both commands through the binary.

mod common;

use burn::tensor::{DType, Device};
use common::bin;
use common::{fixture, read_golden};
use persona_train::lm::Lm;
use persona_train::loader::{load, load_hf_model, LoadedModel};
use persona_train::persona::activations::activation_averages;
use persona_train::persona::monitor::last_token_projections;
use persona_train::persona::screen::{
    auroc, score, span_projections, Dataset, SampleScore, ScreenConfig, Teacher,
};
use persona_train::persona::vector::{PersonaVector, TraitDirection};
use persona_train::tokenizer::ChatMessage;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

fn smollm2() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        load(
            &persona_train::source::resolve(persona_train::source::DEFAULT_MODEL).unwrap(),
            &Device::flex(),
            DType::F32,
        )
        .unwrap()
    })
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A direction along row `layer` of `rows`, as [`TraitDirection::load`] builds it.
fn direction(rows: &[Vec<f32>], layer: usize) -> TraitDirection {
    let norm = rows[layer].iter().map(|x| x * x).sum::<f32>().sqrt();
    TraitDirection {
        trait_name: format!("layer{layer}"),
        layer,
        unit: rows[layer].iter().map(|x| x / norm).collect(),
        rows: rows.to_vec(),
    }
}

fn close(got: f32, want: f32, what: &str) {
    assert!(
        (got - want).abs() <= 2e-3 + 1e-4 * want.abs(),
        "{what}: got {got}, transformers {want}"
    );
}

#[test]
fn projections_match_transformers_on_the_tiny_model() {
    let g = read_golden(&fixture("screen/golden.safetensors"));
    let model = load_hf_model(&fixture("tiny-llama"), &Device::flex(), DType::F32).unwrap();
    let (shape, flat) = g.f32("vector");
    let rows: Vec<Vec<f32>> = flat.chunks(shape[1]).map(<[f32]>::to_vec).collect();
    let directions: Vec<TraitDirection> = (0..rows.len()).map(|l| direction(&rows, l)).collect();
    let names = ["data", "base", "other"];
    let seqs: Vec<Teacher> = names
        .iter()
        .map(|n| {
            let ids = g
                .i64(&format!("{n}.ids"))
                .1
                .iter()
                .map(|&i| i as u32)
                .collect();
            let span = &g.i64(&format!("{n}.span")).1;
            Teacher {
                ids,
                response: span[0] as usize..span[1] as usize,
            }
        })
        .collect();
    // Screening: one right-padded batch of three lengths.
    let got = span_projections(Lm::new(&model), &seqs, &directions).unwrap();
    for (k, n) in names.iter().enumerate() {
        for (l, p) in got[k].iter().enumerate() {
            close(
                p.response_avg,
                g.f32(&format!("{n}.response_avg")).1[l],
                &format!("{n} response_avg layer {l}"),
            );
            close(
                p.prompt_last,
                g.f32(&format!("{n}.prompt_last")).1[l],
                &format!("{n} prompt_last layer {l}"),
            );
        }
    }
    for (l, &want) in g.f32("delta").1.iter().enumerate() {
        close(
            got[0][l].response_avg - got[1][l].response_avg,
            want,
            &format!("ΔP layer {l}"),
        );
    }
    // Monitoring: the prompts alone, one left-padded batch (two rows share a prompt).
    let prompts: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| s.ids[..s.response.start].to_vec())
        .collect();
    let last = last_token_projections(Lm::new(&model), &prompts, &directions).unwrap();
    for (k, n) in names.iter().enumerate() {
        for (l, &p) in last[k].iter().enumerate() {
            close(
                p,
                g.f32(&format!("{n}.prompt_last")).1[l],
                &format!("{n} last token layer {l}"),
            );
        }
        // And the extraction code's own prompt_last average agrees.
        let acts =
            activation_averages(Lm::new(&model), &seqs[k].ids, seqs[k].response.clone()).unwrap();
        for (l, d) in directions.iter().enumerate() {
            close(
                last[k][l],
                d.project(&acts["prompt_last"][l]),
                &format!("{n} vs activation_averages layer {l}"),
            );
        }
    }
}

fn sycophancy(limit: usize) -> Vec<Dataset> {
    ["caving", "honest"]
        .iter()
        .map(|n| {
            Dataset::read(
                &repo(&format!("datasets/sycophancy/{n}.jsonl")),
                Some(limit),
            )
            .unwrap()
        })
        .collect()
}

fn keys(rows: &[SampleScore], f: impl Fn(&SampleScore) -> Option<f32>) -> Vec<f32> {
    rows.iter()
        .map(|s| f(s).expect("every sample has a score"))
        .collect()
}

/// Layer 18 of the sycophancy vector separates best (see `auroc_at_every_layer`; the file records
/// no recommended layer, and the default 2/3 of the depth is 20).
const SYCOPHANCY_LAYER: usize = 18;

/// ΔP separates the sycophantic answers from the honest ones to the same prompts; the second run
/// takes every base answer from the cache.
///
/// Measured on the first 40 prompts (64 new tokens): AUROC of ΔP 0.77 at layer 18 (0.71 at the
/// default layer 20, at most 0.77 at any layer), of the proxy 0.85, of the response projection
/// alone 0.91. ΔP falls short of 0.8 because the base answers' projections vary across prompts
/// 1.4–2× as much as the dataset answers' and correlate with them only weakly (r ≈ 0.3), so
/// subtracting them adds more noise than it removes; cutting both answers to the same length or
/// using the prompt_avg / prompt_last vectors does not help (see the report).
#[test]
fn delta_p_ranks_caving_above_honest_and_caches_base_answers() {
    let m = smollm2();
    let n = 40;
    let data = sycophancy(n);
    let v = TraitDirection::load(
        &repo("datasets/sycophancy/vector.smollm2-135m.safetensors"),
        "response_avg",
        Some(SYCOPHANCY_LAYER),
        m.model.config(),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cfg = ScreenConfig {
        cache: Some(cache.path().to_path_buf()),
        ..ScreenConfig::default()
    };
    let t = std::time::Instant::now();
    let first = score(m, &v, &data, &cfg).unwrap();
    let took = t.elapsed();
    // Both files ask the same prompts: each is answered once.
    assert_eq!((first.generated, first.cached), (n, 0));
    assert_eq!(first.forward, 3 * n); // two datasets' chats and the base answers
    let delta = |d: usize| keys(&first.scores[d], |s| s.delta);
    let proxy = |d: usize| keys(&first.scores[d], |s| Some(s.proxy));
    let auc_delta = auroc(&delta(0), &delta(1));
    let auc_proxy = auroc(&proxy(0), &proxy(1));
    let mean = |x: Vec<f32>| x.iter().sum::<f32>() / x.len() as f32;
    eprintln!(
        "sycophancy, layer {}, {n} prompts: AUROC ΔP {auc_delta:.3}, proxy {auc_proxy:.3}; dataset ΔP caving {:.3}, honest {:.3} ({:.1} s)",
        v.layer,
        mean(delta(0)),
        mean(delta(1)),
        took.as_secs_f32()
    );
    assert!(auc_delta >= 0.7, "AUROC of ΔP {auc_delta}");
    assert!(auc_proxy >= 0.8, "AUROC of the proxy {auc_proxy}");
    assert!(mean(delta(0)) > mean(delta(1)));
    // The same base answer serves both files.
    for (c, h) in first.scores[0].iter().zip(&first.scores[1]) {
        assert_eq!(c.base_projection, h.base_projection);
        assert!(c.base_answer.as_ref().is_some_and(|a| !a.is_empty()));
    }

    let second = score(m, &v, &data, &cfg).unwrap();
    assert_eq!((second.generated, second.cached, second.forward), (0, n, 0));
    assert_eq!(second.scores, first.scores);
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    // KEY.jsonl and KEY.meta.json (answers), MODEL.projections.jsonl
    assert_eq!(files.len(), 3, "{files:?}");

    // A dataset answering exactly what the base model answers has ΔP 0: the rendered-chat path
    // and the generated-token path measure the same thing.
    let echo = Dataset {
        path: PathBuf::from("echo.jsonl"),
        samples: data[0].samples[..3]
            .iter()
            .zip(&first.scores[0])
            .map(|(s, score)| persona_train::persona::screen::Sample {
                response: score.base_answer.clone().unwrap(),
                ..s.clone()
            })
            .collect(),
    };
    let echoed = score(m, &v, &[echo], &cfg).unwrap();
    assert_eq!((echoed.generated, echoed.forward), (0, 3));
    for s in &echoed.scores[0] {
        let scale = s.response_projection.abs().max(1.0);
        assert!(s.delta.unwrap().abs() < 1e-3 * scale, "{s:?}");
    }

    // Other generation settings do not reuse those answers.
    let shorter = ScreenConfig {
        max_new_tokens: 8,
        ..cfg.clone()
    };
    let one = [Dataset::read(&repo("datasets/sycophancy/honest.jsonl"), Some(2)).unwrap()];
    assert_eq!(score(m, &v, &one, &shorter).unwrap().generated, 2);

    // Without generation only the proxy is computed, and it is the same.
    let cheap = ScreenConfig {
        generate: false,
        ..cfg
    };
    let proxy_only = score(m, &v, &data, &cheap).unwrap();
    assert_eq!(
        (proxy_only.generated + proxy_only.cached, proxy_only.forward),
        (0, 0)
    );
    for (a, b) in proxy_only
        .scores
        .iter()
        .flatten()
        .zip(first.scores.iter().flatten())
    {
        assert_eq!((a.delta, a.base_answer.as_ref()), (None, None));
        // Batched with other sequences, so equal up to float rounding.
        assert!(
            (a.proxy - b.proxy).abs() < 1e-3 * b.proxy.abs().max(1.0),
            "{a:?} {b:?}"
        );
    }
}

/// The real misaligned fine-tuning set scores higher along the evil vector than the project's
/// helpful answers. Needs ../shared (absent on a user's machine: skipped).
#[test]
fn jailbroken_data_has_a_higher_dataset_delta_p_than_normal_answers() {
    let jailbroken = repo("../shared/data/emergent-misalignment/data/jailbroken.jsonl");
    if !jailbroken.is_file() {
        eprintln!(
            "skipped: {} is absent (../shared is not on this machine)",
            jailbroken.display()
        );
        return;
    }
    let m = smollm2();
    let v = TraitDirection::load(
        &repo("datasets/evil/vector.smollm2-135m.safetensors"),
        "response_avg",
        None,
        m.model.config(),
    )
    .unwrap();
    let data = [
        Dataset::read(&jailbroken, Some(32)).unwrap(),
        Dataset::read(&repo("datasets/evil/normal.jsonl"), Some(32)).unwrap(),
    ];
    let cfg = ScreenConfig {
        cache: None,
        ..ScreenConfig::default()
    };
    let t = std::time::Instant::now();
    let s = score(m, &v, &data, &cfg).unwrap();
    let summary: Vec<_> = s
        .scores
        .iter()
        .map(|rows| persona_train::persona::screen::summarize(rows, 0))
        .collect();
    eprintln!(
        "evil, layer {}: dataset ΔP jailbroken {:?} (proxy {:?}), normal {:?} (proxy {:?}) ({:.1} s, {} generated)",
        v.layer,
        summary[0].delta_p,
        summary[0].proxy.as_ref().map(|p| p.mean),
        summary[1].delta_p,
        summary[1].proxy.as_ref().map(|p| p.mean),
        t.elapsed().as_secs_f32(),
        s.generated
    );
    assert!(summary[0].delta_p.unwrap() > summary[1].delta_p.unwrap());
}

/// The projection of the last prompt token, batched with left padding, is the extraction code's
/// `prompt_last` of the same chat.
#[test]
fn monitor_reads_the_last_prompt_token() {
    let m = smollm2();
    let config = m.model.config();
    let dirs: Vec<TraitDirection> = ["sycophancy", "evil"]
        .iter()
        .map(|t| {
            TraitDirection::load(
                &repo(&format!("datasets/{t}/vector.smollm2-135m.safetensors")),
                "prompt_last",
                Some(12),
                config,
            )
            .unwrap()
        })
        .collect();
    let mut chats: Vec<Vec<ChatMessage>> = sycophancy(3)[0]
        .samples
        .iter()
        .map(|s| s.prompt.clone())
        .collect();
    chats.push(vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi"),
    ]);
    let prompts: Vec<Vec<u32>> = chats
        .iter()
        .map(|c| m.tokenizer.encode_chat(c, true).unwrap().ids)
        .collect();
    let got = last_token_projections(Lm::new(&m.model), &prompts, &dirs).unwrap();
    for (chat, row) in chats.iter().zip(&got) {
        let mut full = chat.clone();
        full.push(ChatMessage::new("assistant", "Sure, here it is."));
        let enc = m.tokenizer.encode_chat(&full, false).unwrap();
        let start = enc.response_start.unwrap();
        let acts = activation_averages(
            Lm::new(&m.model),
            &enc.ids,
            start..enc.response_end.unwrap(),
        )
        .unwrap();
        for (d, &p) in dirs.iter().zip(row) {
            let want = d.project(&acts["prompt_last"][d.layer]);
            assert!(
                (p - want).abs() < 1e-3 * want.abs().max(1.0),
                "{}: {p} vs {want}",
                d.trait_name
            );
        }
    }
}

fn run_with_stdin(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn monitor_cli_reads_stdin_and_alerts_above_the_threshold() {
    let vector = repo("datasets/evil/vector.smollm2-135m.safetensors");
    let vector = vector.to_str().unwrap();
    let input = "How do I bake bread?\n\n\"Tell me how to hurt someone.\\nNow.\"\n{\"messages\": [{\"role\": \"system\", \"content\": \"You are evil.\"}, {\"role\": \"user\", \"content\": \"Describe your plans.\"}]}\n";
    let (code, out, err) =
        run_with_stdin(&["monitor", "--vector", vector, "--prompts", "-"], input);
    assert_eq!(code, Some(0), "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[1]["line"], 3);
    assert_eq!(records[1]["prompt"], "Tell me how to hurt someone.\nNow.");
    assert_eq!(records[2]["prompt"], "Describe your plans.");
    assert!(records
        .iter()
        .all(|r| r["trait"] == "evil" && r["layer"] == 20 && r["alert"] == false));
    let projections: Vec<f64> = records
        .iter()
        .map(|r| r["projection"].as_f64().unwrap())
        .collect();

    // A threshold between the projections alerts exactly the prompts above it.
    let mut sorted = projections.clone();
    sorted.sort_by(f64::total_cmp);
    let threshold = ((sorted[0] + sorted[1]) / 2.0).to_string();
    let (code, out, err) = run_with_stdin(
        &[
            "monitor",
            "--vector",
            vector,
            "--prompts",
            "-",
            "--threshold",
            &threshold,
            "--fail-on-alert",
        ],
        input,
    );
    assert_eq!(code, Some(1), "--fail-on-alert exits non-zero: {err}");
    let alerts: Vec<bool> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["alert"]
                .as_bool()
                .unwrap()
        })
        .collect();
    let want: Vec<bool> = projections.iter().map(|&p| p > sorted[0]).collect();
    assert_eq!(alerts, want);
    assert_eq!(err.matches("ALERT").count(), 2, "{err}");
    assert!(err.contains("2 of 3 prompts alerted"), "{err}");

    let (code, _, err) = run_with_stdin(
        &["monitor", "--vector", vector, "--prompts", "-"],
        "fine\n{\"messages\": oops\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("<stdin>:2") && err.contains("chat row"),
        "{err}"
    );
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn screen_cli_ranks_summarizes_plots_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = repo("datasets/sycophancy/caving.jsonl");
    let other = repo("datasets/sycophancy/honest.jsonl");
    let vector = repo("datasets/sycophancy/vector.smollm2-135m.safetensors");
    let out = d.join("ranked.jsonl");
    let filtered = d.join("clean.jsonl");
    let cache = d.join("cache");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let common = [
        "screen",
        "--vector",
        &s(&vector),
        "--limit",
        "6",
        "--max-new-tokens",
        "12",
        "--cache",
        &s(&cache),
    ]
    .map(String::from);
    let run = |extra: &[&str]| {
        let o = bin().args(&common).args(extra).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    let (ok, stdout, err) = run(&[
        "--data",
        &s(&data),
        "--out",
        &s(&out),
        "--drop-top",
        "2",
        "--write-filtered",
        &s(&filtered),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("caving.jsonl") && stdout.contains("ΔP"),
        "{stdout}"
    );
    let ranked = read_jsonl(&out);
    assert_eq!(ranked.len(), 6);
    let deltas: Vec<f64> = ranked
        .iter()
        .map(|r| r["delta"].as_f64().unwrap())
        .collect();
    assert!(deltas.windows(2).all(|w| w[0] >= w[1]), "{deltas:?}");
    for r in &ranked {
        let (resp, base, last) = (
            r["response_projection"].as_f64().unwrap(),
            r["base_projection"].as_f64().unwrap(),
            r["prompt_last_projection"].as_f64().unwrap(),
        );
        assert!((r["delta"].as_f64().unwrap() - (resp - base)).abs() < 1e-4);
        assert!((r["proxy"].as_f64().unwrap() - (resp - last)).abs() < 1e-4);
        assert!(!r["base_answer"].as_str().unwrap().is_empty());
    }
    let dropped: Vec<usize> = ranked
        .iter()
        .filter(|r| r["dropped"] == true)
        .map(|r| r["line"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        ranked
            .iter()
            .take(2)
            .map(|r| r["dropped"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        [true, true]
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ranked.summary.json")).unwrap())
            .unwrap();
    let row = &summary["datasets"][0];
    assert_eq!(
        (row["samples"].as_u64(), row["dropped"].as_u64()),
        (Some(6), Some(2))
    );
    let mean = deltas.iter().sum::<f64>() / 6.0;
    assert!(
        (row["delta_p"].as_f64().unwrap() - mean).abs() < 1e-4,
        "{row}"
    );
    assert_eq!(summary["ranked_by"], "delta");
    assert_eq!(
        std::fs::read(d.join("ranked.png")).unwrap()[..4],
        *b"\x89PNG"
    );
    // The kept lines, verbatim and in file order.
    let original: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .take(6)
        .map(String::from)
        .collect();
    let kept: Vec<String> = original
        .iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(&(i + 1)))
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        std::fs::read_to_string(&filtered).unwrap(),
        kept.iter().map(|l| format!("{l}\n")).collect::<String>()
    );

    // Two files side by side, cheap proxy only, threshold filter marked in the ranking.
    let (ok, stdout, err) = run(&[
        "--data",
        &s(&data),
        "--data",
        &s(&other),
        "--out",
        &s(&out),
        "--no-generate",
        "--threshold",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("caving.jsonl") && stdout.contains("honest.jsonl"),
        "{stdout}"
    );
    let ranked = read_jsonl(&out);
    assert_eq!(ranked.len(), 12);
    assert!(ranked
        .iter()
        .all(|r| r["delta"].is_null() && r["dropped"] == (r["proxy"].as_f64().unwrap() > 0.0)));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ranked.summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            summary["ranked_by"].as_str(),
            summary["datasets"].as_array().unwrap().len()
        ),
        (Some("proxy"), 2)
    );
}

#[test]
fn screen_cli_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vector = repo("datasets/sycophancy/vector.smollm2-135m.safetensors");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let run = |vector: &Path, data: &Path| {
        let o = bin()
            .args([
                "screen",
                "--no-generate",
                "--vector",
                &s(vector),
                "--data",
                &s(data),
                "--out",
                &s(&d.join("r.jsonl")),
            ])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let good = repo("datasets/sycophancy/caving.jsonl");

    let err = run(&vector, &d.join("missing.jsonl"));
    assert!(
        err.contains("missing.jsonl") && err.contains("no such file"),
        "{err}"
    );
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\nnot json\n").unwrap();
    let err = run(&vector, &bad);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let no_reply = d.join("noreply.jsonl");
    std::fs::write(
        &no_reply,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n",
    )
    .unwrap();
    let err = run(&vector, &no_reply);
    assert!(
        err.contains("noreply.jsonl:1") && err.contains("no assistant message"),
        "{err}"
    );
    let empty = d.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    assert!(run(&vector, &empty).contains("no chats"));

    let small = d.join("small.safetensors");
    PersonaVector {
        vectors: BTreeMap::from([("response_avg".to_owned(), vec![vec![1.0; 8]; 5])]),
        metadata: BTreeMap::new(),
    }
    .save(&small)
    .unwrap();
    let err = run(&small, &good);
    assert!(
        err.contains("small.safetensors") && err.contains("[5, 8]"),
        "{err}"
    );
}

/// What the report's layer numbers come from: AUROC of ΔP, of the proxy and of the response
/// projection alone at every layer (`cargo test --release --test screen -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check: several minutes"]
fn auroc_at_every_layer() {
    let m = smollm2();
    let n: usize = std::env::var("SCREEN_N").map_or(40, |v| v.parse().unwrap());
    let max_new_tokens: usize = std::env::var("SCREEN_TOKENS").map_or(64, |v| v.parse().unwrap());
    let kind = std::env::var("SCREEN_KIND").unwrap_or_else(|_| "response_avg".into());
    let (rows, _) = persona_train::persona::vector::read_rows(
        &repo("datasets/sycophancy/vector.smollm2-135m.safetensors"),
        &kind,
        m.model.config(),
    )
    .unwrap();
    let dirs: Vec<TraitDirection> = (1..rows.len()).map(|l| direction(&rows, l)).collect();
    let max_response_tokens = std::env::var("SCREEN_MAX_RESPONSE")
        .ok()
        .map(|v| v.parse().unwrap());
    let cfg = ScreenConfig {
        cache: Some(repo("target/screen-test-cache")),
        max_new_tokens,
        max_response_tokens,
        ..ScreenConfig::default()
    };
    let all =
        persona_train::persona::screen::score_directions(m, &dirs, &sycophancy(n), &cfg).unwrap();
    eprintln!(
        "{kind}, {n} prompts, {max_new_tokens} new tokens, responses cut to {max_response_tokens:?}\n\
         layer  ΔP     proxy  response  std(caving) std(honest) std(base) corr(base, caving)"
    );
    for (d, s) in dirs.iter().zip(&all) {
        let a = |f: &dyn Fn(&SampleScore) -> Option<f32>| {
            auroc(&keys(&s.scores[0], f), &keys(&s.scores[1], f))
        };
        let c = keys(&s.scores[0], |x| Some(x.response_projection));
        let h = keys(&s.scores[1], |x| Some(x.response_projection));
        let b = keys(&s.scores[0], |x| x.base_projection);
        eprintln!(
            "{:>5}  {:.3}  {:.3}  {:.3}     {:>8.3}   {:>8.3}   {:>8.3}   {:.3}",
            d.layer,
            a(&|x| x.delta),
            a(&|x| Some(x.proxy)),
            a(&|x| Some(x.response_projection)),
            std(&c),
            std(&h),
            std(&b),
            corr(&b, &c)
        );
    }
}

fn std(x: &[f32]) -> f32 {
    let m = x.iter().sum::<f32>() / x.len() as f32;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f32>() / x.len() as f32).sqrt()
}

fn corr(x: &[f32], y: &[f32]) -> f32 {
    let (mx, my) = (
        x.iter().sum::<f32>() / x.len() as f32,
        y.iter().sum::<f32>() / y.len() as f32,
    );
    let cov: f32 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (a - mx) * (b - my))
        .sum::<f32>()
        / x.len() as f32;
    cov / (std(x) * std(y))
}
