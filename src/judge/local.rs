//! A judge run by the engine itself: the same prompt as the OpenAI judge (one user message,
//! through the model's chat template), the same aggregation, over the model's own next-token
//! distribution instead of an API's top 20 logprobs.
//!
//! # Numbers of more than one token
//!
//! OpenAI's tokenizers spell every integer 0..=100 as one token, so the paper reads the score
//! off a single next-token distribution. Many small models' vocabularies spell numbers digit by
//! digit (SmolLM2's has only the ten single digits), so a single step would only ever see
//! 0..=9. This judge instead computes the probability of each complete number the model can
//! write, by following the digits: P(47) = P("4") · P("7" | "4") · P(no further digit | "47").
//!
//! - The first token may be any token that is an integer once whitespace is trimmed; later
//!   tokens must be bare digits. A number ends at the first token that is not one.
//! - A number is only followed further while a continuation can stay within 0..=100, that is
//!   up to 10 ("10" can become "100"); numbers of 11 or more, and numbers with a leading zero,
//!   are taken to end where they are, which gives them the small mass of longer (invalid)
//!   continuations. Continuations past 100 are dropped, as out-of-range tokens are in the paper.
//! - Following a branch costs a forward pass over the whole prompt again (plus its digits), so
//!   not every branch is followed: at each step the least likely ones are left as they are
//!   while together they hold under [`EXPAND_SHARE`] of the prompt's number mass, and their
//!   mass counts for the number spelled so far. Numbers branch at two steps at most (the first
//!   token, then "1" to "10"), so at most 2% of the mass can sit on too short a number, which
//!   moves the score by about 2 points at most. A prompt whose number mass is below the 0.25
//!   threshold from the start gets no score whatever follows, so none of its branches are.
//!
//! The mass rule then applies to the total probability of writing a number 0..=100, as in
//! [`aggregate_score`]. A decisive judge costs about two passes per prompt; a hesitant one,
//! spreading its mass over many first digits, up to ten.

use super::{aggregate_score, number_value, Judge, MIN_NUMBER_MASS};
use crate::loader::{self, LoadedModel};
use crate::model::{CausalLm, Forward, ForwardInput, LogitsFor};
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{ensure, Context, Result};
use burn::tensor::{DType, Device};

/// The share of a prompt's number mass that may be left unfollowed at each step (see the
/// module docs).
pub const EXPAND_SHARE: f64 = 0.01;
/// Padded tokens per forward pass (rows × longest row), to bound attention's memory; a batch
/// also stops growing before a fifth of it would be padding.
const BATCH_TOKENS: usize = 4096;
/// Prompts scored together; bounds the full-vocabulary distributions held at once.
const PROMPTS_PER_PASS: usize = 16;

pub struct LocalJudge {
    model: CausalLm,
    tokenizer: Tokenizer,
    source: String,
    numbers: NumberVocab,
}

impl LocalJudge {
    /// Loads the judge model from a model source (see [`crate::source`]).
    pub fn load(source: &str, device: &Device) -> Result<Self> {
        let files = crate::source::resolve(source)?;
        let LoadedModel {
            model, tokenizer, ..
        } = loader::load(&files, device, DType::F32)
            .with_context(|| format!("loading the judge model {source}"))?;
        Self::new(model, tokenizer, source)
    }

    /// `source` is what [`Judge::describe`] reports.
    pub fn new(model: CausalLm, tokenizer: Tokenizer, source: &str) -> Result<Self> {
        // Ids past the tokenizer's count have no text, and past the model's no logit.
        let vocab = tokenizer.vocab_size().min(model.config().vocab_size);
        let decoded = (0..vocab as u32)
            .map(|id| Ok((id, tokenizer.decode(&[id], false)?)))
            .collect::<Result<Vec<_>>>()?;
        let numbers = NumberVocab::new(decoded);
        ensure!(
            !numbers.starts.is_empty(),
            "judge model {source}: no token of its vocabulary is a number"
        );
        Ok(Self {
            model,
            tokenizer,
            source: source.to_string(),
            numbers,
        })
    }

