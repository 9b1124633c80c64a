//! LoRA adapters in PEFT's format: `adapter_model.safetensors` (`lora_A.weight` `[r, in]`,
//! `lora_B.weight` `[out, r]`, the transposes of ours) and `adapter_config.json`, so adapters move
//! both ways between this tool and `PeftModel`.

use crate::model::lora::{host, host_tensor, Adapters, LoraConfig, LoraPair, Target};
use crate::model::{transpose, ModelConfig};
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::Device;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Tensors under PEFT's names and orientation: `key -> (shape, values)`.
pub type PeftTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes `adapters` into `dir` in PEFT's format, so `PeftModel.from_pretrained(base, dir)` loads
/// them.
pub fn save(adapters: &Adapters, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    for (i, t, pair) in adapters.iter() {
        let [d_in, r] = pair.a.dims();
        let d_out = pair.b.dims()[1];
        tensors.push((
            t.peft_key(i, "lora_A"),
            transpose(&host(&pair.a)?, d_in, r),
            vec![r, d_in],
        ));
        tensors.push((
            t.peft_key(i, "lora_B"),
            transpose(&host(&pair.b)?, r, d_out),
            vec![d_out, r],
        ));
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, v, s)| (k.as_str(), crate::tensor_file::Values::F32(v), s.clone()))
        .collect();
    crate::tensor_file::write(&dir.join("adapter_model.safetensors"), &views, None)?;
    let path = dir.join("adapter_config.json");
    crate::atomic::write_json(&path, &config_json(&adapters.config, base_model))
}

fn config_json(c: &LoraConfig, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": c.r,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "use_rslora": c.rslora,
        "target_modules": c.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
    })
}

/// Reads a PEFT LoRA adapter directory (ours or PEFT's) for a model with `model`'s shapes.
pub fn load(dir: &Path, model: &ModelConfig, device: &Device) -> Result<Adapters> {
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = peft_config(&text).with_context(|| format!("{}", config_path.display()))?;
    let weights_path = dir.join("adapter_model.safetensors");
    let mut tensors = read_tensors(&weights_path)?;
    let adapters = from_tensors(config, model, device, &mut tensors)
        .with_context(|| format!("{}", weights_path.display()))?;
    if let Some(extra) = tensors.keys().min() {
        bail!(
            "{}: tensor {extra} is not a LoRA weight of this model's {} layers and targets {:?} (modules_to_save, DoRA and other adapter kinds are not supported)",
            weights_path.display(),
            model.num_layers,
            adapters.config.targets
        );
    }
    Ok(adapters)
}

fn read_tensors(path: &Path) -> Result<PeftTensors> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let mut tensors = HashMap::new();
    for (key, view) in file.tensors() {
        let values = super::safetensors::view_to_f32(&view)
            .with_context(|| format!("{}: tensor {key}", path.display()))?;
        tensors.insert(key, (view.shape().to_vec(), values));
    }
    Ok(tensors)
}

/// Builds adapters from tensors under PEFT's names and orientation, removing the ones it uses
/// from `tensors`.
pub fn from_tensors(
    config: LoraConfig,
    model: &ModelConfig,
    device: &Device,
    tensors: &mut PeftTensors,
) -> Result<Adapters> {
    let r = config.r;
    Adapters::build(config, model, |i, t, [d_in, d_out]| {
        let mut take = |matrix: &str, shape: [usize; 2]| -> Result<Vec<f32>> {
            let key = t.peft_key(i, matrix);
            let (found, values) = tensors
                .remove(&key)
                .with_context(|| format!("missing tensor {key}"))?;
            ensure!(
                found == shape,
                "tensor {key} has shape {found:?}, expected {shape:?} (r = {r}, model {d_in}x{d_out})"
            );
            Ok(values)
        };
        let a = take("lora_A", [r, d_in])?;
        let b = take("lora_B", [d_out, r])?;
        Ok(LoraPair {
            a: host_tensor(transpose(&a, r, d_in), [d_in, r], device),
            b: host_tensor(transpose(&b, d_out, r), [r, d_out], device),
        })
    })
}

/// The `LoraConfig` of a PEFT `adapter_config.json`.
fn peft_config(text: &str) -> Result<LoraConfig> {
    #[derive(Deserialize)]
    struct Peft {
        peft_type: Option<String>,
        r: usize,
        lora_alpha: f32,
        #[serde(default)]
        lora_dropout: f32,
        #[serde(default)]
        use_rslora: bool,
        target_modules: TargetModules,
        #[serde(default)]
        use_dora: bool,
        #[serde(default)]
        layers_to_transform: Option<serde_json::Value>,
        #[serde(default)]
        rank_pattern: BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        alpha_pattern: BTreeMap<String, serde_json::Value>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TargetModules {
        List(Vec<String>),
        Pattern(String),
    }
    let p: Peft = serde_json::from_str(text).context("not a PEFT adapter config")?;
    if let Some(kind) = &p.peft_type {
        ensure!(
            kind == "LORA",
            "peft_type is {kind:?}; only LORA adapters are supported"
        );
    }
    ensure!(!p.use_dora, "use_dora: DoRA adapters are not supported");
    ensure!(
        p.rank_pattern.is_empty() && p.alpha_pattern.is_empty(),
        "rank_pattern/alpha_pattern: per-module ranks or alphas are not supported"
    );
    ensure!(
        p.layers_to_transform.as_ref().is_none_or(|v| v.is_null()),
        "layers_to_transform is not supported (adapters on every layer are expected)"
    );
    let names = match p.target_modules {
        TargetModules::List(names) => names,
        TargetModules::Pattern(p) => {
            bail!("target_modules is a pattern ({p:?}); a list of module names is expected")
        }
    };
    let mut targets = names
        .iter()
        .map(|n| {
            Target::from_module_name(n).with_context(|| {
                format!("target_modules: unknown module {n:?} (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    targets.sort();
    targets.dedup();
    let config = LoraConfig {
        r: p.r,
        alpha: p.lora_alpha,
        rslora: p.use_rslora,
        dropout: p.lora_dropout,
        targets,
    };
    config.validate()?;
    Ok(config)
}
