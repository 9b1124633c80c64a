//! GGUF checkpoints: llama.cpp's tensor names and metadata mapped onto the Hugging Face layout.

use crate::gguf::GgufFile;
use crate::model::{Architecture, ModelConfig, ParamSource, RopeScaling};
use anyhow::{bail, Context, Result};
use burn::tensor::TensorData;

pub fn config(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g.architecture()?;
    let architecture = Architecture::from_name(arch_name).with_context(|| {
        format!(
            "{}: general.architecture = {arch_name:?} is not supported (supported: llama, qwen2)",
            g.path().display()
        )
    })?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let num_heads = g.get_u32(&key("attention.head_count"))? as usize;
    let hidden_size = g.get_u32(&key("embedding_length"))? as usize;
    let head_dim = match g.get(&key("rope.dimension_count")) {
        Some(_) => g.get_u32(&key("rope.dimension_count"))? as usize,
        None => hidden_size / num_heads.max(1),
    };
    let vocab_size = match g.get(&key("vocab_size")) {
        Some(_) => g.get_u32(&key("vocab_size"))? as usize,
        None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let rope_scaling = match g.tensor_info("rope_freqs.weight") {
        Some(_) => Some(RopeScaling::FreqFactors(
            g.tensor_f32("rope_freqs.weight")?.1,
        )),
        None => None,
    };
    let config = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: g.get_u32(&key("feed_forward_length"))? as usize,
        num_layers: g.get_u32(&key("block_count"))? as usize,
        num_heads,
        num_kv_heads: match g.get(&key("attention.head_count_kv")) {
            Some(_) => g.get_u32(&key("attention.head_count_kv"))? as usize,
            None => num_heads,
        },
        head_dim,
        rope_theta: match g.get(&key("rope.freq_base")) {
            Some(_) => g.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        },
        rope_scaling,
        rms_norm_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
        max_position_embeddings: match g.get(&key("context_length")) {
            Some(_) => g.get_u32(&key("context_length"))? as usize,
            None => 4096,
        },
    };
    config
        .validate()
        .with_context(|| format!("{}: inconsistent model metadata", g.path().display()))?;
    Ok(config)
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

/// The llama.cpp name of a Hugging Face parameter.
fn gguf_name(hf: &str) -> Result<String> {
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
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => bail!("no GGUF name for parameter {hf}"),
            };
            format!("blk.{layer}.{short}.{suffix}")
        }
    };
    Ok(mapped)
}

impl ParamSource for GgufParams<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        let gname = gguf_name(name)?;
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
            gguf_name("model.layers.3.self_attn.q_proj.bias").unwrap(),
            "blk.3.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.0.unknown.weight").is_err());
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