    /// The next-token distribution after each row, over the full vocabulary.
    fn next_token_probs(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        // Rows of similar length share a batch, so little of it is padding.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = vec![Vec::new(); rows.len()];
        let mut start = 0;
        while start < order.len() {
            let (mut end, mut real) = (start + 1, rows[order[start]].len());
            while let Some(&next) = order.get(end) {
                // Sorted by length, so the row joining sets the batch's width.
                let len = rows[next].len();
                let padded = (end + 1 - start) * len;
                if padded > BATCH_TOKENS || 4 * padded > 5 * (real + len) {
                    break;
                }
                real += len;
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end]
                .iter()
                .map(|&i| rows[i].as_slice())
                .collect();
            for (&i, probs) in order[start..end].iter().zip(self.forward_last(&batch)?) {
                out[i] = probs;
            }
            start = end;
        }
        Ok(out)
    }

    /// One left-padded forward pass; the softmax of each row's last logits.
    fn forward_last(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        ensure!(
            rows.iter().all(|r| !r.is_empty()),
            "cannot judge an empty prompt"
        );
        let device = self.model.device();
        let input = ForwardInput::left_padded(rows, self.tokenizer.pad_or_eos(), &device);
        let logits = self
            .model
            .forward(&input, Forward::logits(LogitsFor::Last))?
            .logits
            .context("the model returned no logits")?;
        let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec()?;
        Ok(logits
            .chunks(self.model.config().vocab_size)
            .map(softmax)
            .collect())
    }
}

impl Judge for LocalJudge {
    fn score(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
        let mut scores = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(PROMPTS_PER_PASS) {
            let ids = chunk
                .iter()
                .map(|p| {
                    Ok(self
                        .tokenizer
                        .encode_chat(&[ChatMessage::new("user", p.as_str())], true)?
                        .ids)
                })
                .collect::<Result<Vec<_>>>()?;
            let numbers = self
                .numbers
                .distribution(&ids, |rows| self.next_token_probs(rows))?;
            scores.extend(numbers.iter().map(|n| aggregate_score(n)));
        }
        Ok(scores)
    }

    fn describe(&self) -> String {
        format!("local:{}", self.source)
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = exps.iter().map(|&e| f64::from(e)).sum();
    exps.into_iter()
        .map(|e| (f64::from(e) / total) as f32)
        .collect()
}

struct NumberToken {
    id: u32,
    digits: String,
    /// Ends in a digit, so the number may go on in the next token.
    open: bool,
}

/// The tokens that can spell a number.
struct NumberVocab {
    /// Integers once whitespace is trimmed: what may start the reply.
    starts: Vec<NumberToken>,
    /// Bare digits: what may continue a number.
    continuations: Vec<NumberToken>,
}

impl NumberVocab {
    fn new(decoded: impl IntoIterator<Item = (u32, String)>) -> Self {
        let (mut starts, mut continuations) = (Vec::new(), Vec::new());
        for (id, text) in decoded {
            let digits = text.trim();
            if number_value(digits).is_none() {
                continue;
            }
            let open = text.ends_with(|c: char| c.is_ascii_digit());
            if digits == text {
                continuations.push(NumberToken {
                    id,
                    digits: digits.to_string(),
                    open,
                });
            }
            starts.push(NumberToken {
                id,
                digits: digits.to_string(),
                open,
            });
        }
        Self {
            starts,
            continuations,
        }
    }

