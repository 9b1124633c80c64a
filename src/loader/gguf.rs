//! GGUF checkpoints: llama.cpp's tensor names and metadata mapped onto the Hugging Face layout,
//! as transformers' GGUF loader maps them.

use crate::gguf::{GgufFile, Value};
use crate::model::config::check_layer_count;
use crate::model::{Architecture, LayerType, ModelConfig, ParamSource, RopeScaling};
use anyhow::{bail, Context, Result};
use burn::tensor::TensorData;

pub fn config(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g.architecture()?;
    let architecture = Architecture::from_gguf_name(arch_name).with_context(|| {
        format!(
            "{}: general.architecture = {arch_name:?} is not supported (supported: {})",
            g.path().display(),
            Architecture::supported_gguf_names()
        )
    })?;
    let meta = Meta { g, arch: arch_name };
    let num_heads = meta.u32("attention.head_count")?;
    let hidden_size = meta.u32("embedding_length")?;
    let num_layers = meta.u32("block_count")?;
    check_layer_count(num_layers)
        .with_context(|| format!("{}: {arch_name}.block_count", g.path().display()))?;
    let head_dim = match meta.opt_u32("attention.key_length")? {
        Some(d) => d,
        None => meta
            .opt_u32("rope.dimension_count")?
            .unwrap_or(hidden_size / num_heads.max(1)),
    };
    let vocab_size = match meta.opt_u32("vocab_size")? {
        Some(v) => v,
        None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let windows = meta.windows(architecture, num_layers)?;
    let config = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: meta.u32("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads: meta
            .opt_u32("attention.head_count_kv")?
            .unwrap_or(num_heads),
        head_dim,
        rope_theta: meta.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling: meta.rope_scaling()?,
        rms_norm_eps: meta.f32("attention.layer_norm_rms_epsilon")? as f64,
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
        max_position_embeddings: meta.opt_u32("context_length")?.unwrap_or(4096),
        layer_types: windows.layer_types,
        sliding_window: windows.sliding_window,
        rope_local_theta: windows.rope_local_theta,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
    };
    let config = meta.gemma_values(config)?;
    config
        .validate()
        .with_context(|| format!("{}: inconsistent model metadata", g.path().display()))?;
    Ok(config)
}

/// The `{arch}.*` metadata of a model file.
struct Meta<'a> {
    g: &'a GgufFile,
    arch: &'a str,
}

/// Which layers are local, their window and their RoPE base.
struct Windows {
    layer_types: Vec<LayerType>,
    sliding_window: Option<usize>,
    rope_local_theta: Option<f32>,
}

/// Gemma's window when the file has none (transformers' default).
const GEMMA_WINDOW: usize = 4096;

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn u32(&self, k: &str) -> Result<usize> {
        Ok(self.g.get_u32(&self.key(k))? as usize)
    }

    fn f32(&self, k: &str) -> Result<f32> {
        self.g.get_f32(&self.key(k))
    }

    fn opt_u32(&self, k: &str) -> Result<Option<usize>> {
        self.g.get(&self.key(k)).map(|_| self.u32(k)).transpose()
    }

    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        self.g.get(&self.key(k)).map(|_| self.f32(k)).transpose()
    }

    /// Llama 3's per-frequency factors (`rope_freqs.weight`), or llama.cpp's
    /// `rope.scaling.type` (Gemma 3's global layers: linear, factor 8 on 4B and larger).
    fn rope_scaling(&self) -> Result<Option<RopeScaling>> {
        if self.g.tensor_info("rope_freqs.weight").is_some() {
            let factors = self.g.tensor_f32("rope_freqs.weight")?.1;
            return Ok(Some(RopeScaling::FreqFactors(factors)));
        }
        let key = self.key("rope.scaling.type");
        match self.g.get(&key).map(|_| self.g.get_str(&key)).transpose()? {
            None | Some("none") => Ok(None),
            Some("linear") => Ok(Some(RopeScaling::Linear {
                factor: self.f32("rope.scaling.factor")?,
            })),
            Some(other) => bail!(
                "{}: {key} = {other:?} is not supported (supported: none, linear)",
                self.g.path().display()
            ),
        }
    }

    /// Gemma's local layers: Gemma 2 alternates local and global layers, Gemma 3 has five local
    /// layers per global one (llama.cpp's and transformers' default, unless the file gives
    /// `attention.sliding_window_pattern`), with their own RoPE base (10,000 unless the file
    /// gives `rope.freq_base_swa`). The other families' files carry no window.
    fn windows(&self, arch: Architecture, layers: usize) -> Result<Windows> {
        let every = match arch {
            Architecture::Gemma2 => 2,
            Architecture::Gemma3 => 6,
            _ => {
                return Ok(Windows {
                    layer_types: vec![LayerType::Full; layers],
                    sliding_window: None,
                    rope_local_theta: None,
                })
            }
        };
        let rope_local_theta = match arch {
            Architecture::Gemma3 => Some(self.opt_f32("rope.freq_base_swa")?.unwrap_or(10_000.0)),
            _ => None,
        };
        Ok(Windows {
            layer_types: self.layer_types(every, layers)?,
            sliding_window: Some(
                self.opt_u32("attention.sliding_window")?
                    .unwrap_or(GEMMA_WINDOW),
            ),
            rope_local_theta,
        })
    }

    /// `attention.sliding_window_pattern`: every n-th layer global, or one flag per layer
    /// (true: local); `every` when the file has none.
    fn layer_types(&self, every: usize, layers: usize) -> Result<Vec<LayerType>> {
        let key = self.key("attention.sliding_window_pattern");
        let local = |sliding: bool| {
            if sliding {
                LayerType::Sliding
            } else {
                LayerType::Full
            }
        };
        match self.g.get(&key) {
            Some(Value::Array(flags)) => flags
                .iter()
                .map(|f| match f {
                    Value::Bool(b) => Ok(local(*b)),
                    other => bail!(
                        "{}: {key}: expected bools, found {}",
                        self.g.path().display(),
                        other.type_name()
                    ),
                })
                .collect(),
            Some(_) => {
                let every = self.u32("attention.sliding_window_pattern")?.max(1);
                Ok((0..layers).map(|i| local((i + 1) % every != 0)).collect())
            }
            None => Ok((0..layers).map(|i| local((i + 1) % every != 0)).collect()),
        }
    }

    /// Gemma's attention scale and soft caps. llama.cpp scales by `1/√head_dim`, except on the
    /// 27B models (Gemma 2: 46 layers, Gemma 3: 62), whose `query_pre_attn_scalar` is
    /// hidden / heads; transformers' Gemma configs agree on every released size.
    fn gemma_values(&self, mut c: ModelConfig) -> Result<ModelConfig> {
        let (big, attn_cap, final_cap) = match c.architecture {
            Architecture::Gemma2 => (46, Some(50.0), Some(30.0)),
            Architecture::Gemma3 => (62, None, None),
            _ => return Ok(c),
        };
        c.query_pre_attn_scalar = Some(if c.num_layers == big {
            (c.hidden_size / c.num_heads) as f32
        } else {
            c.head_dim as f32
        });
        c.attn_logit_softcapping = self.opt_f32("attn_logit_softcapping")?.or(attn_cap);
        c.final_logit_softcapping = self.opt_f32("final_logit_softcapping")?.or(final_cap);
        Ok(c)
    }
}

