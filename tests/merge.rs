//! `merge`: a LoRA adapter folded into the base weights and written as a Hugging Face directory
//! gives the logits of the unmerged adapter (ours) and of PEFT, on the tiny fixtures and on
//! the real default model (whose directory must also carry its tokenizer and chat template).
//! `tests/fixtures/check_merge_transformers.py` checks a merged directory with transformers.

mod common;

use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{fixture, read_golden, rel_err, to_vec};
use persona_train::loader::peft;
use persona_train::loader::{self, load_hf_model, safetensors::SafetensorsParams};
use persona_train::merge::{adapter_base_model, merge, merge_weights};
use persona_train::model::lora::{Adapters, LoraConfig, Target};
use persona_train::model::Forward;
use persona_train::model::{
    CausalLm, ForwardInput, Llama3RopeScaling, LogitsFor, ModelConfig, RopeScaling,
};
use persona_train::source::ModelFiles;
use persona_train::tensor_file::Values;
use persona_train::tokenizer::ChatMessage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

const TOL: f64 = 1e-4;

fn logits(model: &CausalLm, ids: &[u32], adapters: Option<&Adapters>) -> Vec<f32> {
    let input = ForwardInput::dense(&[ids.to_vec()], 0, &model.device());
    let out = model
        .forward(
            &input,
            Forward {
                adapters,
                ..Forward::logits(LogitsFor::All)
            },
        )
        .unwrap();
    to_vec(out.logits.unwrap())
}

fn golden_ids(adapter: &str) -> Vec<u32> {
    let g = read_golden(&fixture(&format!("{adapter}/golden.safetensors")));
    g.i64("input_ids").1.iter().map(|&i| i as u32).collect()
}

