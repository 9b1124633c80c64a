//! Folding a LoRA adapter into the base weights: `W + s·A·B` for every adapted projection,
//! written with everything else as a Hugging Face model directory (f32 `model.safetensors`,
//! `config.json`, tokenizer files, `generation_config.json`) that transformers and
//! [`crate::loader`] load.
//!
//! The update is accumulated in f64 and rounded to f32 once, so the merged weight is the f32
//! nearest to the exact `W + s·A·B`. The directory is written under a temporary name beside
//! `out` and renamed into place, so a failed merge leaves no partial model behind.

use crate::loader::LoadedModel;
use crate::model::lora::{host, Adapters, Target};
use crate::model::norm::RmsNorm;
use crate::model::transformer::DecoderLayer;
use crate::model::transpose;
use crate::model::{Architecture, CausalLm, ModelConfig};
use anyhow::{bail, ensure, Context, Result};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Tensor;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The model an adapter was trained on: `base_model_name_or_path` of its `adapter_config.json`.
pub fn adapter_base_model(adapter_dir: &Path) -> Result<String> {
    let path = adapter_dir.join("adapter_config.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    match config.get("base_model_name_or_path") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(serde_json::Value::String(_)) | Some(serde_json::Value::Null) | None => bail!(
            "{}: base_model_name_or_path is missing or empty; name the base model explicitly (--model)",
            path.display()
        ),
        Some(other) => bail!(
            "{}: base_model_name_or_path is {other}, expected a string",
            path.display()
        ),
    }
}

/// Folds the PEFT adapter in `adapter_dir` into `m` and writes the whole Hugging Face model
/// directory `out`: weights and `config.json` (see [`merge_weights`]), `tokenizer.json`,
/// `tokenizer_config.json` and `generation_config.json`. `out` must not exist or be empty.
pub fn merge(m: &LoadedModel, adapter_dir: &Path, out: &Path) -> Result<()> {
    let adapters = crate::loader::peft::load(adapter_dir, m.model.config(), &m.model.device())?;
    let tokenizer = &m.tokenizer;
    let mut token_ids = serde_json::Map::new();
    for (field, id) in [
        ("bos_token_id", tokenizer.bos_id()),
        ("eos_token_id", tokenizer.eos_id()),
        ("pad_token_id", tokenizer.pad_id()),
    ] {
        token_ids.insert(field.into(), id.into());
    }
    write_dir(out, |dir| {
        write_weights_and_config(&m.model, &adapters, dir, &token_ids)?;
        tokenizer.save_hf(dir)?;
        // Generation stops at any end-of-turn token, as ours does (`Tokenizer::stop_ids`).
        let stops = tokenizer.stop_ids();
        let mut generation = token_ids.clone();
        generation.insert(
            "eos_token_id".into(),
            match stops {
                [] => serde_json::Value::Null,
                [one] => (*one).into(),
                many => many.into(),
            },
        );
        crate::atomic::write_json(
            &dir.join("generation_config.json"),
            &serde_json::Value::Object(generation),
        )
    })
}

/// Writes `model.safetensors` (f32, Hugging Face names and `[out, in]` layout, adapted
/// projections replaced by `W + s·A·B`, `lm_head` only when untied) and `config.json` into
/// `out`, which must not exist or be empty.
pub fn merge_weights(model: &CausalLm, adapters: &Adapters, out: &Path) -> Result<()> {
    write_dir(out, |dir| {
        write_weights_and_config(model, adapters, dir, &serde_json::Map::new())
    })
}

fn write_weights_and_config(
    model: &CausalLm,
    adapters: &Adapters,
    dir: &Path,
    extra_config: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let config = model.config();
    let mut json = config.to_hf_json()?;
    for (k, v) in extra_config {
        json[k] = v.clone();
    }
    check_adapters(model, adapters)?;
    let entries = weight_entries(model, adapters);
    write_safetensors(&dir.join("model.safetensors"), &entries)?;
    crate::atomic::write_json(&dir.join("config.json"), &json)
}

