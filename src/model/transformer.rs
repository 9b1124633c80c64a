//! The decoder-only transformer shared by every family, read top to bottom: MLP, attention,
//! decoder layer, model, causal-LM head. Field names equal the Hugging Face checkpoint keys
//! (`self_attn.q_proj`, `input_layernorm`, ...), so loaders need no rename table.
//!
//! The families differ only by what [`ModelConfig`] says: q/k norms, Gemma's norms around
//! attention and MLP, the MLP's activation, the embedding scale, which layers attend within a
//! sliding window and with which RoPE, the attention scale and soft caps.

use super::activation;
use super::cache::KvCache;
use super::config::{Activation, LayerType, ModelConfig};
use super::head_loss;
use super::lora::{Adapters, Target};
use super::masked_attention;
use super::norm::RmsNorm;
use super::rope::{self, Rope};
use super::{transpose, Forward, ForwardInput, ForwardOutput, HeadWeight, LogitsFor, ParamSource};
use anyhow::{ensure, Context, Result};
use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::{DType, Device, Tensor, TensorData};
use std::sync::Arc;

/// The gated MLP: `down(act(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    #[module(skip)]
    activation: Activation,
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
    let y = super::linear::forward(linear, x);
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
            activation: c.style().activation,
        })
    }

    fn forward(&self, x: Tensor<3>, lora: BlockAdapters) -> Tensor<3> {
        let gate = project(&self.gate_proj, x.clone(), lora, Target::Gate);
        let up = project(&self.up_proj, x, lora, Target::Up);
        let hidden = match self.activation {
            Activation::Silu => activation::swiglu(gate, up),
            Activation::GeluTanh => gelu_approximate(gate) * up,
        };
        project(&self.down_proj, hidden, lora, Target::Down)
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Per-head norms of queries and keys before RoPE (Qwen 3, Gemma 3).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
    /// Global, or local within the sliding window: which of the pass's tables it uses.
    #[module(skip)]
    kind: LayerType,
    /// Multiplies the attention scores (`1/√head_dim`, Gemma's `1/√query_pre_attn_scalar`).
    #[module(skip)]
    scale: f64,
    #[module(skip)]
    softcap: Option<f64>,
}

/// What every block of one kind (global or local) shares in one pass, computed once in
/// [`CausalLm::forward`].
///
/// # Shapes
/// - cos, sin: `[batch, 1, seq, head_dim]`, in the activations' dtype
/// - masked: `[batch, seq, held + seq]` flattened, true = masked out, where `held` is how many
///   cached columns layers of this kind hold
struct KindTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
    masked: Arc<[bool]>,
}

/// The tables of the kinds of layer the model has.
struct PassTables {
    full: Option<KindTables>,
    sliding: Option<KindTables>,
}