pub struct GgufParams<'a> {
    file: &'a GgufFile,
    config: ModelConfig,
}

impl<'a> GgufParams<'a> {
    pub fn new(file: &'a GgufFile, config: ModelConfig) -> Self {
        Self { file, config }
    }
}

/// The llama.cpp name of a Hugging Face parameter. Gemma's `post_attention_layernorm` norms the
/// attention output (`post_attention_norm`); Llama's is the MLP's input norm (`ffn_norm`).
fn gguf_name(hf: &str, sandwich_norms: bool) -> Result<String> {
    let mapped = match hf {
        "model.embed_tokens.weight" => "token_embd.weight".to_owned(),
        "model.norm.weight" => "output_norm.weight".to_owned(),
        "lm_head.weight" => "output.weight".to_owned(),
        _ => {
            let rest = hf
                .strip_prefix("model.layers.")
                .with_context(|| format!("no GGUF name for parameter {hf}"))?;
            let (layer, param) = rest
                .split_once('.')
                .with_context(|| format!("no GGUF name for parameter {hf}"))?;
            let (module, suffix) = param
                .rsplit_once('.')
                .with_context(|| format!("no GGUF name for parameter {hf}"))?;
            let short = match module {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" if sandwich_norms => "post_attention_norm",
                "post_attention_layernorm" => "ffn_norm",
                "pre_feedforward_layernorm" => "ffn_norm",
                "post_feedforward_layernorm" => "post_ffw_norm",
                _ => bail!("no GGUF name for parameter {hf}"),
            };
            format!("blk.{layer}.{short}.{suffix}")
        }
    };
    Ok(mapped)
}

impl ParamSource for GgufParams<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        let style = self.config.style();
        let gname = gguf_name(name, style.sandwich_norms)?;
        let path = self.file.path().display();
        anyhow::ensure!(
            self.file.tensor_info(&gname).is_some(),
            "{path}: tensor {gname} (for {name}) is missing"
        );
        let (found, mut values) = self.file.tensor_f32(&gname)?;
        anyhow::ensure!(
            found == shape,
            "{path}: tensor {gname} has shape {found:?}, the model metadata implies {shape:?}"
        );
        // llama.cpp's converter stores Gemma's norm weights as 1 + w (transformers subtracts
        // the 1 again); the model applies the 1 itself.
        if style.norm_plus_one && name.ends_with("norm.weight") {
            values.iter_mut().for_each(|v| *v -= 1.0);
        }
        // llama.cpp's converter interleaves the rotary halves of Llama's q/k rows; undo it so
        // the weights match the HF layout that `rotate_half` expects.
        if self.config.architecture == Architecture::Llama {
            if name.ends_with("self_attn.q_proj.weight") {
                values = unpermute_rows(&values, shape, self.config.num_heads);
            } else if name.ends_with("self_attn.k_proj.weight") {
                values = unpermute_rows(&values, shape, self.config.num_kv_heads);
            }
        }
        Ok(TensorData::new(values, found))
    }
}

/// transformers' `reverse_permute_weights`: rows `(head, i, s)` → `(head, s, i)` with `s ∈ {0,1}`.
fn unpermute_rows(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape[1]);
    let half = rows / heads / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                let src = (h * half + i) * 2 + s;
                let dst = (h * 2 + s) * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias", false).unwrap(),
            "blk.3.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight", false).unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight", true).unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.5.pre_feedforward_layernorm.weight", true).unwrap(),
            "blk.5.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.1.self_attn.k_norm.weight", true).unwrap(),
            "blk.1.attn_k_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight", false).unwrap(), "output.weight");
        assert!(gguf_name("model.layers.0.unknown.weight", false).is_err());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, cols).swapaxes(1, 2) — apply it, then undo it.
        let (heads, half, cols) = (2, 3, 2);
        let rows = heads * 2 * half;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..half {
                    let src = (h * 2 + s) * half + i;
                    let dst = (h * half + i) * 2 + s;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, &[rows, cols], heads), hf);
    }
}
