//! Batched autoregressive generation with a KV cache: left padding, greedy or temperature/top-p
//! sampling with a seed, stopping at end-of-turn tokens.

use crate::lm::Lm;
use crate::model::{Forward, ForwardInput, ForwardOutput, KvCache, LogitsFor};
use crate::steering::Positions;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How replies are sampled: the one sampling configuration of every command that generates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches this.
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

/// The token ids generation needs besides the prompts.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    /// Any of these ends a row's reply (and is not part of it).
    pub stop: Vec<u32>,
    /// Fills the left of shorter prompts and the rows that have stopped.
    pub pad: u32,
}

impl Specials {
    pub fn of(tokenizer: &Tokenizer) -> Self {
        Self {
            stop: tokenizer.stop_ids().to_vec(),
            pad: tokenizer.pad_or_eos(),
        }
    }
}

/// Generates a continuation for every prompt (token ids, chat template already applied) and
/// returns the new tokens of each, without the stop token. Generation also stops when the
/// longest prompt's row fills the model's context (`max_position_embeddings`). Row `r` samples with seed
/// `sampling.seed + r`. `lm`'s steering adds to the residual stream at the positions it names.
pub fn generate(
    lm: Lm,
    prompts: &[Vec<u32>],
    specials: &Specials,
    sampling: &Sampling,
) -> Result<Vec<Vec<u32>>> {
    let seeds: Vec<u64> = (0..prompts.len() as u64)
        .map(|r| sampling.seed.wrapping_add(r))
        .collect();
    generate_seeded(lm, prompts, &seeds, specials, sampling)
}

/// As [`generate`], with one seed per row, so a prompt's sample depends only on its own seed and
/// not on which other prompts share its batch (`sampling.seed` is ignored).
pub fn generate_seeded(
    lm: Lm,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    specials: &Specials,
    sampling: &Sampling,
) -> Result<Vec<Vec<u32>>> {
    let max_new_tokens = reply_room(lm, prompts, seeds, sampling)?;
    let device = lm.device();
    let mut cache = KvCache::new(lm.config());
    let mut rows: Vec<Row> = seeds.iter().map(|&s| Row::new(s)).collect();

    // The prompt, steered at the positions the steering names.
    let mut input = ForwardInput::left_padded(prompts, specials.pad, &device);
    let mask = lm.steering.map(|s| {
        let steered: Vec<_> = prompts
            .iter()
            .map(|p| (Some(s.positions), p.len()))
            .collect();
        prompt_steering_mask(&steered, &device)
    });
    let pass = cached_last_logits(&mut cache);
    let mut logits = last_logits(lm.forward_masked(&input, mask, pass)?)?;
    // The reply, steered at every token unless the steering is for the prompt only.
    let decode = match lm.steering {
        Some(s) if s.positions == Positions::Prompt => lm.with_steering(None),
        _ => lm,
    };
    for step in 0..max_new_tokens {
        let next: Vec<u32> = rows
            .iter_mut()
            .zip(logits.chunks(lm.config().vocab_size))
            .map(|(row, logits)| row.advance(logits, specials, sampling))
            .collect();
        if rows.iter().all(|r| r.done) || step + 1 == max_new_tokens {
            break;
        }
        input = next_step(input, &next, &device);
        logits = last_logits(decode.forward(&input, cached_last_logits(&mut cache))?)?;
    }
    Ok(rows.into_iter().map(|r| r.reply).collect())
}

/// How many tokens the replies may have: `sampling.max_new_tokens`, or less where the longest
/// prompt leaves less of the model's context. Refuses inputs that cannot be generated from.
fn reply_room(lm: Lm, prompts: &[Vec<u32>], seeds: &[u64], sampling: &Sampling) -> Result<usize> {
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
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let context = lm.config().max_position_embeddings;
    anyhow::ensure!(
        width < context,
        "the prompt has {width} tokens: the model's context of {context} tokens leaves no room for a reply"
    );
    Ok(sampling.max_new_tokens.min(context - width))
}

/// A pass through `cache` that returns the last position's logits: every generation step.
fn cached_last_logits(cache: &mut KvCache) -> Forward<'_> {
    Forward {
        cache: Some(cache),
        ..Forward::logits(LogitsFor::Last)
    }
}

/// One prompt's reply so far.
struct Row {
    rng: StdRng,
    reply: Vec<u32>,
    done: bool,
}

impl Row {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            reply: Vec::new(),
            done: false,
        }
    }

    /// Samples the row's next token (the pad once it has stopped) and returns it.
    fn advance(&mut self, logits: &[f32], specials: &Specials, sampling: &Sampling) -> u32 {
        if self.done {
            return specials.pad;
        }
        let token = sample(logits, sampling, &mut self.rng);
        if specials.stop.contains(&token) {
            self.done = true;
        } else {
            self.reply.push(token);
        }
        token
    }
}

/// Which prompt tokens steering acts on, `[batch, width]`, for left-padded rows given as
/// `(positions, prompt length)`, `width` the longest prompt; a row without positions is not
/// steered (all zeros). Left padding puts every row's last prompt token in the last column: the
/// one that predicts the reply's first token. Shared with the serving engine, whose rows each
/// steer their own way.
pub fn prompt_steering_mask(rows: &[(Option<Positions>, usize)], device: &Device) -> Tensor<2> {
    let width = rows.iter().map(|&(_, len)| len).max().unwrap_or(0);
    let mask: Vec<f32> = rows
        .iter()
        .flat_map(|&(positions, len)| steered_columns(positions, len, width))
        .collect();
    Tensor::from_data(TensorData::new(mask, [rows.len(), width]), device)
}

/// One row of [`prompt_steering_mask`].
fn steered_columns(
    positions: Option<Positions>,
    prompt_len: usize,
    width: usize,
) -> impl Iterator<Item = f32> {
    let pad = width - prompt_len;
    (0..width).map(move |j| match positions {
        Some(Positions::All | Positions::Prompt) => (j >= pad) as u8 as f32,
        Some(Positions::Response) => (j + 1 == width) as u8 as f32,
        None => 0.0,
    })
}

/// The input of the decoding step after `input`: one token per row, attending to everything
/// before it.
fn next_step(mut input: ForwardInput, next: &[u32], device: &Device) -> ForwardInput {
    let positions: Vec<usize> = input
        .positions
        .iter()
        .map(|p| p.last().map_or(0, |l| l + 1))
        .collect();
    let mut key_mask = input.key_mask.take().unwrap_or_default();
    key_mask.iter_mut().for_each(|m| m.push(true));
    ForwardInput::decode_step(next, &positions, key_mask, device)
}

/// The `[batch * vocab]` logits of a `LogitsFor::Last` pass, on the host.
fn last_logits(out: ForwardOutput) -> Result<Vec<f32>> {
    let logits = out.logits.expect("LogitsFor::Last returns logits");
    Ok(logits.into_data().convert::<f32>().try_into_vec()?)
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