impl PassTables {
    fn of(&self, kind: LayerType) -> &KindTables {
        let tables = match kind {
            LayerType::Full => &self.full,
            LayerType::Sliding => &self.sliding,
        };
        tables
            .as_ref()
            .expect("tables are made for every kind of layer the model has")
    }
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
    /// `vb` is scoped to the block's `self_attn`, which is block `layer`.
    fn load(vb: &Builder, c: &ModelConfig, layer: usize) -> Result<Self> {
        let (h, kv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let bias = c.attention_bias;
        let qk_norm = |name: &str| match c.style().qk_norm {
            true => vb.rms_norm(name, d, c).map(Some),
            false => Ok(None),
        };
        let scalar = c.query_pre_attn_scalar.map_or(d as f64, f64::from);
        Ok(Self {
            q_proj: vb.linear("q_proj", c.hidden_size, h * d, bias)?,
            k_proj: vb.linear("k_proj", c.hidden_size, kv * d, bias)?,
            v_proj: vb.linear("v_proj", c.hidden_size, kv * d, bias)?,
            o_proj: vb.linear("o_proj", h * d, c.hidden_size, false)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
            kind: c.layer_types[layer],
            scale: 1.0 / scalar.sqrt(),
            softcap: c.attn_logit_softcapping.map(f64::from),
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    fn forward(&self, x: Tensor<3>, tables: &PassTables, block: &mut BlockPass) -> Tensor<3> {
        let lora = block.lora();
        let tables = tables.of(self.kind);
        let [b, t, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |y: Tensor<3>, heads: usize, norm: &Option<RmsNorm>| {
            let y = y.reshape([b, t, heads, d]);
            let y = match norm {
                Some(norm) => norm.forward(y),
                None => y,
            };
            y.swap_dims(1, 2)
        };
        let q = project(&self.q_proj, x.clone(), lora, Target::Q);
        let k = project(&self.k_proj, x.clone(), lora, Target::K);
        let v = project(&self.v_proj, x, lora, Target::V);
        let q = rope::apply(split(q, h, &self.q_norm), &tables.cos, &tables.sin);
        let k = rope::apply(split(k, kvh, &self.k_norm), &tables.cos, &tables.sin);
        let v = split(v, kvh, &None);
        let (k, v) = match block.cache.as_deref_mut() {
            Some(cache) => cache.append(block.layer, k, v),
            None => (k, v),
        };
        let out = masked_attention::attention(q, k, v, &tables.masked, self.scale, self.softcap);
        let out = out.swap_dims(1, 2).reshape([b, t, h * d]);
        project(&self.o_proj, out, lora, Target::O)
    }
}

/// A block. Llama-like blocks norm the input of attention (`input_layernorm`) and of the MLP
/// (`post_attention_layernorm`). Gemma's also norm both outputs before they join the residual
/// stream: there `post_attention_layernorm` norms the attention output, and
/// `pre_feedforward_layernorm` and `post_feedforward_layernorm` surround the MLP.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
}

/// A block's norms by role: on the attention output (Gemma), on the MLP input, on the MLP
/// output (Gemma).
type BlockNorms<'a> = (Option<&'a RmsNorm>, &'a RmsNorm, Option<&'a RmsNorm>);

impl DecoderLayer {
    /// `vb` is scoped to the block (`model.layers.{layer}`).
    fn load(vb: &Builder, c: &ModelConfig, layer: usize) -> Result<Self> {
        let h = c.hidden_size;
        let sandwich = |name: &str| match c.style().sandwich_norms {
            true => vb.rms_norm(name, h, c).map(Some),
            false => Ok(None),
        };
        Ok(Self {
            self_attn: Attention::load(&vb.pp("self_attn"), c, layer)?,
            mlp: Mlp::load(&vb.pp("mlp"), c)?,
            input_layernorm: vb.rms_norm("input_layernorm", h, c)?,
            post_attention_layernorm: vb.rms_norm("post_attention_layernorm", h, c)?,
            pre_feedforward_layernorm: sandwich("pre_feedforward_layernorm")?,
            post_feedforward_layernorm: sandwich("post_feedforward_layernorm")?,
        })
    }

    fn norms(&self) -> BlockNorms<'_> {
        match &self.pre_feedforward_layernorm {
            Some(pre) => (
                Some(&self.post_attention_layernorm),
                pre,
                self.post_feedforward_layernorm.as_ref(),
            ),
            None => (None, &self.post_attention_layernorm, None),
        }
    }

    /// Attention then MLP, each pre-normed (and post-normed, Gemma) and added to the residual
    /// stream.
    fn forward(&self, x: Tensor<3>, tables: &PassTables, mut block: BlockPass) -> Tensor<3> {
        let (attn_out, mlp_in, mlp_out) = self.norms();
        let normed = self.input_layernorm.forward(x.clone());
        let h = self.self_attn.forward(normed, tables, &mut block);
        let x = x + norm_if(attn_out, h);
        let h = self.mlp.forward(mlp_in.forward(x.clone()), block.lora());
        x + norm_if(mlp_out, h)
    }
}

fn norm_if(norm: Option<&RmsNorm>, x: Tensor<3>) -> Tensor<3> {
    match norm {
        Some(norm) => norm.forward(x),
        None => x,
    }
}

#[derive(Module, Debug)]
pub struct Model {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// What embeddings are multiplied by (Gemma: √hidden).
    #[module(skip)]
    embed_scale: Option<f32>,
}

impl Model {
    /// `vb` is scoped to `model`.
    fn load(vb: &Builder, c: &ModelConfig) -> Result<Self> {
        let layers = (0..c.num_layers)
            .map(|i| DecoderLayer::load(&vb.pp(&format!("layers.{i}")), c, i))
            .collect::<Result<Vec<_>>>()?;
        let embed = vb.tensor::<2>("embed_tokens.weight", [c.vocab_size, c.hidden_size])?;
        Ok(Self {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embed),
            },
            layers,
            norm: vb.rms_norm("norm", c.hidden_size, c)?,
            embed_scale: c
                .style()
                .scaled_embeddings
                .then(|| (c.hidden_size as f64).sqrt() as f32),
        })
    }

