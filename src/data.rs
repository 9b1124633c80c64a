//! Training data: chat JSONL files, tokenized through the model's chat template, with the loss
//! on assistant tokens only, and batches of similar length.

use crate::tokenizer::chat::parse_chat_line;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

/// One tokenized chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `targets[i]`: token `i` is predicted by the loss (it belongs to an assistant message or is
    /// the end-of-turn token that closes one). Token 0 never is.
    pub targets: Vec<bool>,
    /// `file:line`, for messages.
    pub origin: String,
}

impl Example {
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t).count()
    }
}

/// One non-blank line of a chat JSONL file, parsed by [`parse_chat_line`].
#[derive(Debug, Clone)]
pub struct ChatLine {
    /// 1-based line in the file.
    pub line: usize,
    /// `file:line`, for messages.
    pub origin: String,
    /// The line as read, for writing a filtered copy of the file.
    pub raw: String,
    pub messages: Vec<ChatMessage>,
}

/// Reads `{"messages": [...]}` lines (the first `limit` chats when given) and passes each to
/// `accept`, which applies the caller's own rule. Blank lines are skipped; errors name the file
/// and line, and the first bad line stops the reading; a file without chats is an error.
/// `what` names the file in the error when it cannot be read ("training data").
pub fn read_chat_lines<T>(
    path: &Path,
    what: &str,
    limit: Option<usize>,
    mut accept: impl FnMut(ChatLine) -> Result<T>,
) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut chats = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if limit.is_some_and(|n| chats.len() >= n) {
            break;
        }
        if raw.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        let messages = parse_chat_line(raw).with_context(|| origin.clone())?;
        chats.push(accept(ChatLine {
            line: i + 1,
            origin,
            raw: raw.to_owned(),
            messages,
        })?);
    }
    ensure!(!chats.is_empty(), "{}: no chats", path.display());
    Ok(chats)
}

/// Training's rule: an assistant message somewhere, or there is nothing to learn.
fn training_chat(chat: ChatLine) -> Result<ChatLine> {
    ensure!(
        chat.messages.iter().any(|msg| msg.role == "assistant"),
        "{}: no assistant message, so nothing to train on",
        chat.origin
    );
    Ok(chat)
}

/// Reads a training file's chats as `(line, messages)`; errors name the file, the line and what
/// is wrong.
pub fn read_chats(path: &Path) -> Result<Vec<(usize, Vec<ChatMessage>)>> {
    read_chat_lines(path, "training data", None, |c| {
        training_chat(c).map(|c| (c.line, c.messages))
    })
}

/// Tokenizes a chat; every assistant message (and the end-of-turn token after it) is a target.
///
/// Spans come from rendering the chat up to each assistant message, which must render as a
/// prefix of the whole chat (true of the usual templates; checked).
pub fn tokenize(tokenizer: &Tokenizer, messages: &[ChatMessage], origin: &str) -> Result<Example> {
    let full = tokenizer
        .encode_chat(messages, false)
        .with_context(|| origin.to_string())?;
    let mut targets = vec![false; full.ids.len()];
    for (k, msg) in messages.iter().enumerate() {
        if msg.role != "assistant" {
            continue;
        }
        let part = if k + 1 == messages.len() {
            full.response_start.zip(full.response_end)
        } else {
            let prefix = tokenizer
                .encode_chat(&messages[..=k], false)
                .with_context(|| origin.to_string())?;
            ensure!(
                full.ids.starts_with(&prefix.ids),
                "{origin}: the chat template does not render the chat up to message {k} as a prefix of the whole chat, so assistant tokens cannot be located"
            );
            prefix.response_start.zip(prefix.response_end)
        };
        let (start, end) = part.with_context(|| {
            format!("{origin}: cannot locate assistant message {k} in the rendered chat")
        })?;
        for t in &mut targets[start.max(1)..end] {
            *t = true;
        }
        if let Some(&next) = full.ids.get(end) {
            if tokenizer.stop_ids().contains(&next) {
                targets[end] = true;
            }
        }
    }
    Ok(Example {
        ids: full.ids,
        targets,
        origin: origin.to_string(),
    })
}

/// Reads and tokenizes every file; chats longer than `max_seq_len` are truncated, and dropped
/// (with a warning) when no target is left.
pub fn load_examples(
    files: &[impl AsRef<Path>],
    tokenizer: &Tokenizer,
    max_seq_len: usize,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    let (mut truncated, mut dropped) = (0, 0);
    for file in files {
        for chat in read_chat_lines(file.as_ref(), "training data", None, training_chat)? {
            let mut ex = tokenize(tokenizer, &chat.messages, &chat.origin)?;
            if ex.ids.len() > max_seq_len {
                truncated += 1;
                ex.ids.truncate(max_seq_len);
                ex.targets.truncate(max_seq_len);
            }
            if ex.num_targets() == 0 {
                dropped += 1;
                continue;
            }
            out.push(ex);
        }
    }
    if truncated > 0 {
        eprintln!(
            "note: {truncated} chats longer than data.max_seq_len = {max_seq_len} were truncated ({dropped} dropped: no assistant tokens left)"
        );
    }
    if out.is_empty() {
        bail!("no training examples: every chat was empty after truncation");
    }
    Ok(out)
}

/// Splits off the held-out fraction (at least one example when the fraction is positive and
/// there are two or more), seeded.
pub fn split_held_out(
    mut examples: Vec<Example>,
    fraction: f32,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let k = ((n as f32 * fraction).round() as usize).min(n.saturating_sub(1));
    let k = if fraction > 0.0 && n >= 2 {
        k.max(1)
    } else {
        k
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5e_ed0f_d47a));
    let held: std::collections::BTreeSet<usize> = order[..k].iter().copied().collect();
    let mut train = Vec::with_capacity(n - k);
    let mut val = Vec::with_capacity(k);
    for (i, ex) in examples.drain(..).enumerate() {
        if held.contains(&i) {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    (train, val)
}

/// One epoch's micro-batches, as indices into the examples: a seeded shuffle, then groups of 64
/// batches' worth sorted by length (less padding), then the batch order shuffled again. The same
/// `(seed, epoch)` always gives the same batches, which is what resuming relies on.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for group in order.chunks(batch_size * 64) {
        let mut group = group.to_vec();
        group.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(group.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}