    /// The probability of every number each prompt's reply may start with, as (digits,
    /// probability) pairs for [`aggregate_score`]; see the module docs for how.
    /// `next_token_probs` gives the full next-token distribution after each of a set of rows.
    fn distribution(
        &self,
        prompts: &[Vec<u32>],
        mut next_token_probs: impl FnMut(&[Vec<u32>]) -> Result<Vec<Vec<f32>>>,
    ) -> Result<Vec<Vec<(String, f32)>>> {
        let mut found = Found {
            numbers: vec![Vec::new(); prompts.len()],
            mass: vec![0.0; prompts.len()],
        };
        let mut frontier: Vec<Branch> = (0..prompts.len())
            .map(|prompt| Branch {
                prompt,
                path: Vec::new(),
                digits: String::new(),
                prob: 1.0,
            })
            .collect();
        while !frontier.is_empty() {
            let rows: Vec<Vec<u32>> = frontier
                .iter()
                .map(|b| [&prompts[b.prompt][..], &b.path].concat())
                .collect();
            let mut candidates = Vec::new();
            for (branch, probs) in frontier.into_iter().zip(next_token_probs(&rows)?) {
                candidates.extend(self.extend(branch, &probs, &mut found));
            }
            frontier = found.keep_likely(candidates);
        }
        Ok(found.numbers)
    }

