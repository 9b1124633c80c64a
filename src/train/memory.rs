//! A start-up estimate of training memory, printed before the first step, so a run that cannot
//! fit (a 7B model on one GPU, a long `max_seq_len` on a laptop) says so before it allocates.
//!
//! What a LoRA step keeps, in bytes:
//! - the frozen base weights, in the model's dtype;
//! - the adapters, their gradients and AdamW's two moments, all f32;
//! - the activations autodiff keeps for the backward pass: per token and block about
//!   `8·hidden + 4·intermediate` values (norm inputs, q/k/v and attention output, residuals; MLP
//!   gate, up, activation and product) plus `2·heads·seq` attention scores and probabilities, in
//!   the model's dtype;
//! - the output head's logits at target positions, f32, with their log-softmax and gradient.
//!
//! This is what the tensor-op path keeps (CUDA, CubeCL's CPU runtime), checked against the CPU
//! benchmark (SmolLM2, r = 16 on all projections, batch 4×256, every token a target) before the
//! flex backend had fused kernels: 2.9 GiB (3.1 GB) estimated, 3.47 GB peak RSS measured (the
//! rest is the allocator's slack, the tokenizer and the data). On flex the fused kernels keep
//! neither the logits nor attention probabilities, and the same benchmark peaks at 1.74 GB, so
//! there the estimate is an upper bound.

use crate::model::lora::Adapters;
use crate::model::ModelConfig;
use burn::tensor::DType;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of each part of a training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    pub weights: f64,
    pub adapters: f64,
    pub activations: f64,
    pub logits: f64,
}

impl MemoryEstimate {
    /// For micro-batches of `rows × seq` tokens of which `targets` are predicted.
    pub fn new(
        config: &ModelConfig,
        dtype: DType,
        adapters: &Adapters,
        rows: usize,
        seq: usize,
        targets: usize,
    ) -> Self {
        let bytes = dtype.size() as f64;
        let adapter_values: usize = adapters
            .iter()
            .map(|(_, _, p)| p.a.shape().num_elements() + p.b.shape().num_elements())
            .sum();
        let c = config;
        let per_token_block = 8 * c.hidden_size + 4 * c.intermediate_size + 2 * c.num_heads * seq;
        Self {
            weights: base_parameters(c) as f64 * bytes,
            adapters: adapter_values as f64 * 4.0 * 4.0,
            activations: (per_token_block * c.num_layers * rows * seq) as f64 * bytes,
            logits: (targets * c.vocab_size) as f64 * 4.0 * 3.0,
        }
    }

    pub fn total(&self) -> f64 {
        self.weights + self.adapters + self.activations + self.logits
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        format!(
            "memory estimate: {:.1} GiB (base weights {:.2} GiB, adapters with gradients and AdamW moments {:.0} MiB, activations {:.2} GiB, logits {:.2} GiB)",
            self.total() / GIB,
            self.weights / GIB,
            self.adapters / (1u64 << 20) as f64,
            self.activations / GIB,
            self.logits / GIB,
        )
    }
}

/// Parameters of the base model: embeddings, every block's projections and norms, the final
/// norm and an untied output head.
pub fn base_parameters(c: &ModelConfig) -> usize {
    let (h, q, kv) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let bias = if c.attention_bias { q + 2 * kv } else { 0 };
    let style = c.style();
    let qk_norms = if style.qk_norm { 2 * c.head_dim } else { 0 };
    let norms = if style.sandwich_norms { 4 * h } else { 2 * h };
    let block = h * q + 2 * h * kv + q * h + bias + 3 * h * c.intermediate_size + norms + qk_norms;
    let head = if c.tie_word_embeddings {
        0
    } else {
        c.vocab_size * h
    };
    c.vocab_size * h + c.num_layers * block + h + head
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Elements of every tensor in a checkpoint directory's safetensors files.
    fn stored_parameters(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("model") && name.ends_with(".safetensors")
            })
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                st.tensors()
                    .iter()
                    .map(|(_, v)| v.shape().iter().product::<usize>())
                    .sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn base_parameters_count_what_checkpoints_store() {
        // tiny-llama: tied head; tiny-qwen2: q/k/v bias, untied head, three shards; tiny-qwen3:
        // q/k norms; tiny-gemma3: q/k norms and four norms per block.
        for name in [
            "tiny-llama",
            "tiny-qwen2",
            "tiny-qwen3",
            "tiny-mistral",
            "tiny-gemma3",
        ] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name);
            let config = ModelConfig::from_hf_config(&dir.join("config.json")).unwrap();
            assert_eq!(base_parameters(&config), stored_parameters(&dir), "{name}");
        }
    }
}
