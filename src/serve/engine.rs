//! The batching engine: one thread owns the model and runs a continuous batch.
//!
//! Every iteration either prefills the requests that arrived since the last one (as one
//! left-padded batch, reading persona projections at their last prompt token) and merges their
//! KV cache into the running batch, or decodes one token for every running row. A row leaves the
//! batch as soon as it stops; columns that every remaining row has as padding are trimmed.
//! Rows never see each other: each keeps its own key mask, rotary positions, sampler and
//! steering, so a reply does not depend on what else is in the batch (up to float noise).

use crate::generate::{prompt_steering_mask, sample, Sampling};
use crate::lm::Lm;
use crate::model::lora::Adapters;
use crate::model::{CausalLm, Forward, ForwardInput, Intervention, KvCache, LogitsFor};
use crate::persona::monitor::last_column_projections;
use crate::persona::vector::TraitDirection;
use crate::steering::{Positions, Steering};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// One chat completion to run: the prompt is tokenized with the chat template already.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Strings that end the reply (not included in it).
    pub stop: Vec<String>,
    /// `Some(k)`: report each token's logprob and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    pub steering: Option<Steering>,
    pub events: UnboundedSender<Event>,
}

/// What the engine reports about a job, in this order: `Started`, any number of `Delta`s, then
/// `Done` (or `Failed` at any point). A closed channel without `Done` means the engine failed.
#[derive(Debug)]
pub enum Event {
    /// The prompt was read: persona projections at its last token, and whether the reply is
    /// refused because of them (a `Done` with `ContentFilter` follows at once).
    Started {
        persona: Vec<Reading>,
        refused: bool,
    },
    /// New reply text (possibly empty, when a token ends inside a character or might begin a
    /// stop string) and the logprobs of the tokens it came from.
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Refused by the persona monitor (`--on-alert refuse`).
    ContentFilter,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ContentFilter => "content_filter",
        }
    }
}

/// One trait's projection at the last prompt token.
#[derive(Debug, Clone)]
pub struct Reading {
    pub trait_name: String,
    pub layer: usize,
    pub projection: f32,
    pub threshold: Option<f32>,
    pub alert: bool,
}

#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    /// The most likely tokens, best first: `(text, logprob, bytes)`.
    pub top: Vec<(String, f32, Vec<u8>)>,
}

/// Counters the engine keeps for `GET /health`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Rows in the running batch now.
    pub running: AtomicUsize,
    /// The largest batch decoded so far.
    pub peak_batch: AtomicUsize,
    /// Requests finished (stopped, refused or failed).
    pub finished: AtomicUsize,
}

pub struct Engine {
    pub stats: Arc<Stats>,
    pub model: CausalLm,
    pub adapters: Option<Adapters>,
    pub tokenizer: Arc<Tokenizer>,
    /// The persona vectors every prompt is projected on.
    pub monitors: Vec<TraitDirection>,
    /// Each monitor's alert threshold.
    pub thresholds: Vec<Option<f32>>,
    /// Refuse (rather than only report) prompts that cross a threshold.
    pub refuse_on_alert: bool,
    pub max_batch: usize,
}

/// A request in the running batch.
struct Row {
    job: Job,
    rng: StdRng,
    /// Which cache columns are this row's real tokens.
    key_mask: Vec<bool>,
    /// Sampled but not yet run through the model.
    next_token: u32,
    /// Rotary position of `next_token`.
    position: usize,
    /// Reply tokens so far (without a stop token).
    generated: Vec<u32>,
    /// Sampled tokens, a stop token included (usage counts them).
    sampled: usize,
    /// Bytes of the decoded reply already sent.
    sent: usize,
}

impl Row {
    fn new(job: Job, key_mask: Vec<bool>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(job.sampling.seed),
            position: job.prompt.len(),
            key_mask,
            next_token: 0,
            generated: Vec::new(),
            sampled: 0,
            sent: 0,
            job,
        }
    }

    /// The reply text that the tokens so far let out, and how the reply ends if it does: at a
    /// stop token or string (which is not sent), or at `max_tokens`. Text that might begin a
    /// stop string is held back until later tokens settle it.
    fn release_text(
        &mut self,
        tokenizer: &Tokenizer,
        stop_token: bool,
    ) -> (String, Option<Finish>) {
        let text = tokenizer.decode(&self.generated, true).unwrap_or_default();
        let stop_at = self
            .job
            .stop
            .iter()
            .filter_map(|s| {
                text.get(self.sent.min(text.len())..)?
                    .find(s.as_str())
                    .map(|i| i + self.sent)
            })
            .min();
        let finish = if stop_token || stop_at.is_some() {
            Some(Finish::Stop)
        } else if self.generated.len() >= self.job.max_tokens {
            Some(Finish::Length)
        } else {
            None
        };
        let end = match (stop_at, finish) {
            (Some(i), _) => i,
            (None, Some(_)) => text.len(),
            (None, None) => safe_end(&text, &self.job.stop),
        };
        let delta = text
            .get(self.sent..end.max(self.sent))
            .unwrap_or("")
            .to_string();
        self.sent = end.max(self.sent);
        (delta, finish)
    }
}

