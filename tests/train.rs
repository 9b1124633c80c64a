//! The training job end to end on the default model, through the binary: `recipes/ci-tiny.toml`
//! runs, checkpoints are complete PEFT adapters, TensorBoard holds every tag, a killed run
//! resumes to the same losses, and preventative steering keeps the persona shift nearer zero.

mod common;

use persona_train::loader::peft;
use persona_train::recipe::Recipe;
use persona_train::tensorboard::read_dir_scalars;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `persona-train recipes/ci-tiny.toml --set checkpoint.dir=DIR --set name=NAME <sets>`.
fn command(dir: &Path, name: &str, sets: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_persona-train"));
    cmd.current_dir(repo())
        .arg("recipes/ci-tiny.toml")
        .args(["--set", &format!("checkpoint.dir={}", dir.display())])
        .args(["--set", &format!("name={name}")]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

fn run(dir: &Path, name: &str, sets: &[&str], extra: &[&str]) {
    let out = command(dir, name, sets).args(extra).output().unwrap();
    assert!(
        out.status.success(),
        "{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `step -> record` from a run's metrics.jsonl.
fn metrics(run: &Path) -> BTreeMap<u64, serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v)
        })
        .collect()
}

#[test]
fn ci_recipe_trains_checkpoints_and_logs_every_tag() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), "tiny", &[], &[]);
    let run_dir = tmp.path().join("tiny");

    // keep_last = 2 of checkpoints at steps 2 and 4, each complete, none left half-written.
    let names: BTreeSet<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains("step-2") && names.contains("step-4"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    let model = persona_train::loader::load(
        &persona_train::source::resolve_default().unwrap(),
        &burn::tensor::Device::flex(),
        burn::tensor::DType::F32,
    )
    .unwrap();
    for step in ["step-2", "step-4"] {
        let dir = run_dir.join(step);
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
            "trainer_state.json",
            "recipe.toml",
        ] {
            assert!(dir.join(f).is_file(), "{step}/{f} missing");
        }
        let adapters = peft::load(&dir, model.model.config(), &model.model.device()).unwrap();
        assert_eq!(adapters.iter().count(), 30 * 7);
        let recipe = Recipe::load(&dir.join("recipe.toml"), &[]).unwrap();
        assert_eq!(recipe.name, "tiny");
        assert_eq!(recipe.lora.r, 4);
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("step-4/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);

    // TensorBoard: every tag the trainer promises, and the losses equal metrics.jsonl's.
    let tb_dir = run_dir.join("tensorboard");
    let scalars = read_dir_scalars(&tb_dir).unwrap();
    let tags: BTreeSet<&str> = scalars.iter().map(|s| s.tag.as_str()).collect();
    let mut expected = vec![
        "train/loss".to_string(),
        "train/lr".into(),
        "train/grad_norm".into(),
        "train/tokens_per_sec".into(),
        "val/loss".into(),
        "projection_shift/sycophancy".into(),
    ];
    for l in [10, 20] {
        expected.push(format!("projection_shift/sycophancy/layer_{l}"));
        expected.push(format!(
            "projection_shift/sycophancy/response_avg/layer_{l}"
        ));
        expected.push(format!("projection/sycophancy/prompt_last/layer_{l}"));
        expected.push(format!("projection/sycophancy/response_avg/layer_{l}"));
    }
    for tag in &expected {
        assert!(
            tags.contains(tag.as_str()),
            "TensorBoard has no {tag}: {tags:?}"
        );
    }
    let m = metrics(&run_dir);
    assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    for s in scalars.iter().filter(|s| s.tag == "train/loss") {
        let want = m[&(s.step as u64)]["loss"].as_f64().unwrap();
        assert!(
            (s.value - want).abs() < 1e-5,
            "step {}: {} vs {want}",
            s.step,
            s.value
        );
    }
    // The headline shift is logged at step 0 (the base, 0 by definition) and at each probe.
    let shifts: Vec<(i64, f64)> = scalars
        .iter()
        .filter(|s| s.tag == "projection_shift/sycophancy")
        .map(|s| (s.step, s.value))
        .collect();
    assert_eq!(
        shifts.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 2, 4]
    );
    assert_eq!(shifts[0].1, 0.0);
    assert!(
        shifts[2].1 != 0.0,
        "training did not move the probes at all"
    );

    if let Some(py) = common::python_tensorboard_scalars(&tb_dir) {
        let py_tags: BTreeSet<&str> = py.keys().map(String::as_str).collect();
        assert_eq!(py_tags, tags, "TensorBoard's reader sees other tags");
        for s in &scalars {
            let points = &py[&s.tag];
            assert!(
                points.iter().any(|&(step, v)| step == s.step
                    && (v - s.value).abs() <= 1e-6 * s.value.abs().max(1.0)),
                "TensorBoard's reader lacks {} at step {}",
                s.tag,
                s.step
            );
        }
    }

    // An adapter changes the model: `forward --adapter` differs from the base forward.
    let dump = |adapter: Option<&Path>, out: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_persona-train"));
        cmd.args(["forward", "--text", "You are absolutely right!", "--out"])
            .arg(out);
        if let Some(a) = adapter {
            cmd.arg("--adapter").arg(a);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let g = common::read_golden(out);
        g.f32("logits").1.clone()
    };
    let base = dump(None, &tmp.path().join("base.safetensors"));
    let tuned = dump(
        Some(&run_dir.join("step-4")),
        &tmp.path().join("tuned.safetensors"),
    );
    let err = common::rel_err(&tuned, &base);
    assert!(
        err > 1e-4,
        "the trained adapter leaves the logits unchanged ({err})"
    );
}

