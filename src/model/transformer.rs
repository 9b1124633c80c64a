//! The decoder-only transformer shared by Llama and Qwen2, read top to bottom: MLP, attention,
//! decoder layer, model, causal-LM head. Field names equal the Hugging Face checkpoint keys
//! (`self_attn.q_proj`, `input_layernorm`, ...), so loaders need no rename table.

use super::activation;
use super::cache::KvCache;
use super::config::ModelConfig;
use super::lora::{Adapters, Target};
use super::masked_attention;
use super::norm;
use super::rope::{self, Rope};
use super::{transpose, Forward, ForwardInput, ForwardOutput, HeadWeight, LogitsFor, ParamSource};
use anyhow::{ensure, Context, Result};
use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{DType, Device, Tensor, TensorData};
use std::sync::Arc;

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// The adapters of one block, when the forward pass carries any.
type BlockAdapters<'a> = Option<(&'a Adapters, usize)>;

/// `x·W (+ b)`, plus the block's adapter on `target` when there is one.
///
/// Mixed precision as PEFT does it: the adapter runs in its own dtype (f32), the base output is
/// added to it in that dtype and the sum cast back to the base dtype.
fn project(linear: &Linear, x: Tensor<3>, lora: BlockAdapters, target: Target) -> Tensor<3> {
    let fused = lora.and_then(|(adapters, layer)| adapters.fused_linear(layer, target, linear, &x));
    if let Some(y) = fused {
        return y;
    }
    let delta = lora.and_then(|(adapters, layer)| adapters.delta(layer, target, x.clone()));
    let y = linear.forward(x);
    match delta {
        Some(d) if d.dtype() == y.dtype() => y + d,
        Some(d) => {
            let dtype = y.dtype();
            (y.cast(d.dtype()) + d).cast(dtype)
        }
        None => y,
    }
}

impl Mlp {
    /// `vb` is scoped to the block's `mlp`.
    fn load(vb: &Builder, c: &ModelConfig) -> Result<Self> {
        Ok(Self {
            gate_proj: vb.linear("gate_proj", c.hidden_size, c.intermediate_size, false)?,
            up_proj: vb.linear("up_proj", c.hidden_size, c.intermediate_size, false)?,
            down_proj: vb.linear("down_proj", c.intermediate_size, c.hidden_size, false)?,
        })
    }

    fn forward(&self, x: Tensor<3>, lora: BlockAdapters) -> Tensor<3> {
        let gate = project(&self.gate_proj, x.clone(), lora, Target::Gate);
        let up = project(&self.up_proj, x, lora, Target::Up);
        project(
            &self.down_proj,
            activation::swiglu(gate, up),
            lora,
            Target::Down,
        )
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

/// What every block of one pass shares, computed once in [`CausalLm::forward`].
///
/// # Shapes
/// - cos, sin: `[batch, 1, seq, head_dim]`, in the activations' dtype
/// - masked: `[batch, seq, cached + seq]`, true = masked out
struct PassTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
    masked: Arc<[bool]>,
}

/// What a pass carries for one block: the block's index, which is its slot in the KV cache and
/// in the adapters, and those two when the pass has them.
struct BlockPass<'a> {
    layer: usize,
    cache: Option<&'a mut KvCache>,
    adapters: Option<&'a Adapters>,
}

impl<'a> BlockPass<'a> {
    fn lora(&self) -> BlockAdapters<'a> {
        self.adapters.map(|a| (a, self.layer))
    }
}