/// Every tensor of a safetensors file as f32, with its shape.
fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = loader::safetensors::view_to_f32(&view).unwrap();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Where a merged directory goes: under `$PERSONA_TRAIN_KEEP_MERGE` when set (kept for
/// `tests/fixtures/check_merge_transformers.py`, which takes a fixture's `golden.safetensors` as
/// its reference too), else in `tmp`.
fn out_dir(tmp: &Path, name: &str) -> std::path::PathBuf {
    match std::env::var_os("PERSONA_TRAIN_KEEP_MERGE") {
        Some(root) => {
            let dir = Path::new(&root).join(name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            dir
        }
        None => tmp.join(name),
    }
}

/// The tiny Llama with a PEFT adapter, merged: the same logits as the adapter applied unmerged
/// and as PEFT's (golden), and the same config.
fn check_peft_fixture(adapter: &str) {
    let device = Device::flex();
    let base = load_hf_model(&fixture("tiny-llama"), &device, DType::F32).unwrap();
    let adapters = peft::load(&fixture(adapter), base.config(), &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = out_dir(tmp.path(), &format!("tiny-llama+{adapter}"));
    merge_weights(&base, &adapters, &out).unwrap();
    assert!(
        !out.with_file_name(format!(".tiny-llama+{adapter}.tmp"))
            .exists(),
        "the temporary directory was left behind"
    );

    let merged = load_hf_model(&out, &device, DType::F32).unwrap();
    assert_eq!(
        merged.config(),
        base.config(),
        "{adapter}: config round trip"
    );
    let ids = golden_ids(adapter);
    let got = logits(&merged, &ids, None);
    let unmerged = logits(&base, &ids, Some(&adapters));
    let err = rel_err(&got, &unmerged);
    let g = read_golden(&fixture(&format!("{adapter}/golden.safetensors")));
    let err_peft = rel_err(&got, &g.f32("logits").1);
    eprintln!("{adapter}: merged vs unmerged rel err {err:.2e}, vs PEFT {err_peft:.2e}");
    assert!(
        err < TOL,
        "{adapter}: merged vs unmerged logits rel err {err}"
    );
    assert!(
        err_peft < TOL,
        "{adapter}: merged vs PEFT logits rel err {err_peft}"
    );
    let changed = rel_err(&logits(&base, &ids, None), &unmerged);
    assert!(
        changed > 0.05,
        "{adapter}: the adapter barely changes the logits ({changed})"
    );
}

#[test]
fn peft_adapter_merged_matches_unmerged_and_peft() {
    check_peft_fixture("peft-adapter");
}

#[test]
fn rslora_adapter_merged_matches_unmerged_and_peft() {
    check_peft_fixture("peft-adapter-rslora");
}

/// Merged weights are `W + s·B·A` in the `[out, in]` layout, rounded once from f64, and every
/// other tensor is copied bit for bit; a tied head is not written.
#[test]
fn merged_tensors_are_exact() {
    let device = Device::flex();
    let base_dir = fixture("tiny-llama");
    let adapter_dir = fixture("peft-adapter-rslora");
    let base = load_hf_model(&base_dir, &device, DType::F32).unwrap();
    let adapters = peft::load(&adapter_dir, base.config(), &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    merge_weights(&base, &adapters, &out).unwrap();

    let want = read_tensors(&base_dir.join("model.safetensors"));
    let got = read_tensors(&out.join("model.safetensors"));
    let peft = read_tensors(&adapter_dir.join("adapter_model.safetensors"));
    let mut names: Vec<_> = got.keys().cloned().collect();
    names.sort();
    let mut want_names: Vec<_> = want.keys().cloned().collect();
    want_names.sort();
    assert_eq!(names, want_names);
    assert!(!got.contains_key("lm_head.weight"));

    let c = &adapters.config;
    let scale = c.alpha as f64 / (c.r as f64).sqrt();
    let mut folded = 0;
    for (name, (shape, w)) in &want {
        let (got_shape, merged) = &got[name];
        assert_eq!(got_shape, shape, "{name}");
        let lora = name
            .strip_suffix(".weight")
            .map(|stem| format!("base_model.model.{stem}"))
            .and_then(|stem| {
                Some((
                    peft.get(&format!("{stem}.lora_A.weight"))?,
                    &peft[&format!("{stem}.lora_B.weight")],
                ))
            });
        let Some(((_, a), (_, b))) = lora else {
            assert!(merged == w, "{name} changed");
            continue;
        };
        let (d_out, d_in) = (shape[0], shape[1]);
        for o in 0..d_out {
            for i in 0..d_in {
                let mut acc = 0f64;
                for k in 0..c.r {
                    acc += a[k * d_in + i] as f64 * b[o * c.r + k] as f64;
                }
                let exact = (w[o * d_in + i] as f64 + scale * acc) as f32;
                assert_eq!(merged[o * d_in + i], exact, "{name}[{o}, {i}]");
            }
        }
        folded += 1;
    }
    assert_eq!(
        folded,
        2 * base.config().num_layers,
        "q_proj and v_proj of every layer"
    );
}

fn rng_tensor(rng: &mut StdRng, shape: [usize; 2], bound: f32, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// PEFT's initialisation with `B` drawn too, so the adapter changes the model.
fn random_adapters(config: &LoraConfig, model: &ModelConfig, device: &Device) -> Adapters {
    let mut rng = StdRng::seed_from_u64(17);
    Adapters::init(config, model, 7, device)
        .unwrap()
        .map(|_, _, is_b, t| {
            if is_b {
                rng_tensor(&mut rng, t.dims(), 0.05, device)
            } else {
                t
            }
        })
}

/// Qwen2: q/k/v biases and an untied head survive the merge.
#[test]
fn qwen2_merged_matches_unmerged() {
    let device = Device::flex();
    let base = load_hf_model(&fixture("tiny-qwen2"), &device, DType::F32).unwrap();
    assert!(base.lm_head.is_some() && base.config().attention_bias);
    let config = LoraConfig {
        r: 4,
        alpha: 16.0,
        targets: vec![Target::Q, Target::K, Target::O, Target::Down],
        ..LoraConfig::default()
    };
    let adapters = random_adapters(&config, base.config(), &device);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qwen2");
    merge_weights(&base, &adapters, &out).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(json["tie_word_embeddings"], false);
    let merged = load_hf_model(&out, &device, DType::F32).unwrap();
    assert_eq!(merged.config(), base.config());
    let ids: Vec<u32> = (0..10).map(|i| (i * 37 + 5) % 256).collect();
    let unmerged = logits(&base, &ids, Some(&adapters));
    let err = rel_err(&logits(&merged, &ids, None), &unmerged);
    assert!(err < TOL, "merged vs unmerged logits rel err {err}");
    let changed = rel_err(&logits(&base, &ids, None), &unmerged);
    assert!(
        changed > 0.01,
        "the adapter barely changes the logits ({changed})"
    );
}

/// Qwen3 (q/k norms), Mistral (window), Gemma 2 (soft caps) and Gemma 3 (four norms per block,
/// local and global RoPE): every norm survives the merge, the config round-trips, and the merged
/// model gives the unmerged adapter's logits over a sequence longer than the windows. With
/// `PERSONA_TRAIN_KEEP_MERGE` set, each directory is kept with `forward.safetensors` (input ids
/// and the unmerged logits) for `tests/fixtures/check_merge_transformers.py`.
#[test]
fn every_family_merged_matches_unmerged() {
    let device = Device::flex();
    for name in ["tiny-qwen3", "tiny-mistral", "tiny-gemma2", "tiny-gemma3"] {
        let base = load_hf_model(&fixture(name), &device, DType::F32).unwrap();
        let config = LoraConfig {
            r: 4,
            alpha: 16.0,
            ..LoraConfig::default()
        };
        let adapters = random_adapters(&config, base.config(), &device);
        let tmp = tempfile::tempdir().unwrap();
        let out = out_dir(tmp.path(), &format!("{name}+random"));
        merge_weights(&base, &adapters, &out).unwrap();
        let ours = read_tensors(&out.join("model.safetensors"));
        let stored = read_tensors(&fixture(name).join("model.safetensors"));
        let names = |t: &HashMap<String, _>| t.keys().cloned().collect::<BTreeSet<String>>();
        assert_eq!(names(&ours), names(&stored), "{name}: merged tensor names");
        for (key, tensor) in &ours {
            if !key.contains("_proj.") {
                assert_eq!(tensor, &stored[key], "{name}: {key} is not copied exactly");
            }
        }
        let merged = load_hf_model(&out, &device, DType::F32).unwrap();
        assert_eq!(merged.config(), base.config(), "{name}: config round trip");
        let ids: Vec<u32> = (0..14).map(|i| (i * 37 + 5) % 128).collect();
        let unmerged = logits(&base, &ids, Some(&adapters));
        let err = rel_err(&logits(&merged, &ids, None), &unmerged);
        eprintln!("{name}: merged vs unmerged rel err {err:.2e}");
        assert!(err < TOL, "{name}: merged vs unmerged logits rel err {err}");
        let changed = rel_err(&logits(&base, &ids, None), &unmerged);
        assert!(
            changed > 0.01,
            "{name}: the adapter barely changes the logits ({changed})"
        );
        if std::env::var_os("PERSONA_TRAIN_KEEP_MERGE").is_some() {
            let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
            let vocab = base.config().vocab_size;
            persona_train::tensor_file::write(
                &out.join("forward.safetensors"),
                &[
                    ("input_ids", Values::I64(&ids), vec![ids.len()]),
                    ("logits", Values::F32(&unmerged), vec![ids.len(), vocab]),
                ],
                None,
            )
            .unwrap();
        }
    }
}

/// A Qwen2 without q/k/v biases (possible from GGUF) is written with zero biases, since
/// transformers' Qwen2 always has them; the logits stay the same.
#[test]
fn qwen2_without_biases_gets_zero_biases() {
    let device = Device::flex();
    let dir = fixture("tiny-llama");
    let mut config = ModelConfig::from_hf_config(&dir.join("config.json")).unwrap();
    config.architecture = persona_train::model::Architecture::Qwen2;
    config.attention_bias = false;
    let params = SafetensorsParams::open_dir(&dir).unwrap();
    let base = CausalLm::load(&config, &params, &device, DType::F32).unwrap();
    let adapters = peft::load(&fixture("peft-adapter"), &config, &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = out_dir(tmp.path(), "qwen2-without-biases+peft-adapter");
    merge_weights(&base, &adapters, &out).unwrap();
    let tensors = read_tensors(&out.join("model.safetensors"));
    for t in ["q", "k", "v"] {
        let (_, bias) = &tensors[&format!("model.layers.1.self_attn.{t}_proj.bias")];
        assert!(bias.iter().all(|&b| b == 0.0));
    }
    assert!(!tensors.contains_key("model.layers.1.self_attn.o_proj.bias"));
    let merged = load_hf_model(&out, &device, DType::F32).unwrap();
    assert!(merged.config().attention_bias);
    let ids = golden_ids("peft-adapter");
    let err = rel_err(
        &logits(&merged, &ids, None),
        &logits(&base, &ids, Some(&adapters)),
    );
    assert!(err < TOL, "merged vs unmerged logits rel err {err}");
}

/// llama.cpp's converter: `rope_freqs.weight` for a Llama 3 scaling.
fn freq_factors(theta: f32, head_dim: usize, s: &Llama3RopeScaling) -> Vec<f32> {
    let old = s.original_max_position_embeddings as f64;
    let (l, h, factor) = (
        s.low_freq_factor as f64,
        s.high_freq_factor as f64,
        s.factor as f64,
    );
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            let f = if wavelen < old / h {
                1.0
            } else if wavelen > old / l {
                factor
            } else {
                let smooth = (old / wavelen - l) / (h - l);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

fn llama3_of(json: &serde_json::Value) -> Llama3RopeScaling {
    match ModelConfig::from_hf_json(&json.to_string())
        .unwrap()
        .rope_scaling
    {
        Some(RopeScaling::Llama3(s)) => s,
        other => panic!("rope_scaling read back as {other:?}"),
    }
}

#[test]
fn gguf_freq_factors_become_llama3_rope_scaling() {
    let mut c = ModelConfig::from_hf_config(&fixture("tiny-llama/config.json")).unwrap();
    let llama31 = Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    (c.head_dim, c.rope_theta) = (128, 500000.0);
    c.rope_scaling = Some(RopeScaling::FreqFactors(freq_factors(
        500000.0, 128, &llama31,
    )));
    let json = c.to_hf_json().unwrap();
    assert_eq!(
        json["rope_scaling"],
        serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    );
    assert_eq!(json["rope_theta"], serde_json::json!(500000.0));

    // With few frequencies (none or one in the smoothing band) the parameters are not unique;
    // any scaling that gives the same factors will do.
    for old in [20, 32, 40, 100, 1000] {
        let s = Llama3RopeScaling {
            original_max_position_embeddings: old,
            ..llama31
        };
        let factors = freq_factors(10000.0, 16, &s);
        c.head_dim = 16;
        c.rope_theta = 10000.0;
        c.rope_scaling = Some(RopeScaling::FreqFactors(factors.clone()));
        let derived = llama3_of(&c.to_hf_json().unwrap());
        assert_eq!(
            freq_factors(10000.0, 16, &derived),
            factors,
            "old {old}: {derived:?}"
        );
    }

    c.rope_scaling = Some(RopeScaling::FreqFactors(vec![1.0; 8]));
    assert_eq!(
        c.to_hf_json().unwrap()["rope_scaling"],
        serde_json::Value::Null
    );
    c.rope_scaling = Some(RopeScaling::FreqFactors(vec![
        1.0, 3.0, 2.0, 8.0, 8.0, 8.0, 8.0, 8.0,
    ]));
    let err = format!("{:#}", c.to_hf_json().unwrap_err());
    assert!(
        err.contains("rope_freqs.weight") && err.contains("no Llama 3 scaling"),
        "{err}"
    );
}

/// The tiny Llama built with GGUF-style frequency factors (its own Llama 3 scaling as
/// `rope_freqs.weight` would give it) merges to a directory with a `llama3` rope_scaling that
/// reproduces PEFT's logits; factors with no Llama 3 form stop the merge.
#[test]
fn freq_factor_model_merges_to_llama3_config() {
    let device = Device::flex();
    let dir = fixture("tiny-llama");
    let mut config = ModelConfig::from_hf_config(&dir.join("config.json")).unwrap();
    let Some(RopeScaling::Llama3(s)) = config.rope_scaling else {
        panic!("tiny-llama has llama3 rope scaling");
    };
    config.rope_scaling = Some(RopeScaling::FreqFactors(freq_factors(
        config.rope_theta,
        config.head_dim,
        &s,
    )));
    let params = SafetensorsParams::open_dir(&dir).unwrap();
    let base = CausalLm::load(&config, &params, &device, DType::F32).unwrap();
    let adapters = peft::load(&fixture("peft-adapter"), &config, &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = out_dir(tmp.path(), "freq-factors+peft-adapter");
    merge_weights(&base, &adapters, &out).unwrap();
    let merged = load_hf_model(&out, &device, DType::F32).unwrap();
    assert!(matches!(
        merged.config().rope_scaling,
        Some(RopeScaling::Llama3(_))
    ));
    let ids = golden_ids("peft-adapter");
    let g = read_golden(&fixture("peft-adapter/golden.safetensors"));
    let err = rel_err(&logits(&merged, &ids, None), &g.f32("logits").1);
    assert!(err < TOL, "merged vs PEFT logits rel err {err}");

    let mut bad = config.clone();
    let mut factors = freq_factors(config.rope_theta, config.head_dim, &s);
    factors.reverse();
    bad.rope_scaling = Some(RopeScaling::FreqFactors(factors));
    let base = CausalLm::load(&bad, &params, &device, DType::F32).unwrap();
    let out = tmp.path().join("bad");
    let err = format!("{:#}", merge_weights(&base, &adapters, &out).unwrap_err());
    assert!(err.contains("rope_freqs.weight"), "{err}");
    assert!(!out.exists() && !tmp.path().join(".bad.tmp").exists());
}

#[test]
fn refuses_to_overwrite_and_reads_base_model() {
    let device = Device::flex();
    let base = load_hf_model(&fixture("tiny-llama"), &device, DType::F32).unwrap();
    let adapters = peft::load(&fixture("peft-adapter"), base.config(), &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "x").unwrap();
    let err = format!(
        "{:#}",
        merge_weights(&base, &adapters, tmp.path()).unwrap_err()
    );
    assert!(err.contains("not an empty directory"), "{err}");
    assert!(tmp.path().join("keep.txt").exists());
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    merge_weights(&base, &adapters, &empty).unwrap();
    assert!(empty.join("model.safetensors").is_file() && empty.join("config.json").is_file());

    assert_eq!(
        adapter_base_model(&fixture("peft-adapter")).unwrap(),
        "tests/fixtures/tiny-llama"
    );
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        r#"{"base_model_name_or_path": null, "r": 4}"#,
    )
    .unwrap();
    let err = format!("{:#}", adapter_base_model(&adapter).unwrap_err());
    assert!(
        err.contains("adapter_config.json") && err.contains("base_model_name_or_path"),
        "{err}"
    );
}

/// The default model (SmolLM2 GGUF) with a random adapter, merged to a full Hugging Face
/// directory and loaded back from it: same logits as the adapter applied unmerged to the GGUF
/// model, same tokenizer, special tokens and chat template.
///
/// With `PERSONA_TRAIN_KEEP_MERGE=DIR` the adapter and the merged model are kept in
/// `DIR/adapter` and `DIR/merged` (for `tests/fixtures/check_merge_transformers.py`).
#[test]
fn smollm2_merged_directory_reloads() {
    let device = Device::flex();
    let files = persona_train::source::resolve_default().expect("fetching the default model");
    let m = loader::load(&files, &device, DType::F32).unwrap();
    let config = LoraConfig {
        r: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let adapters = random_adapters(&config, m.model.config(), &device);
    let tmp = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("PERSONA_TRAIN_KEEP_MERGE").map(std::path::PathBuf::from);
    let root = keep.as_deref().unwrap_or(tmp.path());
    let adapter_dir = root.join("adapter");
    peft::save(
        &adapters,
        &adapter_dir,
        persona_train::source::DEFAULT_MODEL,
    )
    .unwrap();
    assert_eq!(
        adapter_base_model(&adapter_dir).unwrap(),
        persona_train::source::DEFAULT_MODEL
    );
    let out = root.join("merged");
    if keep.is_some() && out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    merge(&m, &adapter_dir, &out).unwrap();
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let reloaded = loader::load(&ModelFiles::HfDir(out.clone()), &device, DType::F32).unwrap();
    // GGUF stores the epsilon as f32; config.json gets its shortest decimal (1e-5).
    let mut want_config = m.model.config().clone();
    want_config.rms_norm_eps = want_config.rms_norm_eps as f32 as f64;
    let mut got_config = reloaded.model.config().clone();
    got_config.rms_norm_eps = got_config.rms_norm_eps as f32 as f64;
    assert_eq!(got_config, want_config);

    let messages = [
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "What is the capital of France? Answer in one word."),
        ChatMessage::new("assistant", "Paris."),
    ];
    let want = m.tokenizer.encode_chat(&messages, false).unwrap();
    let got = reloaded.tokenizer.encode_chat(&messages, false).unwrap();
    assert_eq!(got.ids, want.ids, "chat token ids");
    assert_eq!(
        (got.response_start, got.response_end),
        (want.response_start, want.response_end)
    );
    let prompt = &messages[..2];
    assert_eq!(
        reloaded
            .tokenizer
            .apply_chat_template(prompt, true)
            .unwrap(),
        m.tokenizer.apply_chat_template(prompt, true).unwrap()
    );
    let text = "Hello world! Ünïcode, digits 12345 and  spaces.\n<|im_end|>";
    assert_eq!(
        reloaded.tokenizer.encode(text, true).unwrap(),
        m.tokenizer.encode(text, true).unwrap()
    );
    let t = (&reloaded.tokenizer, &m.tokenizer);
    assert_eq!(
        (t.0.bos_id(), t.0.eos_id(), t.0.pad_id(), t.0.stop_ids()),
        (t.1.bos_id(), t.1.eos_id(), t.1.pad_id(), t.1.stop_ids())
    );

    let ids = &want.ids[..want.ids.len().min(40)];
    let unmerged = logits(&m.model, ids, Some(&adapters));
    let err = rel_err(&logits(&reloaded.model, ids, None), &unmerged);
    let changed = rel_err(&logits(&m.model, ids, None), &unmerged);
    eprintln!(
        "smollm2: merged vs unmerged rel err {err:.2e}; adapter changes logits by {changed:.3}"
    );
    assert!(err < TOL, "merged vs unmerged logits rel err {err}");
    assert!(
        changed > 0.01,
        "the adapter barely changes the logits ({changed})"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["eos_token_id"], m.tokenizer.eos_id().unwrap());
    assert_eq!(json["rope_scaling"], serde_json::Value::Null);
}