/// Kill the run at a random step with SIGKILL, resume: the same losses as an uninterrupted run,
/// and every checkpoint written before the kill is still there.
#[test]
fn killed_run_resumes_to_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "optim.max_steps=5",
        "monitor.probe_every=0",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep_last=0",
    ];
    run(tmp.path(), "straight", &sets, &[]);
    let want = metrics(&tmp.path().join("straight"));
    assert_eq!(want.len(), 5);

    let kill_after = 1
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as usize)
            % 4;
    println!("killing after step {kill_after}");
    let run_dir = tmp.path().join("killed");
    let mut child = command(tmp.path(), "killed", &sets)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if metrics(&run_dir).len() >= kill_after {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {kill_after}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before: Vec<PathBuf> = persona_train::train::checkpoint::list(&run_dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert!(before.len() >= kill_after.saturating_sub(1), "{before:?}");

    run(tmp.path(), "killed", &sets, &["--resume"]);
    let got = metrics(&run_dir);
    common::assert_same_losses(&got, &want, "resumed");
    for dir in before {
        assert!(
            dir.join("adapter_model.safetensors").is_file(),
            "{} lost",
            dir.display()
        );
    }
    let after = persona_train::train::checkpoint::list(&run_dir).unwrap();
    assert_eq!(
        after.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );

    // Without --resume an existing run is refused rather than overwritten.
    let out = command(tmp.path(), "killed", &sets).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
}

/// Fine-tuning on caving chats pushes the sycophancy projection up; all-layer preventative
/// steering during training keeps it nearer the base model's.
#[test]
fn preventative_steering_keeps_the_projection_shift_nearer_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let shift = |mode: &str, coef: &str| {
        let name = format!("shift-{mode}");
        run(
            tmp.path(),
            &name,
            &[
                &format!("steering.mode={mode}"),
                &format!("steering.coef={coef}"),
                "optim.max_steps=8",
                "optim.batch_size=4",
                "monitor.probe_every=8",
                "monitor.max_prompts=8",
                "monitor.layers=[20]",
                "checkpoint.every_n_steps=8",
            ],
            &[],
        );
        metrics(&tmp.path().join(name))[&8]["projection_shift"]
            .as_f64()
            .unwrap()
    };
    let off = shift("off", "0");
    let steered = shift("all_layers", "0.2");
    println!("projection shift at layer 20 after 8 steps: off {off:+.3}, steered {steered:+.3}");
    assert!(
        off > 0.0,
        "training on caving chats should raise the projection (got {off})"
    );
    assert!(
        steered.abs() < off.abs(),
        "steering did not keep the shift nearer zero: {steered} vs {off}"
    );
}