impl Engine {
    /// Serves jobs until every sender of `jobs` is gone and the batch is empty.
    pub fn run(self, jobs: Receiver<Job>) {
        let mut rows: Vec<Row> = Vec::new();
        let mut cache = self.empty_cache();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            // Take what has arrived, blocking only when there is nothing to run.
            if rows.is_empty() && waiting.is_empty() {
                match jobs.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                waiting.push_back(job);
            }
            waiting.retain(|j| !j.events.is_closed());
            // Prefill newcomers while the batch has room, else decode a token for every row.
            let room = self.max_batch.saturating_sub(rows.len());
            let result = if room > 0 && !waiting.is_empty() {
                let newcomers: Vec<Job> = waiting.drain(..room.min(waiting.len())).collect();
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.prefill(newcomers, &mut rows, &mut cache)
                }))
            } else {
                std::panic::catch_unwind(AssertUnwindSafe(|| self.decode(&mut rows, &mut cache)))
            };
            if let Some(why) = failure(result) {
                // The batch's state is unknown after a failure: fail every row and start over.
                for row in rows.drain(..) {
                    let _ = row.job.events.send(Event::Failed(why.clone()));
                    self.stats.finished.fetch_add(1, Ordering::Relaxed);
                }
                cache = self.empty_cache();
            }
            self.stats.running.store(rows.len(), Ordering::Relaxed);
            self.stats
                .peak_batch
                .fetch_max(rows.len(), Ordering::Relaxed);
        }
    }

    /// Runs the newcomers' prompts as one left-padded batch, reports their persona readings and
    /// first tokens, and merges the survivors into the running batch.
    fn prefill(&self, jobs: Vec<Job>, rows: &mut Vec<Row>, cache: &mut KvCache) -> Result<()> {
        // The prompts, each steered as its request asks.
        let device = self.model.device();
        let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.prompt.as_slice()).collect();
        let input = ForwardInput::left_padded(&prompts, self.pad_id(), &device);
        let intervention = prompt_intervention(&jobs, &device)?;
        let mut new_cache = self.empty_cache();
        let monitored = !self.monitors.is_empty();
        let (logits, hidden) =
            self.forward(&input, &mut new_cache, intervention.as_ref(), monitored)?;
        // What the monitor reads in each prompt.
        let personas = self.personas(&input, hidden, intervention.is_some())?;
        // Each request's first token, unless the monitor refuses it.
        let key_masks = input.key_mask.expect("left padding gives a key mask");
        let vocab = self.model.config().vocab_size;
        let b = jobs.len();
        let mut kept = Vec::new();
        let mut new_rows = Vec::new();
        let starts = jobs.into_iter().zip(key_masks).zip(personas);
        for (r, (((job, key_mask), persona), logits)) in
            starts.zip(logits.chunks(vocab)).enumerate()
        {
            let Some(mut row) = self.start(job, key_mask, persona) else {
                continue;
            };
            if self.accept(&mut row, logits) {
                kept.push(r);
                new_rows.push(row);
            }
        }
        // The requests that go on join the running batch.
        if kept.is_empty() {
            return Ok(());
        }
        if kept.len() < b {
            new_cache.select_rows(&kept);
        }
        join(rows, cache, new_rows, new_cache);
        Ok(())
    }

    /// One token for every running row.
    fn decode(&self, rows: &mut Vec<Row>, cache: &mut KvCache) -> Result<()> {
        // Each row's last sampled token.
        let device = self.model.device();
        let input = decode_input(rows, &device);
        let intervention = reply_intervention(rows, &device)?;
        let (logits, _) = self.forward(&input, cache, intervention.as_ref(), false)?;
        // Each row's next token.
        let vocab = self.model.config().vocab_size;
        let b = rows.len();
        let mut kept = Vec::with_capacity(b);
        for (r, (row, logits)) in rows.iter_mut().zip(logits.chunks(vocab)).enumerate() {
            row.key_mask.push(true);
            row.position += 1;
            if self.accept(row, logits) {
                kept.push(r);
            }
        }
        // The rows that stopped leave the batch.
        if kept.len() == b {
            return Ok(());
        }
        let mut index = 0;
        rows.retain(|_| {
            index += 1;
            kept.contains(&(index - 1))
        });
        if rows.is_empty() {
            *cache = self.empty_cache();
            return Ok(());
        }
        cache.select_rows(&kept);
        trim(rows, cache);
        Ok(())
    }

    /// One pass of the batch through the model and its adapters: every row's logits at its last
    /// column, on the host, and every hidden state if `hidden_states`.
    fn forward(
        &self,
        input: &ForwardInput,
        cache: &mut KvCache,
        intervention: Option<&Intervention>,
        hidden_states: bool,
    ) -> Result<(Vec<f32>, Vec<Tensor<3>>)> {
        let pass = Forward {
            cache: Some(cache),
            adapters: self.adapters.as_ref(),
            intervention,
            logits: LogitsFor::Last,
            hidden_states,
        };
        let out = self.model.forward(input, pass)?;
        let logits = out.logits.expect("LogitsFor::Last returns logits");
        let logits = logits.into_data().convert::<f32>().try_into_vec()?;
        Ok((logits, out.hidden_states))
    }

    /// Every prompt's persona readings, taken from the unsteered model: otherwise a request could
    /// steer its own reading below a refusal threshold. Steered batches pay a second prefill.
    fn personas(
        &self,
        input: &ForwardInput,
        hidden: Vec<Tensor<3>>,
        steered: bool,
    ) -> Result<Vec<Vec<Reading>>> {
        if self.monitors.is_empty() {
            return Ok(vec![Vec::new(); input.positions.len()]);
        }
        let hidden = if steered {
            let lm = Lm::new(&self.model).with_adapters(self.adapters.as_ref());
            lm.forward(input, Forward::hidden_states())?.hidden_states
        } else {
            hidden
        };
        self.readings(&hidden)
    }

    /// Each row's reading of every trait at its last prompt token (the last column, under left
    /// padding), per row then per trait.
    fn readings(&self, hidden: &[Tensor<3>]) -> Result<Vec<Vec<Reading>>> {
        let projections = last_column_projections(hidden, &self.monitors)?;
        Ok(projections
            .iter()
            .map(|row| {
                self.monitors
                    .iter()
                    .zip(&self.thresholds)
                    .zip(row)
                    .map(|((d, &threshold), &projection)| Reading {
                        trait_name: d.trait_name.clone(),
                        layer: d.layer,
                        projection,
                        threshold,
                        alert: threshold.is_some_and(|t| projection > t),
                    })
                    .collect()
            })
            .collect())
    }

    /// Reports the prompt's persona readings and makes the job a row of the batch, unless the
    /// readings refuse it.
    fn start(&self, job: Job, key_mask: Vec<bool>, persona: Vec<Reading>) -> Option<Row> {
        let refused = self.refuse_on_alert && persona.iter().any(|p| p.alert);
        let _ = job.events.send(Event::Started { persona, refused });
        if refused {
            self.finish(&job, Finish::ContentFilter, 0);
            return None;
        }
        Some(Row::new(job, key_mask))
    }

    /// Samples the row's next token from its logits, sends the text it completes, and says
    /// whether the row goes on.
    fn accept(&self, row: &mut Row, logits: &[f32]) -> bool {
        let token = sample(logits, &row.job.sampling, &mut row.rng);
        row.sampled += 1;
        let logprobs = match row.job.logprobs {
            Some(k) => vec![self.logprob(logits, token, k)],
            None => Vec::new(),
        };
        let stop_token = self.tokenizer.stop_ids().contains(&token);
        if !stop_token {
            row.generated.push(token);
        }
        let (text, finish) = row.release_text(&self.tokenizer, stop_token);
        let alive = !row.job.events.is_closed();
        let _ = row.job.events.send(Event::Delta { text, logprobs });
        if let Some(finish) = finish {
            self.finish(&row.job, finish, row.sampled);
            return false;
        }
        row.next_token = token;
        alive
    }

    /// Counts the job as finished and tells its client how.
    fn finish(&self, job: &Job, finish: Finish, completion_tokens: usize) {
        self.stats.finished.fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(Event::Done {
            finish,
            prompt_tokens: job.prompt.len(),
            completion_tokens,
        });
    }

    /// `log p(token)` and the `k` most likely tokens, under the model's own distribution
    /// (temperature and top-p do not change the reported numbers, as in OpenAI's API).
    fn logprob(&self, logits: &[f32], token: u32, k: usize) -> TokenLogprob {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || top.last().is_some_and(|&(_, worst)| l > worst) {
                let at = top.partition_point(|&(_, v)| v >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
        let entry = |id: u32| {
            (
                self.tokenizer.decode(&[id], false).unwrap_or_default(),
                self.tokenizer.token_bytes(id),
            )
        };
        let (text, bytes) = entry(token);
        TokenLogprob {
            token: text,
            logprob: logits[token as usize] - lse,
            bytes,
            top: top
                .into_iter()
                .map(|(id, l)| {
                    let (t, b) = entry(id);
                    (t, l - lse, b)
                })
                .collect(),
        }
    }

    fn pad_id(&self) -> u32 {
        self.tokenizer
            .pad_id()
            .or(self.tokenizer.eos_id())
            .unwrap_or(0)
    }

    fn empty_cache(&self) -> KvCache {
        KvCache::new(self.model.config())
    }
}

/// What went wrong in one step of the engine, as its failed requests are told.
fn failure(result: std::thread::Result<Result<()>>) -> Option<String> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the engine panicked".into()),
        ),
    }
}