    /// The branches one token longer than `branch` that may still grow, given the next-token
    /// `probs` after it; the numbers that end here go into `found`.
    fn extend(&self, branch: Branch, probs: &[f32], found: &mut Found) -> Vec<Branch> {
        let tokens = if branch.path.is_empty() {
            &self.starts
        } else {
            &self.continuations
        };
        let mut longer = Vec::new();
        let mut goes_on = 0.0;
        for t in tokens {
            let p = f64::from(probs[t.id as usize]);
            goes_on += p;
            let digits = format!("{}{}", branch.digits, t.digits);
            let Some(value) = number_value(&digits).filter(|&v| v <= 100) else {
                continue;
            };
            let prob = branch.prob * p;
            if branch.path.is_empty() {
                found.mass[branch.prompt] += prob;
            }
            // Appending a digit multiplies the value by at least ten.
            if t.open && value <= 10 && !digits.starts_with('0') {
                let path = [&branch.path[..], &[t.id]].concat();
                longer.push(Branch {
                    prompt: branch.prompt,
                    path,
                    digits,
                    prob,
                });
            } else {
                found.numbers[branch.prompt].push((digits, prob as f32));
            }
        }
        if !branch.path.is_empty() {
            let ends_here = branch.prob * (1.0 - goes_on).max(0.0);
            found.numbers[branch.prompt].push((branch.digits, ends_here as f32));
        }
        longer
    }
}

/// A number being spelled: the tokens after `prompt` so far, and their probability.
struct Branch {
    prompt: usize,
    path: Vec<u32>,
    digits: String,
    prob: f64,
}

/// What [`NumberVocab::distribution`] has found so far.
struct Found {
    /// Per prompt, (digits, probability) of the numbers that end.
    numbers: Vec<Vec<(String, f32)>>,
    /// Per prompt, the probability that the reply starts with a number 0..=100: an upper bound
    /// on the final number mass, known after the first step.
    mass: Vec<f64>,
}

impl Found {
    /// The candidates worth another forward pass; the others count as numbers where they stand.
    fn keep_likely(&mut self, mut candidates: Vec<Branch>) -> Vec<Branch> {
        // Least likely first: each prompt's tail stays where it is while it is small enough,
        // and once one branch is followed every likelier one is too.
        candidates.sort_by(|a, b| a.prompt.cmp(&b.prompt).then(a.prob.total_cmp(&b.prob)));
        let (mut tail, mut tail_of) = (0.0, usize::MAX);
        let mut frontier = Vec::new();
        for c in candidates {
            if c.prompt != tail_of {
                (tail, tail_of) = (0.0, c.prompt);
            }
            let m = self.mass[c.prompt];
            if m >= MIN_NUMBER_MASS && tail + c.prob >= EXPAND_SHARE * m {
                frontier.push(c);
            } else {
                tail += c.prob;
                self.numbers[c.prompt].push((c.digits, c.prob as f32));
            }
        }
        frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of single digits (ids 0..=9), a word, " 5" and "10".
    fn vocab() -> NumberVocab {
        let mut tokens: Vec<(u32, String)> = (0..10).map(|d| (d, d.to_string())).collect();
        tokens.extend([
            (10, "the".to_string()),
            (11, " 5".to_string()),
            (12, "10".to_string()),
        ]);
        NumberVocab::new(tokens)
    }

    fn probs(pairs: &[(u32, f32)]) -> Vec<f32> {
        let mut p = vec![0.0; 13];
        for &(id, q) in pairs {
            p[id as usize] = q;
        }
        p
    }

    fn lookup(numbers: &[(String, f32)], digits: &str) -> f32 {
        numbers
            .iter()
            .filter(|(d, _)| d == digits)
            .map(|(_, p)| p)
            .sum()
    }

    #[test]
    fn follows_digits_to_complete_numbers() {
        let v = vocab();
        assert_eq!(v.starts.len(), 12);
        assert_eq!(v.continuations.len(), 11, "\" 5\" cannot continue a number");
        // Prompt [100]: "4" .5 then "7" .8 / end .2; "1" .3 then "0" .5, and "10" then "0" .4;
        // " 5" .1, ending; "the" .1.
        let seen = std::cell::RefCell::new(Vec::new());
        let numbers = v
            .distribution(&[vec![100]], |rows| {
                seen.borrow_mut().extend(rows.iter().cloned());
                Ok(rows
                    .iter()
                    .map(|r| match &r[1..] {
                        [] => probs(&[(4, 0.5), (1, 0.3), (11, 0.1), (10, 0.1)]),
                        [4] => probs(&[(7, 0.8), (10, 0.2)]),
                        [1] => probs(&[(0, 0.5), (10, 0.5)]),
                        [1, 0] => probs(&[(0, 0.4), (10, 0.6)]),
                        [11] => probs(&[(10, 1.0)]),
                        other => panic!("unexpected branch {other:?}"),
                    })
                    .collect())
            })
            .unwrap();
        let n = &numbers[0];
        let close = |d: &str, want: f32| {
            assert!(
                (lookup(n, d) - want).abs() < 1e-6,
                "P({d}) = {}",
                lookup(n, d)
            )
        };
        close("47", 0.4);
        close("4", 0.1);
        close("1", 0.15);
        close("10", 0.09);
        close("100", 0.06);
        close("5", 0.1);
        let mass: f32 = n.iter().map(|(_, p)| p).sum();
        assert!((mass - 0.9).abs() < 1e-6, "{mass}");
        assert_eq!(
            seen.borrow().len(),
            5,
            "root, 4, 1, 10 and \" 5\" are followed"
        );
    }

    #[test]
    fn unlikely_and_out_of_range_branches_stop() {
        let v = vocab();
        // "9" then "9" (99, not followed further); "1" too unlikely to follow; "10" then "5" (105)
        // dropped.
        let numbers = v
            .distribution(&[vec![100]], |rows| {
                Ok(rows
                    .iter()
                    .map(|r| match &r[1..] {
                        [] => probs(&[(9, 0.5), (1, 1e-4), (12, 0.4999)]),
                        [9] => probs(&[(9, 1.0)]),
                        [12] => probs(&[(5, 1.0)]),
                        other => panic!("unexpected branch {other:?}"),
                    })
                    .collect())
            })
            .unwrap();
        let n = &numbers[0];
        assert!((lookup(n, "99") - 0.5).abs() < 1e-6);
        assert!((lookup(n, "1") - 1e-4).abs() < 1e-9);
        assert_eq!(lookup(n, "10"), 0.0);
        assert_eq!(aggregate_score(n).map(|s| s.round()), Some(99.0));
    }

    #[test]
    fn too_little_number_mass_follows_nothing() {
        let mut calls = 0;
        let numbers = vocab()
            .distribution(&[vec![100]], |rows| {
                calls += 1;
                Ok(rows.iter().map(|_| probs(&[(4, 0.2), (10, 0.8)])).collect())
            })
            .unwrap();
        assert_eq!(calls, 1);
        assert!((lookup(&numbers[0], "4") - 0.2).abs() < 1e-6);
        assert_eq!(aggregate_score(&numbers[0]), None);
    }
}
