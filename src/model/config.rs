//! The architecture hyper-parameters of every supported family.
//!
//! One implementation runs them all. What a family fixes about its blocks (q/k norms, Gemma's
//! norm, embedding and MLP conventions) is its [`BlockStyle`], decided by the architecture
//! alone; the numbers a checkpoint chooses (sizes, q/k/v bias, tied head, which layers attend
//! within a sliding window, RoPE bases and scaling, attention scale, soft caps) are fields of
//! [`ModelConfig`]. Loaders fill it from `config.json` (see `hf_config`) or GGUF metadata.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    /// Llama with sliding-window attention.
    Mistral,
    Qwen2,
    /// Qwen2 without q/k/v bias, with q/k norms and a free head_dim.
    Qwen3,
    /// Gemma 2: Gemma's conventions, alternating local and global layers, soft-capping.
    Gemma2,
    /// Gemma 3 text models: Gemma 2 with q/k norms, no soft caps and local layers with their
    /// own RoPE base.
    Gemma3,
}

impl Architecture {
    pub const ALL: [Self; 6] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma2,
        Self::Gemma3,
    ];

    /// transformers' `model_type`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3_text",
        }
    }

    /// llama.cpp's `general.architecture`; `None` for Mistral, which GGUF files store as
    /// `llama` without its window.
    pub fn gguf_name(self) -> Option<&'static str> {
        match self {
            Self::Llama => Some("llama"),
            Self::Mistral => None,
            Self::Qwen2 => Some("qwen2"),
            Self::Qwen3 => Some("qwen3"),
            Self::Gemma2 => Some("gemma2"),
            Self::Gemma3 => Some("gemma3"),
        }
    }

    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.hf_name() == name)
    }

    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.gguf_name() == Some(name))
    }

    /// The supported `model_type` values, for error messages.
    pub fn supported_hf_names() -> String {
        Self::ALL.map(Self::hf_name).join(", ")
    }

    /// The supported `general.architecture` values, for error messages.
    pub fn supported_gguf_names() -> String {
        Self::ALL
            .into_iter()
            .filter_map(Self::gguf_name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The transformers class of the causal LM (`architectures` in `config.json`).
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Gemma2 => "Gemma2ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// What the family fixes about its blocks.
    pub fn style(self) -> BlockStyle {
        let gemma = matches!(self, Self::Gemma2 | Self::Gemma3);
        BlockStyle {
            qk_norm: matches!(self, Self::Qwen3 | Self::Gemma3),
            norm_plus_one: gemma,
            scaled_embeddings: gemma,
            sandwich_norms: gemma,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
        }
    }
}

/// What a family fixes about its blocks beyond their sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStyle {
    /// Per-head RMSNorm of queries and keys before RoPE (`self_attn.q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Norms compute `x·(1 + w)` in f32 (Gemma) rather than `x·w`.
    pub norm_plus_one: bool,
    /// Embeddings are multiplied by √hidden (Gemma).
    pub scaled_embeddings: bool,
    /// The attention and MLP outputs are normed before they join the residual stream (Gemma's
    /// `post_attention_layernorm` and `post_feedforward_layernorm`; its
    /// `pre_feedforward_layernorm` is then the MLP's input norm).
    pub sandwich_norms: bool,
    /// The gate's activation in the gated MLP.
    pub activation: Activation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (`silu`).
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// transformers' name (`hidden_act`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Silu => "silu",
            Self::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// Whether a block attends to every earlier token or only to the newest ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Global attention (`full_attention`).
    Full,
    /// Local attention within `sliding_window` (`sliding_attention`).
    Sliding,
}

impl LayerType {
    /// transformers' name in `layer_types`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Full => "full_attention",
            Self::Sliding => "sliding_attention",
        }
    }
}

/// How the rotary base frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Llama3(Llama3RopeScaling),
    /// Every frequency divided by `factor` (position interpolation; Gemma 3's global layers).
    Linear {
        factor: f32,
    },
    /// Per-frequency divisors, as GGUF files store Llama 3 scaling (`rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