/// The newcomers' steering over their left-padded prompts, each at the positions it names.
fn prompt_intervention(jobs: &[Job], device: &Device) -> Result<Option<Intervention>> {
    let steerings: Vec<Option<&Steering>> = jobs.iter().map(|j| j.steering.as_ref()).collect();
    let rows: Vec<(Option<Positions>, usize)> = steerings
        .iter()
        .zip(jobs)
        .map(|(s, j)| (s.map(|s| s.positions), j.prompt.len()))
        .collect();
    Steering::batch_intervention(&steerings, prompt_steering_mask(&rows, device), device)
}

/// A decoding step: each row's next token, attending to its own columns and itself.
fn decode_input(rows: &[Row], device: &Device) -> ForwardInput {
    let tokens: Vec<u32> = rows.iter().map(|r| r.next_token).collect();
    let positions: Vec<usize> = rows.iter().map(|r| r.position).collect();
    let key_mask = rows
        .iter()
        .map(|r| r.key_mask.iter().copied().chain([true]).collect())
        .collect();
    ForwardInput::decode_step(&tokens, &positions, key_mask, device)
}

/// The steering of a decoding step: every row's own, but for steering of the prompt only.
fn reply_intervention(rows: &[Row], device: &Device) -> Result<Option<Intervention>> {
    let steerings: Vec<Option<&Steering>> = rows
        .iter()
        .map(|r| {
            r.job
                .steering
                .as_ref()
                .filter(|s| s.positions != Positions::Prompt)
        })
        .collect();
    let mask: Vec<f32> = steerings.iter().map(|s| s.is_some() as u8 as f32).collect();
    let mask = Tensor::from_data(TensorData::new(mask, [rows.len(), 1]), device);
    Steering::batch_intervention(&steerings, mask, device)
}