    /// The tokens' embeddings, scaled in the embeddings' dtype as transformers does (in bf16,
    /// Gemma's √640 = 25.298 becomes 25.25).
    fn embed(&self, input_ids: Tensor<2, burn::tensor::Int>) -> Tensor<3> {
        let x = self.embed_tokens.forward(input_ids);
        match self.embed_scale {
            Some(scale) => {
                let scale = Tensor::<1>::from_floats([scale], &x.device()).cast(x.dtype());
                x * scale.unsqueeze()
            }
            None => x,
        }
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
    /// Rotations of global and of local layers.
    #[module(skip)]
    ropes: [Rope; 2],
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
            ropes: [
                Rope::new(config, LayerType::Full),
                Rope::new(config, LayerType::Sliding),
            ],
        })
    }

    /// Runs the model over `input.input_ids` with what `pass` carries: appending to its cache,
    /// its LoRA adapters on the projections, its intervention on the residual stream.
    ///
    /// Hidden states follow transformers' `output_hidden_states`: index 0 is the embedding
    /// output (scaled, for Gemma), index N (1 ≤ N < layers) the output of block N-1 (after any
    /// intervention), and the last index is taken after the final norm.
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
        let [b, t] = input.input_ids.dims();
        let tables = PassTables {
            full: self.kind_tables(input, cache.as_deref(), LayerType::Full),
            sliding: self.kind_tables(input, cache.as_deref(), LayerType::Sliding),
        };

        let mut x = self.model.embed(input.input_ids.clone());
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
        if let Some(cache) = cache {
            cache.advance(t);
        }
        let x = self.model.norm.forward(x);
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

    /// The rotation tables and mask of the layers of `kind`, `None` when the model has none.
    fn kind_tables(
        &self,
        input: &ForwardInput,
        cache: Option<&KvCache>,
        kind: LayerType,
    ) -> Option<KindTables> {
        let c = &self.config;
        let layer = c.layer_types.iter().position(|&k| k == kind)?;
        let device = self.device();
        // Angles in f32 on the host, then in the activations' dtype, as transformers does.
        let rope = match kind {
            LayerType::Full => &self.ropes[0],
            LayerType::Sliding => &self.ropes[1],
        };
        let (cos, sin) = rope.tables(&input.positions, &device);
        let keys = Keys {
            past: cache.map_or(0, KvCache::len),
            held: cache.map_or(0, |cache| cache.held(layer)),
            window: c.window(layer),
        };
        Some(KindTables {
            cos: cos.cast(self.dtype()),
            sin: sin.cast(self.dtype()),
            masked: attention_mask(input, keys).into(),
        })
    }

    /// The output head over final-norm hidden states: `[batch, seq, hidden]` → logits, soft-capped
    /// when the model says so (Gemma 2).
    pub fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = x.dims();
        let logits = self.head_weight().logits(x.reshape([b * t, h])).reshape([
            b,
            t,
            self.config.vocab_size,
        ]);
        head_loss::soft_cap(logits, self.config.final_logit_softcapping.map(f64::from))
    }

    /// The output head's weight: `lm_head`, or the embeddings when they are tied.
    pub fn head_weight(&self) -> HeadWeight {
        match &self.lm_head {
            Some(head) => HeadWeight::Linear(head.weight.val()),
            None => HeadWeight::Tied(self.model.embed_tokens.weight.val()),
        }
    }

    /// Summed next-token loss of `targets` at final-norm hidden `rows` (`[n, hidden]`), see
    /// [`head_loss::nll_sum`].
    pub fn nll_sum(&self, rows: Tensor<2>, targets: &[u32]) -> Tensor<1> {
        let softcap = self.config.final_logit_softcapping.map(f64::from);
        head_loss::nll_sum(rows, &self.head_weight(), targets, softcap)
    }
}

/// The keys a layer attends to in one pass: the last `held` of the `past` cached columns, then
/// the pass's own.
struct Keys {
    past: usize,
    held: usize,
    /// A local layer's window (its own key included).
    window: Option<usize>,
}

/// Causal + padding (+ sliding-window) mask, true where attention is forbidden. A query may
/// always see itself so that no row is fully masked: fully masked rows give NaN in softmax,
/// which then leaks through the padded keys of later layers. The window is counted in columns,
/// as transformers does; a row's real tokens are contiguous (padding is on the left only), so
/// that is also their distance in positions.
///
/// Returned flattened, `[batch, seq, held + seq]`.
fn attention_mask(input: &ForwardInput, keys: Keys) -> Vec<bool> {
    let [b, t] = input.input_ids.dims();
    let Keys { past, held, window } = keys;
    let first = past - held;
    let width = held + t;
    let mut data = Vec::with_capacity(b * t * width);
    for row in 0..b {
        let keep = input.key_mask.as_ref().map(|m| &m[row]);
        for i in 0..t {
            let q = past + i;
            for j in first..past + t {
                let in_window = window.is_none_or(|w| q - j < w);
                let visible = j == q || (j < q && in_window && keep.is_none_or(|k| k[j]));
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

    /// The norm `name` over `dim` values, in `c`'s convention.
    fn rms_norm(&self, name: &str, dim: usize, c: &ModelConfig) -> Result<RmsNorm> {
        let weight = self
            .tensor::<1>(&format!("{name}.weight"), [dim])
            .with_context(|| format!("loading norm {}", self.path(name)))?;
        Ok(RmsNorm::new(
            weight,
            c.rms_norm_eps,
            c.style().norm_plus_one,
        ))
    }
}