/// Llama 3's frequency-dependent rescaling of the rotary base frequencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// RoPE base of global layers, and of local ones without their own.
    pub rope_theta: f32,
    /// Rescaling of the global layers' frequencies (and of local ones without their own base).
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2).
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
    /// One entry per block: global or local attention.
    pub layer_types: Vec<LayerType>,
    /// How many keys a local layer attends to, its own included (transformers'
    /// `sliding_window`: key `j` is visible from query `i` when `i - window < j ≤ i`). Set
    /// whenever a layer is local.
    pub sliding_window: Option<usize>,
    /// RoPE base of local layers when they have their own, never rescaled (Gemma 3's
    /// `rope_local_base_freq`); `None`: local layers rotate as global ones do.
    pub rope_local_theta: Option<f32>,
    /// Attention scores are scaled by `1/√query_pre_attn_scalar` (Gemma); `None`: by
    /// `1/√head_dim`.
    pub query_pre_attn_scalar: Option<f32>,
    /// Soft cap `c·tanh(s/c)` of the attention scores (Gemma 2).
    pub attn_logit_softcapping: Option<f32>,
    /// Soft cap of the output logits (Gemma 2).
    pub final_logit_softcapping: Option<f32>,
}

/// More layers than any model has: a count above it is a corrupt file, refused before anything
/// is allocated per layer.
pub const MAX_LAYERS: usize = 1 << 16;

/// Refuses a layer count above [`MAX_LAYERS`].
pub fn check_layer_count(layers: usize) -> Result<()> {
    if layers > MAX_LAYERS {
        bail!("{layers} layers is not a plausible model (more than {MAX_LAYERS})");
    }
    Ok(())
}

impl ModelConfig {
    /// What the family fixes about its blocks.
    pub fn style(&self) -> BlockStyle {
        self.architecture.style()
    }

    /// The window of block `layer`: `None` for a global layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.layer_types.get(layer) {
            Some(LayerType::Sliding) => self.sliding_window,
            _ => None,
        }
    }

    /// Checks the invariants the forward pass relies on, so a bad checkpoint fails at load.
    pub fn validate(&self) -> Result<()> {
        let mut problems = self.size_problems();
        let positive = |name: &str, v: Option<f32>, problems: &mut Vec<String>| {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                problems.push(format!("{name} ({v}) must be a positive number"));
            }
        };
        positive("rope_theta", Some(self.rope_theta), &mut problems);
        positive("rope_local_base_freq", self.rope_local_theta, &mut problems);
        positive(
            "query_pre_attn_scalar",
            self.query_pre_attn_scalar,
            &mut problems,
        );
        positive(
            "attn_logit_softcapping",
            self.attn_logit_softcapping,
            &mut problems,
        );
        positive(
            "final_logit_softcapping",
            self.final_logit_softcapping,
            &mut problems,
        );
        // eps ≤ 0 divides by zero on an all-zero row (padding, a dead channel): NaN downstream.
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            problems.push(format!(
                "rms_norm_eps ({}) must be a positive number",
                self.rms_norm_eps
            ));
        }
        problems.extend(self.rope_scaling_problem());
        problems.extend(self.layer_type_problems());
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }

    fn size_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if self.num_kv_heads > 0 && !self.num_heads.is_multiple_of(self.num_kv_heads) {
            problems.push(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            problems.push(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        problems
    }

    fn rope_scaling_problem(&self) -> Option<String> {
        match &self.rope_scaling {
            Some(RopeScaling::FreqFactors(f)) if f.len() != self.head_dim / 2 => Some(format!(
                "rope frequency factors: {} values for head_dim {}",
                f.len(),
                self.head_dim
            )),
            Some(RopeScaling::Linear { factor }) if !(factor.is_finite() && *factor > 0.0) => Some(
                format!("rope_scaling.factor ({factor}) must be a positive number"),
            ),
            _ => None,
        }
    }

    fn layer_type_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.layer_types.len() != self.num_layers {
            problems.push(format!(
                "layer_types has {} entries for {} layers",
                self.layer_types.len(),
                self.num_layers
            ));
        }
        let local = self.layer_types.contains(&LayerType::Sliding);
        match self.sliding_window {
            Some(0) => problems.push("sliding_window must be positive".into()),
            None if local => problems
                .push("sliding_window is missing, but some layers are sliding_attention".into()),
            _ => {}
        }
        problems
    }
}