fn check_adapters(model: &CausalLm, adapters: &Adapters) -> Result<()> {
    let c = model.config();
    ensure!(
        adapters.num_layers() == c.num_layers,
        "the adapter has {} layers, the model {}",
        adapters.num_layers(),
        c.num_layers
    );
    ensure!(
        model.lm_head.is_none() == c.tie_word_embeddings,
        "the model's output head does not match tie_word_embeddings = {}",
        c.tie_word_embeddings
    );
    for (i, t, pair) in adapters.iter() {
        let [d_in, d_out] = t.shape(c);
        let r = adapters.config.r;
        ensure!(
            pair.a.dims() == [d_in, r] && pair.b.dims() == [r, d_out],
            "adapter on layer {i} {}: A is {:?} and B {:?}, expected [{d_in}, {r}] and [{r}, {d_out}]",
            t.module_name(),
            pair.a.dims(),
            pair.b.dims()
        );
    }
    Ok(())
}

/// One tensor of the output file: its name, shape and how to compute its values.
struct Entry<'a> {
    name: String,
    shape: Vec<usize>,
    values: Box<dyn Fn() -> Result<Vec<f32>> + 'a>,
}

impl<'a> Entry<'a> {
    fn new(name: String, shape: Vec<usize>, values: impl Fn() -> Result<Vec<f32>> + 'a) -> Self {
        Self {
            name,
            shape,
            values: Box::new(values),
        }
    }
}

/// Every tensor of the merged checkpoint, in transformers' order.
fn weight_entries<'a>(model: &'a CausalLm, adapters: &'a Adapters) -> Vec<Entry<'a>> {
    let c = model.config();
    let mut entries = Vec::new();
    let embed = &model.model.embed_tokens.weight;
    entries.push(Entry::new(
        "model.embed_tokens.weight".into(),
        vec![c.vocab_size, c.hidden_size],
        move || host(&embed.val()),
    ));
    for (i, layer) in model.model.layers.iter().enumerate() {
        entries.extend(layer_entries(c, layer, adapters, i));
    }
    entries.push(norm_entry("model.norm.weight".into(), &model.model.norm));
    if let Some(head) = &model.lm_head {
        entries.push(Entry::new(
            "lm_head.weight".into(),
            vec![c.vocab_size, c.hidden_size],
            move || {
                let [d_in, d_out] = head.weight.val().dims();
                Ok(transpose(&host(&head.weight.val())?, d_in, d_out))
            },
        ));
    }
    entries
}

/// The tensors of block `i`: its projections (adapters folded in), their biases and its norms.
fn layer_entries<'a>(
    c: &ModelConfig,
    layer: &'a DecoderLayer,
    adapters: &'a Adapters,
    i: usize,
) -> Vec<Entry<'a>> {
    let p = format!("model.layers.{i}");
    let attn = &layer.self_attn;
    let mlp = &layer.mlp;
    let projections = [
        (Target::Q, &attn.q_proj),
        (Target::K, &attn.k_proj),
        (Target::V, &attn.v_proj),
        (Target::O, &attn.o_proj),
        (Target::Gate, &mlp.gate_proj),
        (Target::Up, &mlp.up_proj),
        (Target::Down, &mlp.down_proj),
    ];
    let mut entries = Vec::new();
    for (t, linear) in projections {
        let module = match t {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        };
        let name = format!("{p}.{module}.{}", t.module_name());
        let [d_in, d_out] = t.shape(c);
        entries.push(Entry::new(
            format!("{name}.weight"),
            vec![d_out, d_in],
            move || merged_weight(linear, adapters, i, t),
        ));
        // transformers' Qwen2 always has q/k/v biases; one without them gets zeros.
        let qkv = matches!(t, Target::Q | Target::K | Target::V);
        let zero_bias = qkv && c.architecture == Architecture::Qwen2;
        match &linear.bias {
            Some(bias) => {
                entries.push(Entry::new(format!("{name}.bias"), vec![d_out], move || {
                    host1(bias)
                }))
            }
            None if zero_bias => {
                entries.push(Entry::new(format!("{name}.bias"), vec![d_out], move || {
                    Ok(vec![0.0; d_out])
                }))
            }
            None => {}
        }
    }
    let norms = [
        ("self_attn.q_norm", attn.q_norm.as_ref()),
        ("self_attn.k_norm", attn.k_norm.as_ref()),
        ("input_layernorm", Some(&layer.input_layernorm)),
        (
            "post_attention_layernorm",
            Some(&layer.post_attention_layernorm),
        ),
        (
            "pre_feedforward_layernorm",
            layer.pre_feedforward_layernorm.as_ref(),
        ),
        (
            "post_feedforward_layernorm",
            layer.post_feedforward_layernorm.as_ref(),
        ),
    ];
    for (name, norm) in norms {
        if let Some(norm) = norm {
            entries.push(norm_entry(format!("{p}.{name}.weight"), norm));
        }
    }
    entries
}

