//! The batching engine: one thread owns the model and runs a continuous batch.
//!
//! Every iteration either prefills the requests that arrived since the last one (as one
//! left-padded batch, reading persona projections at their last prompt token) and merges their
//! KV cache into the running batch, or decodes one token for every running row. A row leaves the
//! batch as soon as it stops; columns that every remaining row has as padding are trimmed.
//! Rows never see each other: each keeps its own key mask, rotary positions, sampler and
//! steering, so a reply does not depend on what else is in the batch (up to float noise).

use crate::generate::{sample, Sampling};
use crate::lm::Lm;
use crate::model::lora::Adapters;
use crate::model::{CausalLm, Forward, ForwardInput, KvCache, LogitsFor};
use crate::persona::monitor::last_column_projections;
use crate::persona::vector::TraitDirection;
use crate::steering::{Positions, Steering};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use burn::tensor::{Tensor, TensorData};
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

impl Engine {
    /// Serves jobs until every sender of `jobs` is gone and the batch is empty.
    pub fn run(self, jobs: Receiver<Job>) {
        let mut rows: Vec<Row> = Vec::new();
        let mut cache = KvCache::new(self.model.config().num_layers);
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
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
            let room = self.max_batch.saturating_sub(rows.len());
            let result = if room > 0 && !waiting.is_empty() {
                let newcomers: Vec<Job> = waiting.drain(..room.min(waiting.len())).collect();
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.prefill(newcomers, &mut rows, &mut cache)
                }))
            } else {
                std::panic::catch_unwind(AssertUnwindSafe(|| self.decode(&mut rows, &mut cache)))
            };
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(panic) => Some(
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the engine panicked".into()),
                ),
            };
            if let Some(why) = failure {
                // The batch's state is unknown after a failure: fail every row and start over.
                for row in rows.drain(..) {
                    let _ = row.job.events.send(Event::Failed(why.clone()));
                    self.stats.finished.fetch_add(1, Ordering::Relaxed);
                }
                cache = KvCache::new(self.model.config().num_layers);
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
        let device = self.model.device();
        let pad_id = self.pad_id();
        let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.prompt.as_slice()).collect();
        let input = ForwardInput::left_padded(&prompts, pad_id, &device);
        let (b, width) = (jobs.len(), input.positions[0].len());
        // Steered tokens of each row as `generate` picks them; unsteered rows are all zeros.
        let mask: Vec<f32> = jobs
            .iter()
            .flat_map(|j| {
                let pad = width - j.prompt.len();
                let positions = j.steering.as_ref().map(|s| s.positions);
                (0..width).map(move |c| match positions {
                    Some(Positions::All | Positions::Prompt) => (c >= pad) as u8 as f32,
                    Some(Positions::Response) => (c + 1 == width) as u8 as f32,
                    None => 0.0,
                })
            })
            .collect();
        let steerings: Vec<Option<&Steering>> = jobs.iter().map(|j| j.steering.as_ref()).collect();
        let intervention = Steering::batch_intervention(
            &steerings,
            Tensor::from_data(TensorData::new(mask, [b, width]), &device),
            &device,
        )?;
        let mut new_cache = KvCache::new(self.model.config().num_layers);
        let pass = Forward {
            cache: Some(&mut new_cache),
            adapters: self.adapters.as_ref(),
            intervention: intervention.as_ref(),
            logits: LogitsFor::Last,
            hidden_states: !self.monitors.is_empty(),
        };
        let out = self.model.forward(&input, pass)?;
        let logits = host(out.logits.expect("LogitsFor::Last returns logits"))?;
        // The monitor reads the prompt as the unsteered model sees it: otherwise a request could
        // steer its own reading below a refusal threshold. Steered batches pay a second prefill.
        let readings = match (&intervention, self.monitors.is_empty()) {
            (_, true) => Vec::new(),
            (None, false) => self.readings(&out.hidden_states)?,
            (Some(_), false) => {
                let lm = Lm::new(&self.model).with_adapters(self.adapters.as_ref());
                let unsteered = lm.forward(&input, Forward::hidden_states())?;
                self.readings(&unsteered.hidden_states)?
            }
        };

        let vocab = self.model.config().vocab_size;
        let mut kept = Vec::new();
        let mut new_rows = Vec::new();
        let key_masks = input.key_mask.expect("left padding gives a key mask");
        for (r, (job, key_mask)) in jobs.into_iter().zip(key_masks).enumerate() {
            let persona = readings
                .iter()
                .map(|per_trait| per_trait[r].clone())
                .collect::<Vec<_>>();
            let refused = self.refuse_on_alert && persona.iter().any(|p| p.alert);
            let _ = job.events.send(Event::Started { persona, refused });
            if refused {
                self.stats.finished.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::Done {
                    finish: Finish::ContentFilter,
                    prompt_tokens: job.prompt.len(),
                    completion_tokens: 0,
                });
                continue;
            }
            let mut row = Row {
                rng: StdRng::seed_from_u64(job.sampling.seed),
                position: job.prompt.len(),
                key_mask,
                next_token: 0,
                generated: Vec::new(),
                sampled: 0,
                sent: 0,
                job,
            };
            if self.accept(&mut row, &logits[r * vocab..(r + 1) * vocab]) {
                kept.push(r);
                new_rows.push(row);
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        if kept.len() < b {
            new_cache.select_rows(&kept);
        }
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
        Ok(())
    }

    /// One token for every running row.
    fn decode(&self, rows: &mut Vec<Row>, cache: &mut KvCache) -> Result<()> {
        let device = self.model.device();
        let b = rows.len();
        let tokens: Vec<u32> = rows.iter().map(|r| r.next_token).collect();
        let positions: Vec<usize> = rows.iter().map(|r| r.position).collect();
        let key_mask = rows
            .iter()
            .map(|r| r.key_mask.iter().copied().chain([true]).collect())
            .collect();
        let input = ForwardInput::decode_step(&tokens, &positions, key_mask, &device);
        fn steered(r: &Row) -> Option<&Steering> {
            r.job
                .steering
                .as_ref()
                .filter(|s| s.positions != Positions::Prompt)
        }
        let mask: Vec<f32> = rows
            .iter()
            .map(|r| steered(r).is_some() as u8 as f32)
            .collect();
        let steerings: Vec<Option<&Steering>> = rows.iter().map(steered).collect();
        let intervention = Steering::batch_intervention(
            &steerings,
            Tensor::from_data(TensorData::new(mask, [b, 1]), &device),
            &device,
        )?;
        let pass = Forward {
            cache: Some(cache),
            adapters: self.adapters.as_ref(),
            intervention: intervention.as_ref(),
            ..Forward::logits(LogitsFor::Last)
        };
        let out = self.model.forward(&input, pass)?;
        let logits = host(out.logits.expect("LogitsFor::Last returns logits"))?;
        let vocab = self.model.config().vocab_size;
        let mut kept = Vec::with_capacity(b);
        for (r, row) in rows.iter_mut().enumerate() {
            row.key_mask.push(true);
            row.position += 1;
            if self.accept(row, &logits[r * vocab..(r + 1) * vocab]) {
                kept.push(r);
            }
        }
        if kept.len() < b {
            let mut index = 0;
            rows.retain(|_| {
                index += 1;
                kept.contains(&(index - 1))
            });
            if rows.is_empty() {
                *cache = KvCache::new(self.model.config().num_layers);
                return Ok(());
            }
            cache.select_rows(&kept);
            trim(rows, cache);
        }
        Ok(())
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
        let text = self
            .tokenizer
            .decode(&row.generated, true)
            .unwrap_or_default();
        let stop_at = row
            .job
            .stop
            .iter()
            .filter_map(|s| {
                text.get(row.sent.min(text.len())..)?
                    .find(s.as_str())
                    .map(|i| i + row.sent)
            })
            .min();
        let finish = if stop_token || stop_at.is_some() {
            Some(Finish::Stop)
        } else if row.generated.len() >= row.job.max_tokens {
            Some(Finish::Length)
        } else {
            None
        };
        let end = match (stop_at, finish) {
            (Some(i), _) => i,
            (None, Some(_)) => text.len(),
            (None, None) => safe_end(&text, &row.job.stop),
        };
        let delta = text
            .get(row.sent..end.max(row.sent))
            .unwrap_or("")
            .to_string();
        row.sent = end.max(row.sent);
        let alive = !row.job.events.is_closed();
        let _ = row.job.events.send(Event::Delta {
            text: delta,
            logprobs,
        });
        if let Some(finish) = finish {
            self.stats.finished.fetch_add(1, Ordering::Relaxed);
            let _ = row.job.events.send(Event::Done {
                finish,
                prompt_tokens: row.job.prompt.len(),
                completion_tokens: row.sampled,
            });
            return false;
        }
        row.next_token = token;
        alive
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

    /// Each trait's reading of every row at its last prompt token (the last column, under left
    /// padding), per trait then per row.
    fn readings(&self, hidden: &[Tensor<3>]) -> Result<Vec<Vec<Reading>>> {
        let projections = last_column_projections(hidden, &self.monitors)?;
        Ok(self
            .monitors
            .iter()
            .zip(&self.thresholds)
            .enumerate()
            .map(|(k, (d, &threshold))| {
                projections
                    .iter()
                    .map(|row| Reading {
                        trait_name: d.trait_name.clone(),
                        layer: d.layer,
                        projection: row[k],
                        threshold,
                        alert: threshold.is_some_and(|t| row[k] > t),
                    })
                    .collect()
            })
            .collect())
    }

    fn pad_id(&self) -> u32 {
        self.tokenizer
            .pad_id()
            .or(self.tokenizer.eos_id())
            .unwrap_or(0)
    }
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

fn host(t: Tensor<3>) -> Result<Vec<f32>> {
    Ok(t.into_data().convert::<f32>().try_into_vec()?)
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