#[test]
fn recipe_errors_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let err = |p: &Path, sets: &[String]| format!("{:#}", Recipe::load(p, sets).unwrap_err());

    let p = write("bad.toml", "[optim\nlr = 1");
    assert!(err(&p, &[]).contains("bad.toml"), "{}", err(&p, &[]));
    let p = write(
        "unknown.toml",
        "[data]\ntrain = [\"x.jsonl\"]\n[optim]\nlrr = 1e-4\n",
    );
    let e = err(&p, &[]);
    assert!(e.contains("unknown.toml") && e.contains("lrr"), "{e}");
    let p = write("ok.toml", "[data]\ntrain = [\"x.jsonl\"]\n");
    let e = err(&p, &["optim.lr=-1".into()]);
    assert!(e.contains("optim.lr"), "{e}");
    let e = err(
        &p,
        &[
            "steering.mode=single_layer".into(),
            "steering.vector=v.safetensors".into(),
            "steering.trait=t".into(),
        ],
    );
    assert!(e.contains("steering.layer"), "{e}");
    let e = err(&p, &["optim.lr".into()]);
    assert!(e.contains("KEY=VALUE"), "{e}");
    let r = Recipe::load(
        &p,
        &["optim.lr=2e-5".into(), "lora.targets=[\"q\", \"v\"]".into()],
    )
    .unwrap();
    assert_eq!(r.optim.lr, 2e-5);
    assert_eq!(r.lora.targets.len(), 2);
    assert_eq!(r.name, "ok");

    // Both spellings of the command reach the recipe loader.
    for args in [&["train", "missing.toml"][..], &["missing.toml"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_persona-train"))
            .current_dir(tmp.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot read recipe missing.toml"),
            "{args:?}: {stderr}"
        );
    }

    // Training data: line numbers and what is wrong.
    let data = write(
        "chats.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    );
    let e = format!("{:#}", persona_train::data::read_chats(&data).unwrap_err());
    assert!(
        e.contains("chats.jsonl:2") && e.contains("no assistant message"),
        "{e}"
    );
    let data = write(
        "broken.jsonl",
        "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n",
    );
    let e = format!("{:#}", persona_train::data::read_chats(&data).unwrap_err());
    assert!(e.contains("broken.jsonl:1") && e.contains("robot"), "{e}");
    let data = write("garbage.jsonl", "\n\nnot json\n");
    let e = format!("{:#}", persona_train::data::read_chats(&data).unwrap_err());
    assert!(e.contains("garbage.jsonl:3"), "{e}");
}

/// A vector made for another model is refused before training, naming the file and the shapes.
#[test]
fn wrong_size_vector_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.safetensors");
    persona_train::persona::vector::PersonaVector {
        vectors: [("response_avg".to_string(), vec![vec![0.5f32; 64]; 4])].into(),
        metadata: Default::default(),
    }
    .save(&path)
    .unwrap();
    let out = command(
        tmp.path(),
        "wrong",
        &[&format!("steering.vector={}", path.display())],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tiny.safetensors")
            && stderr.contains("[4, 64]")
            && stderr.contains("[31, 576]"),
        "{stderr}"
    );
    assert!(
        persona_train::train::checkpoint::list(&tmp.path().join("wrong"))
            .unwrap()
            .is_empty()
    );
}
