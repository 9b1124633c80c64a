//! Batched autoregressive generation with a KV cache: left padding, greedy or temperature/top-p
//! sampling with a seed, stopping at end-of-turn tokens.

use crate::lora::Adapters;
use crate::model::{CausalLm, ForwardInput, KvCache, LogitsFor};
use crate::steering::{Positions, Steering};
use anyhow::Result;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    /// Refuses settings that would sample from NaN probabilities or from no tokens at all.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature must be a finite number ≥ 0 (0 = greedy), got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must be in (0, 1], got {}",
            self.top_p
        );
        Ok(())
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Generates a continuation for every prompt (token ids, chat template already applied) and
/// returns the new tokens of each, without the stop token. Generation also stops when the
/// longest prompt's row fills the model's context (`max_position_embeddings`). Row `r` samples with seed
/// `sampling.seed + r`. `adapters` are LoRA adapters applied to the model; `steering` adds to the residual stream at the positions it names.
pub fn generate(
    model: &CausalLm,
    adapters: Option<&Adapters>,
    prompts: &[Vec<u32>],
    stop_ids: &[u32],
    pad_id: u32,
    sampling: &Sampling,
    steering: Option<&Steering>,
) -> Result<Vec<Vec<u32>>> {
    let seeds: Vec<u64> = (0..prompts.len() as u64)
        .map(|r| sampling.seed.wrapping_add(r))
        .collect();
    generate_seeded(
        model, adapters, prompts, &seeds, stop_ids, pad_id, sampling, steering,
    )
}

/// As [`generate`], with one seed per row, so a prompt's sample depends only on its own seed and
/// not on which other prompts share its batch (`sampling.seed` is ignored).
#[allow(clippy::too_many_arguments)]
pub fn generate_seeded(
    model: &CausalLm,
    adapters: Option<&Adapters>,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    stop_ids: &[u32],
    pad_id: u32,
    sampling: &Sampling,
    steering: Option<&Steering>,
) -> Result<Vec<Vec<u32>>> {
    anyhow::ensure!(
        seeds.len() == prompts.len(),
        "{} seeds for {} prompts",
        seeds.len(),
        prompts.len()
    );
    anyhow::ensure!(
        prompts.iter().all(|p| !p.is_empty()),
        "cannot generate from an empty prompt"
    );
    sampling.check()?;
    let device = model.device();
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let context = model.config().max_position_embeddings;
    anyhow::ensure!(
        width < context,
        "the prompt has {width} tokens: the model's context of {context} tokens leaves no room for a reply"
    );
    let max_new_tokens = sampling.max_new_tokens.min(context - width);
    let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();

    let mut input = ForwardInput::left_padded(prompts, pad_id, &device);
    // Left padding puts every row's last prompt token in the last column.
    let prefill_steer = steering.map(|s| {
        let mask: Vec<f32> = (0..b)
            .flat_map(|r| (0..width).map(move |j| (r, j)))
            .map(|(r, j)| match s.positions {
                Positions::All | Positions::Prompt => (j >= pads[r]) as u8 as f32,
                Positions::Response => (j + 1 == width) as u8 as f32,
            })
            .collect();
        s.intervention(
            &device,
            Some(Tensor::from_data(
                TensorData::new(mask, [b, width]),
                &device,
            )),
        )
    });
    let decode_steer = steering
        .filter(|s| s.positions != Positions::Prompt)
        .map(|s| s.intervention(&device, None));
    let mut cache = KvCache::new(model.config().num_layers);
    let mut rngs: Vec<StdRng> = seeds.iter().map(|&s| StdRng::seed_from_u64(s)).collect();
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let vocab = model.config().vocab_size;

    for step in 0..max_new_tokens {
        let steer = if step == 0 {
            prefill_steer.as_ref()
        } else {
            decode_steer.as_ref()
        };
        let logits = model
            .forward(
                &input,
                Some(&mut cache),
                adapters,
                steer,
                LogitsFor::Last,
                false,
            )?
            .logits
            .expect("LogitsFor::Last returns logits");
        let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec()?;
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            let token = if done[r] {
                pad_id
            } else {
                let t = sample(&logits[r * vocab..(r + 1) * vocab], sampling, &mut rngs[r]);
                if stop_ids.contains(&t) {
                    done[r] = true;
                } else {
                    out[r].push(t);
                }
                t
            };
            next.push(token);
        }
        if done.iter().all(|&d| d) || step + 1 == max_new_tokens {
            break;
        }
        let positions: Vec<usize> = input
            .positions
            .iter()
            .map(|p| p.last().map_or(0, |l| l + 1))
            .collect();
        let mut key_mask = input.key_mask.take().unwrap_or_default();
        key_mask.iter_mut().for_each(|m| m.push(true));
        input = ForwardInput::decode_step(&next, &positions, key_mask, &device);
    }
    Ok(out)
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / s.temperature).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    // Nucleus: the smallest prefix whose mass reaches top_p (always at least one token).
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= s.top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let kept_total: f32 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f32>() * kept_total;
    for &(id, p) in probs {
        if u < p {
            return id;
        }
        u -= p;
    }
    probs[kept - 1].0
}

/// The first maximum, as `torch.argmax` picks ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}