impl Attention {
    /// `vb` is scoped to the block's `self_attn`.
    fn load(vb: &Builder, c: &ModelConfig) -> Result<Self> {
        let (h, kv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let bias = c.attention_bias;
        Ok(Self {
            q_proj: vb.linear("q_proj", c.hidden_size, h * d, bias)?,
            k_proj: vb.linear("k_proj", c.hidden_size, kv * d, bias)?,
            v_proj: vb.linear("v_proj", c.hidden_size, kv * d, bias)?,
            o_proj: vb.linear("o_proj", h * d, c.hidden_size, false)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    fn forward(&self, x: Tensor<3>, tables: &PassTables, block: &mut BlockPass) -> Tensor<3> {
        let lora = block.lora();
        let [b, t, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |y: Tensor<3>, heads: usize| y.reshape([b, t, heads, d]).swap_dims(1, 2);
        let q = project(&self.q_proj, x.clone(), lora, Target::Q);
        let k = project(&self.k_proj, x.clone(), lora, Target::K);
        let v = project(&self.v_proj, x, lora, Target::V);
        let q = rope::apply(split(q, h), &tables.cos, &tables.sin);
        let k = rope::apply(split(k, kvh), &tables.cos, &tables.sin);
        let v = split(v, kvh);
        let (k, v) = match block.cache.as_deref_mut() {
            Some(cache) => cache.append(block.layer, k, v),
            None => (k, v),
        };
        let out = masked_attention::attention(q, k, v, &tables.masked);
        let out = out.swap_dims(1, 2).reshape([b, t, h * d]);
        project(&self.o_proj, out, lora, Target::O)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    /// `vb` is scoped to the block (`model.layers.{i}`).
    fn load(vb: &Builder, c: &ModelConfig) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(&vb.pp("self_attn"), c)?,
            mlp: Mlp::load(&vb.pp("mlp"), c)?,
            input_layernorm: vb.rms_norm("input_layernorm", c)?,
            post_attention_layernorm: vb.rms_norm("post_attention_layernorm", c)?,
        })
    }

    /// Attention then MLP, each pre-normed and added to the residual stream.
    fn forward(&self, x: Tensor<3>, tables: &PassTables, mut block: BlockPass) -> Tensor<3> {
        let normed = norm::rms_norm(&self.input_layernorm, x.clone());
        let x = x + self.self_attn.forward(normed, tables, &mut block);
        let normed = norm::rms_norm(&self.post_attention_layernorm, x.clone());
        x + self.mlp.forward(normed, block.lora())
    }
}

#[derive(Module, Debug)]
pub struct Model {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

impl Model {
    /// `vb` is scoped to `model`.
    fn load(vb: &Builder, c: &ModelConfig) -> Result<Self> {
        let layers = (0..c.num_layers)
            .map(|i| DecoderLayer::load(&vb.pp(&format!("layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let embed = vb.tensor::<2>("embed_tokens.weight", [c.vocab_size, c.hidden_size])?;
        Ok(Self {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embed),
            },
            layers,
            norm: vb.rms_norm("norm", c)?,
        })
    }
}

/// The causal language model: the transformer plus the output head (tied to the embeddings
/// when the checkpoint has no `lm_head`).
#[derive(Module, Debug)]
pub struct CausalLm {
    pub model: Model,
    pub lm_head: Option<Linear>,
    #[module(skip)]
    config: ModelConfig,
    #[module(skip)]
    rope: Rope,
}

impl CausalLm {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }

    /// The dtype the base weights and activations are in.
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.weight.val().dtype()
    }

    /// Builds the model from named parameters in the Hugging Face layout, cast to `dtype`.
    pub fn load(
        config: &ModelConfig,
        params: &dyn ParamSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        let vb = Builder {
            params,
            device,
            dtype,
            prefix: String::new(),
        };
        let model = Model::load(&vb.pp("model"), config)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(vb.linear("lm_head", config.hidden_size, config.vocab_size, false)?)
        };
        Ok(Self {
            model,
            lm_head,
            config: config.clone(),
            rope: Rope::new(config),
        })
    }

    /// Runs the model over `input.input_ids` with what `pass` carries: appending to its cache,
    /// its LoRA adapters on the projections, its intervention on the residual stream.
    ///
    /// Hidden states follow transformers' `output_hidden_states`: index 0 is the embedding
    /// output, index N (1 ≤ N < layers) the output of block N-1 (after any intervention), and
    /// the last index is taken after the final norm.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]`
    /// - logits: `[batch, seq, vocab]` (`LogitsFor::All`) or `[batch, 1, vocab]` (`Last`)
    /// - hidden_states: `layers + 1` tensors of `[batch, seq, hidden]`
    pub fn forward(&self, input: &ForwardInput, pass: Forward) -> Result<ForwardOutput> {
        let Forward {
            mut cache,
            adapters,
            intervention,
            logits: logits_for,
            hidden_states: output_hidden_states,
        } = pass;
        // Burn's gather would panic on an id past the embedding's rows.
        ensure!(
            (input.max_id() as usize) < self.config.vocab_size,
            "token id {} is outside the model's vocabulary of {} tokens (a tokenizer or token file made for another model?)",
            input.max_id(),
            self.config.vocab_size
        );
        let device = self.device();
        let [b, t] = input.input_ids.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        // Angles in f32 on the host, then in the activations' dtype, as transformers does.
        let (cos, sin) = self.rope.tables(&input.positions, &device);
        let tables = PassTables {
            cos: cos.cast(self.dtype()),
            sin: sin.cast(self.dtype()),
            masked: attention_mask(input, past).into(),
        };

        let mut x = self.model.embed_tokens.forward(input.input_ids.clone());
        let mut hidden_states = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            if output_hidden_states {
                hidden_states.push(x.clone());
            }
            let block = BlockPass {
                layer: i,
                cache: cache.as_deref_mut(),
                adapters,
            };
            x = layer.forward(x, &tables, block);
            if let Some(iv) = intervention {
                x = iv.apply(i, x);
            }
        }
        let x = norm::rms_norm(&self.model.norm, x);
        if output_hidden_states {
            hidden_states.push(x.clone());
        }
        let x = match logits_for {
            LogitsFor::All => Some(x),
            LogitsFor::Last => Some(x.slice([0..b, t - 1..t])),
            LogitsFor::None => None,
        };
        Ok(ForwardOutput {
            logits: x.map(|x| self.head(x)),
            hidden_states,
        })
    }

    /// The output head over final-norm hidden states: `[batch, seq, hidden]` → logits.
    pub fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = x.dims();
        self.head_weight()
            .logits(x.reshape([b * t, h]))
            .reshape([b, t, self.config.vocab_size])
    }

    /// The output head's weight: `lm_head`, or the embeddings when they are tied.
    pub fn head_weight(&self) -> HeadWeight {
        match &self.lm_head {
            Some(head) => HeadWeight::Linear(head.weight.val()),
            None => HeadWeight::Tied(self.model.embed_tokens.weight.val()),
        }
    }

    /// Summed next-token loss of `targets` at final-norm hidden `rows` (`[n, hidden]`), see
    /// [`head_loss::nll_sum`](super::head_loss::nll_sum).
    pub fn nll_sum(&self, rows: Tensor<2>, targets: &[u32]) -> Tensor<1> {
        super::head_loss::nll_sum(rows, &self.head_weight(), targets)
    }
}

/// Causal + padding mask, true where attention is forbidden, `[batch, seq, cached + seq]`. A
/// query may always see itself so that no row is fully masked: fully masked rows give NaN in
/// softmax, which then leaks through the padded keys of later layers.
fn attention_mask(input: &ForwardInput, past: usize) -> Vec<bool> {
    let [b, t] = input.input_ids.dims();
    let total = past + t;
    let mut data = Vec::with_capacity(b * t * total);
    for row in 0..b {
        let keep = input.key_mask.as_ref().map(|m| &m[row]);
        for i in 0..t {
            let q = past + i;
            for j in 0..total {
                let visible = j == q || (j < q && keep.is_none_or(|k| k[j]));
                data.push(!visible);
            }
        }
    }
    data
}

/// Reads parameters by their checkpoint names, scoped like candle's `VarBuilder`: a part of the
/// model loads its own fields by their short names (`q_proj`) from a builder `pp`'d to its place
/// (`model.layers.3.self_attn`), so no part spells out the full path.
struct Builder<'a> {
    params: &'a dyn ParamSource,
    device: &'a Device,
    dtype: DType,
    prefix: String,
}

