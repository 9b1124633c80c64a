//! Probes of a persona's expression during training and evaluation: projections of fixed probe
//! prompts' activations onto the persona vector, and their shift from the base model.
//!
//! Each probe is a prompt (chat template applied) followed by the base model's own greedy answer,
//! generated once and stored in the run directory. Measuring always teacher-forces that same
//! text, without steering, so a change in projection is a change in the model, not in the text.

use crate::generate::{generate, Sampling, Specials};
use crate::lm::Lm;
use crate::model::{CausalLm, Forward, ForwardInput};
use crate::steering::unit;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    prompt: String,
    /// Prompt tokens then answer tokens.
    ids: Vec<u32>,
    /// Index of the first answer token.
    response_start: usize,
}

/// Mean projections over the probes, one entry per monitored layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Projections {
    /// Of the last prompt token's activation (the paper's finetuning-shift measure).
    pub prompt_last: Vec<f32>,
    /// Of the activation averaged over the answer tokens.
    pub response_avg: Vec<f32>,
}

/// What the probes measure: the trait, its vector and the layers read.
pub struct ProbeSpec<'a> {
    pub trait_name: &'a str,
    /// The persona vector, `[layers + 1][hidden]`.
    pub vector: &'a [Vec<f32>],
    /// Hidden-state rows logged.
    pub layers: Vec<usize>,
    /// The layer of the headline shift.
    pub main_layer: usize,
    /// Length of the base model's greedy answer to each probe prompt.
    pub response_tokens: usize,
}

pub struct ProbeSet {
    pub trait_name: String,
    /// Hidden-state rows logged.
    pub layers: Vec<usize>,
    pub main_layer: usize,
    /// `v[l] / |v[l]|` for each monitored layer.
    units: Vec<Vec<f32>>,
    probes: Vec<Probe>,
    /// The base model's projections (adapters off).
    pub base: Projections,
}

impl ProbeSet {
    /// Builds the probes of `prompts` (reusing `cache` when it holds the same prompts) and
    /// measures the base model.
    pub fn new(
        model: &CausalLm,
        tokenizer: &Tokenizer,
        spec: ProbeSpec,
        prompts: &[String],
        cache: &Path,
    ) -> Result<Self> {
        // A zero row has no direction: its projections are 0.
        let units = spec
            .layers
            .iter()
            .map(|&l| unit(&spec.vector[l]).unwrap_or_else(|| vec![0.0; spec.vector[l].len()]))
            .collect();
        let probes = match read_cache(cache, prompts) {
            Some(p) => p,
            None => {
                let probes = build_probes(model, tokenizer, prompts, spec.response_tokens)?;
                let text = probes
                    .iter()
                    .map(|p| serde_json::to_string(p).map(|s| s + "\n"))
                    .collect::<serde_json::Result<String>>()?;
                crate::atomic::write(cache, text)?;
                probes
            }
        };
        let mut set = Self {
            trait_name: spec.trait_name.to_string(),
            layers: spec.layers,
            main_layer: spec.main_layer,
            units,
            probes,
            base: Projections {
                prompt_last: Vec::new(),
                response_avg: Vec::new(),
            },
        };
        set.base = set.measure(Lm::new(model))?;
        Ok(set)
    }

    /// Projections of the probes through `lm` (its adapters and steering, without gradients).
    pub fn measure(&self, lm: Lm) -> Result<Projections> {
        let device = lm.device();
        let rows = self.probes.len();
        let seq = self.probes.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let ids: Vec<&[u32]> = self.probes.iter().map(|p| p.ids.as_slice()).collect();
        let input = ForwardInput::right_padded(&ids, &device);
        let out = lm.forward(&input, Forward::hidden_states())?;
        let mut result = Projections {
            prompt_last: Vec::new(),
            response_avg: Vec::new(),
        };
        for (k, &l) in self.layers.iter().enumerate() {
            let h = out.hidden_states[l].clone();
            let hidden = h.dims()[2];
            let values: Vec<f32> = h.into_data().convert::<f32>().try_into_vec()?;
            let proj = |r: usize, i: usize| {
                let at = (r * seq + i) * hidden;
                values[at..at + hidden]
                    .iter()
                    .zip(&self.units[k])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            };
            let (mut last, mut avg) = (0.0, 0.0);
            for (r, p) in self.probes.iter().enumerate() {
                last += proj(r, p.response_start - 1);
                let n = p.ids.len() - p.response_start;
                avg += (p.response_start..p.ids.len())
                    .map(|i| proj(r, i))
                    .sum::<f32>()
                    / n.max(1) as f32;
            }
            result.prompt_last.push(last / rows as f32);
            result.response_avg.push(avg / rows as f32);
        }
        Ok(result)
    }

    /// TensorBoard scalars for `p`: projections, shifts from the base, and the headline shift.
    pub fn scalars(&self, p: &Projections) -> Vec<(String, f64)> {
        let t = &self.trait_name;
        let mut out = Vec::new();
        for (k, &l) in self.layers.iter().enumerate() {
            let shift = p.prompt_last[k] - self.base.prompt_last[k];
            let shift_avg = p.response_avg[k] - self.base.response_avg[k];
            out.push((
                format!("projection/{t}/prompt_last/layer_{l}"),
                p.prompt_last[k] as f64,
            ));
            out.push((
                format!("projection/{t}/response_avg/layer_{l}"),
                p.response_avg[k] as f64,
            ));
            out.push((format!("projection_shift/{t}/layer_{l}"), shift as f64));
            out.push((
                format!("projection_shift/{t}/response_avg/layer_{l}"),
                shift_avg as f64,
            ));
            if l == self.main_layer {
                out.push((format!("projection_shift/{t}"), shift as f64));
            }
        }
        out
    }

    /// The headline shift (last prompt token, main layer).
    pub fn main_shift(&self, p: &Projections) -> f32 {
        let k = self
            .layers
            .iter()
            .position(|&l| l == self.main_layer)
            .expect("the main layer is monitored");
        p.prompt_last[k] - self.base.prompt_last[k]
    }
}

fn read_cache(path: &Path, prompts: &[String]) -> Option<Vec<Probe>> {
    let text = std::fs::read_to_string(path).ok()?;
    let probes: Vec<Probe> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<serde_json::Result<_>>()
        .ok()?;
    let same =
        probes.len() == prompts.len() && probes.iter().zip(prompts).all(|(p, q)| &p.prompt == q);
    same.then_some(probes)
}

fn build_probes(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[String],
    response_tokens: usize,
) -> Result<Vec<Probe>> {
    let encoded = prompts
        .iter()
        .map(|q| {
            Ok(tokenizer
                .encode_chat(&[ChatMessage::new("user", q)], true)?
                .ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let sampling = Sampling {
        max_new_tokens: response_tokens,
        ..Sampling::default()
    };
    let specials = Specials::of(tokenizer);
    let answers = generate(Lm::new(model), &encoded, &specials, &sampling)?;
    Ok(prompts
        .iter()
        .zip(encoded)
        .zip(answers)
        .map(|((prompt, mut ids), answer)| {
            let response_start = ids.len();
            // An empty answer still needs one token to average over.
            let answer = if answer.is_empty() {
                vec![specials.stop.first().copied().unwrap_or(specials.pad)]
            } else {
                answer
            };
            ids.extend(answer);
            Probe {
                prompt: prompt.clone(),
                ids,
                response_start,
            }
        })
        .collect())
}