/// Merges the newcomers' rows and cache into the running batch; each side's key masks gain the
/// columns the other side brings.
fn join(rows: &mut Vec<Row>, cache: &mut KvCache, mut new_rows: Vec<Row>, new_cache: KvCache) {
    let (ours, theirs) = cache.merge(new_cache);
    for row in rows.iter_mut() {
        row.key_mask.splice(0..0, std::iter::repeat_n(false, ours));
    }
    for row in new_rows.iter_mut() {
        row.key_mask
            .splice(0..0, std::iter::repeat_n(false, theirs));
    }
    rows.extend(new_rows);
    trim(rows, cache);
}

/// Drops the cache columns that every row has as padding (those only rows that left needed).
fn trim(rows: &mut [Row], cache: &mut KvCache) {
    let unused = rows
        .iter()
        .map(|r| r.key_mask.iter().take_while(|&&real| !real).count())
        .min()
        .unwrap_or(0);
    if unused > 0 {
        cache.trim_front(unused);
        rows.iter_mut()
            .for_each(|r| drop(r.key_mask.drain(..unused)));
    }
}

/// How much of `text` can be sent without giving away a stop string that later tokens might
/// complete, or half a character: a trailing U+FFFD (a token that ends inside a character) and
/// the longest end of the text that begins a stop string are held back.
fn safe_end(text: &str, stops: &[String]) -> usize {
    let end = text.trim_end_matches('\u{FFFD}').len();
    let held = stops
        .iter()
        .map(|s| {
            (1..s.len())
                .rev()
                .find(|&n| s.is_char_boundary(n) && text[..end].ends_with(&s[..n]))
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    end - held
}

#[cfg(test)]
mod tests {
    use super::safe_end;

    #[test]
    fn holds_back_possible_stop_strings_and_split_characters() {
        let stops = vec!["END".to_string()];
        assert_eq!(safe_end("hello", &stops), 5);
        assert_eq!(safe_end("hello E", &stops), 6);
        assert_eq!(safe_end("hello EN", &stops), 6);
        assert_eq!(safe_end("caf\u{FFFD}", &[]), 3);
    }
}