impl<'a> Builder<'a> {
    /// The builder of the part named `name` below this one.
    fn pp(&self, name: &str) -> Builder<'a> {
        Builder {
            params: self.params,
            device: self.device,
            dtype: self.dtype,
            prefix: self.path(name),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn data(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        let name = self.path(name);
        let data = self.params.get(&name, shape)?;
        let found = data.shape().to_vec();
        anyhow::ensure!(
            found == shape,
            "tensor {name}: shape {found:?} does not match the expected {shape:?}"
        );
        Ok(data)
    }

    fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        Ok(Tensor::<D>::from_data(self.data(name, &shape)?, self.device).cast(self.dtype))
    }

    /// burn's `Linear` stores `[in, out]`; checkpoints store `[out, in]`. The transpose is done on
    /// the host so the weight is contiguous: a transposed view is re-copied by every matmul.
    fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let rows: Vec<f32> = self
            .data(&format!("{name}.weight"), &[d_out, d_in])?
            .convert::<f32>()
            .try_into_vec()?;
        let weight = Tensor::<2>::from_data(
            TensorData::new(transpose(&rows, d_out, d_in), [d_in, d_out]),
            self.device,
        )
        .cast(self.dtype);
        let bias = if bias {
            Some(Param::from_tensor(
                self.tensor::<1>(&format!("{name}.bias"), [d_out])?,
            ))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    fn rms_norm(&self, name: &str, c: &ModelConfig) -> Result<RmsNorm> {
        let gamma = self
            .tensor::<1>(&format!("{name}.weight"), [c.hidden_size])
            .with_context(|| format!("loading norm {}", self.path(name)))?;
        Ok(RmsNorm {
            gamma: Param::from_tensor(gamma),
            epsilon: c.rms_norm_eps,
        })
    }
}