fn norm_entry(name: String, norm: &RmsNorm) -> Entry<'_> {
    let len = norm.weight.val().dims()[0];
    Entry::new(name, vec![len], move || host1(&norm.weight))
}

fn host1(p: &Param<Tensor<1>>) -> Result<Vec<f32>> {
    p.val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
}

/// The projection's weight in the Hugging Face layout `[out, in]`, with the adapter on
/// (`layer`, `target`) folded in when there is one.
fn merged_weight(
    linear: &Linear,
    adapters: &Adapters,
    layer: usize,
    target: Target,
) -> Result<Vec<f32>> {
    let w = linear.weight.val();
    let [d_in, d_out] = w.dims();
    let mut w = host(&w)?;
    if let Some(pair) = adapters.get(layer, target) {
        let c = &adapters.config;
        // PEFT's scaling, in f64: alpha / r, or alpha / √r with rsLoRA.
        let scale = if c.rslora {
            c.alpha as f64 / (c.r as f64).sqrt()
        } else {
            c.alpha as f64 / c.r as f64
        };
        fold(&mut w, d_in, d_out, &host(&pair.a)?, &host(&pair.b)?, scale);
    }
    Ok(transpose(&w, d_in, d_out))
}

/// `w += scale·a·b` for `w` `[d_in, d_out]`, `a` `[d_in, r]`, `b` `[r, d_out]` (row-major),
/// accumulated in f64 and rounded once.
fn fold(w: &mut [f32], d_in: usize, d_out: usize, a: &[f32], b: &[f32], scale: f64) {
    let r = a.len() / d_in.max(1);
    let mut acc = vec![0f64; d_out];
    for i in 0..d_in {
        acc.fill(0.0);
        for k in 0..r {
            let aik = a[i * r + k] as f64;
            if aik == 0.0 {
                continue;
            }
            for (acc, &bko) in acc.iter_mut().zip(&b[k * d_out..(k + 1) * d_out]) {
                *acc += aik * bko as f64;
            }
        }
        for (w, acc) in w[i * d_out..(i + 1) * d_out].iter_mut().zip(&acc) {
            *w = (*w as f64 + scale * acc) as f32;
        }
    }
}

/// Writes f32 tensors as one safetensors file, computing each tensor only when it is written,
/// so the merge never holds more than one extra tensor (the model is not copied whole).
fn write_safetensors(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for e in entries {
        let bytes = e.shape.iter().product::<usize>() * 4;
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": e.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_string(&header)?;
    // The data that follows starts 8-byte aligned; the format pads the header with spaces.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    };
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    for e in entries {
        let values = (e.values)().with_context(|| format!("computing {}", e.name))?;
        ensure!(
            values.len() == e.shape.iter().product::<usize>(),
            "tensor {}: {} values for shape {:?}",
            e.name,
            values.len(),
            e.shape
        );
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// Fills a hidden temporary directory beside `out` with `fill`, then renames it to `out`.
/// An existing `out` must be an empty directory: a merge never overwrites a model.
fn write_dir(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() {
        let empty = out.is_dir()
            && fs::read_dir(out)
                .with_context(|| format!("cannot read {}", out.display()))?
                .next()
                .is_none();
        ensure!(
            empty,
            "{} already exists and is not an empty directory; remove it or choose another output",
            out.display()
        );
    }
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp", name.to_string_lossy()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        fs::remove_dir(out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    fs::rename(&tmp, out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))
}
