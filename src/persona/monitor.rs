//! Last-prompt-token monitoring: how far a prompt pushes the model along a persona vector before
//! it has written a single reply token.
//!
//! The measured position is the last token of the prompt rendered with the generation prompt,
//! i.e. exactly the position whose logits give the first reply token (the paper's "projection at
//! the last prompt token", which predicts the trait expression of the reply to come).
//!
//! `persona-train monitor` reads one prompt per line, in any of these forms:
//! - a chat row `{"messages": [...]}` (system/user/assistant turns, not ending with an assistant
//!   message: the reply to come is what is monitored);
//! - a JSON string `"..."`, one user message (for text with newlines);
//! - anything else: the line's text as one user message.
//!
//! It writes one JSON line per prompt and trait and repeats alerts on stderr.

use crate::lm::Lm;
use crate::loader::ModelSpec;
use crate::model::{Forward, ForwardInput};
use crate::persona::vector::TraitDirection;
use crate::progress::Progress;
use crate::tokenizer::chat::parse_chat_line;
use crate::tokenizer::ChatMessage;
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::Tensor;
use serde::Serialize;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Everything one `persona-train monitor` run needs.
#[derive(Debug, Clone)]
pub struct MonitorJob {
    pub model: ModelSpec,
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf); repeat to monitor
    /// several traits in the same pass.
    pub vector: Vec<PathBuf>,
    /// Which of the file's vectors to project on (the paper monitors with the response-average
    /// persona vector).
    pub vector_kind: String,
    /// Hidden-state index to project at (every vector); default: each file's recommended layer,
    /// else 2/3 of the depth.
    pub layer: Option<usize>,
    /// Alert when a projection is above this. One value for every vector, or one per `--vector`
    /// in the same order.
    pub threshold: Vec<f32>,
    /// Prompts file (see the module docs for the accepted line forms); `-` reads stdin.
    pub prompts: String,
    /// Write the JSON lines here instead of stdout.
    pub out: Option<PathBuf>,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// Exit with an error when any prompt alerts (for pipelines).
    pub fail_on_alert: bool,
}

/// One input line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoredPrompt {
    /// 1-based line in the input.
    pub line: usize,
    pub messages: Vec<ChatMessage>,
}

impl MonitoredPrompt {
    /// The last user message (what the output shows as "prompt").
    pub fn text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .or(self.messages.last())
            .map_or("", |m| m.content.as_str())
    }
}

/// Parses monitor input (see the module docs); `origin` names it in errors (`file:line`).
pub fn parse_prompts(text: &str, origin: &str) -> Result<Vec<MonitoredPrompt>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let messages = prompt_messages(raw, &format!("{origin}:{}", i + 1))?;
        out.push(MonitoredPrompt {
            line: i + 1,
            messages,
        });
    }
    ensure!(!out.is_empty(), "{origin}: no prompts");
    Ok(out)
}

/// One input line in any of the module docs' forms; `at` (`file:line`) names it in errors.
fn prompt_messages(raw: &str, at: &str) -> Result<Vec<ChatMessage>> {
    let trimmed = raw.trim();
    if trimmed.starts_with('{') {
        let m = parse_chat_line(trimmed).with_context(|| {
            format!(
                "{at}: a line starting with '{{' must be a chat row (write plain text that starts with '{{' as a JSON string)"
            )
        })?;
        ensure!(
            m.last().is_some_and(|msg| msg.role != "assistant"),
            "{at}: the chat ends with an assistant message; monitor measures the prompt of the reply to come, so end it with a user message"
        );
        Ok(m)
    } else if trimmed.starts_with('"') {
        let s: String = serde_json::from_str(trimmed)
            .with_context(|| format!("{at}: a line starting with '\"' must be one JSON string"))?;
        Ok(vec![ChatMessage::new("user", s)])
    } else {
        Ok(vec![ChatMessage::new("user", raw)])
    }
}

/// Projection of every prompt's last token on every direction, in one left-padded forward pass
/// (left padding puts every row's last prompt token in the last column). `prompts` are token ids
/// with the chat template and generation prompt applied. Returns `[prompt][direction]`.
pub fn last_token_projections(
    lm: Lm,
    prompts: &[Vec<u32>],
    directions: &[TraitDirection],
) -> Result<Vec<Vec<f32>>> {
    ensure!(
        prompts.iter().all(|p| !p.is_empty()),
        "cannot monitor an empty prompt"
    );
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let out = lm.forward(
        &ForwardInput::left_padded(prompts, 0, &lm.device()),
        Forward::hidden_states(),
    )?;
    last_column_projections(&out.hidden_states, directions)
}

/// Projection of every row's last column on every direction, from a forward pass's hidden states
/// (under left padding, each row's last prompt token). Returns `[row][direction]`.
pub fn last_column_projections(
    hidden_states: &[Tensor<3>],
    directions: &[TraitDirection],
) -> Result<Vec<Vec<f32>>> {
    let b = hidden_states.first().map_or(0, |h| h.dims()[0]);
    let rows_at = read_layers(hidden_states, directions, |h| {
        let [_, t, hidden] = h.dims();
        Ok(h.clone()
            .slice([0..b, t - 1..t, 0..hidden])
            .into_data()
            .convert::<f32>()
            .try_into_vec()?)
    })?;
    let mut result = vec![Vec::with_capacity(directions.len()); b];
    for d in directions {
        let last: &Vec<f32> = &rows_at[&d.layer];
        let hidden = last.len() / b;
        for (r, row) in result.iter_mut().enumerate() {
            row.push(d.project(&last[r * hidden..(r + 1) * hidden]));
        }
    }
    Ok(result)
}

/// `read` applied once to each distinct layer the directions project at (several directions
/// often share one), after checking that the model returns that layer.
pub(crate) fn read_layers<T>(
    hidden_states: &[Tensor<3>],
    directions: &[TraitDirection],
    read: impl Fn(&Tensor<3>) -> Result<T>,
) -> Result<BTreeMap<usize, T>> {
    let mut layers = BTreeMap::new();
    for d in directions {
        ensure!(
            d.layer < hidden_states.len(),
            "{}: layer {} is out of range (the model returns {} hidden states)",
            d.trait_name,
            d.layer,
            hidden_states.len()
        );
        if let Entry::Vacant(e) = layers.entry(d.layer) {
            e.insert(read(&hidden_states[d.layer])?);
        }
    }
    Ok(layers)
}

/// One output line of `persona-train monitor`.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorRecord {
    /// 0-based index among the prompts.
    pub index: usize,
    /// 1-based line of the input.
    pub line: usize,
    pub prompt: String,
    #[serde(rename = "trait")]
    pub trait_name: String,
    pub layer: usize,
    pub projection: f32,
    pub threshold: Option<f32>,
    pub alert: bool,
}

/// Reads the prompts, projects each one's last token on every vector and writes the records.
pub fn run(a: &MonitorJob) -> Result<()> {
    ensure!(a.batch_size > 0, "--batch-size must be at least 1");
    ensure!(
        a.threshold.len() <= 1 || a.threshold.len() == a.vector.len(),
        "--threshold was given {} times for {} --vector files: give one value for all, or one per vector",
        a.threshold.len(),
        a.vector.len()
    );
    // Every prompt is parsed before the model loads, so a bad line fails at once.
    let (text, origin) = read_input(&a.prompts)?;
    let prompts = parse_prompts(&text, &origin)?;
    let m = a.model.load()?;
    let directions = a
        .vector
        .iter()
        .map(|p| TraitDirection::load(p, &a.vector_kind, a.layer, m.model.config()))
        .collect::<Result<Vec<_>>>()?;
    let ids = prompts
        .iter()
        .map(|p| {
            Ok(m.tokenizer
                .encode_chat(&p.messages, true)
                .with_context(|| format!("{origin}:{}", p.line))?
                .ids)
        })
        .collect::<Result<Vec<_>>>()?;

    // Batch by batch, each batch's records written as soon as it is measured.
    let mut records = Records::new(a, &origin, &directions, prompts.len())?;
    for (ps, ids) in prompts.chunks(a.batch_size).zip(ids.chunks(a.batch_size)) {
        let projections = last_token_projections(Lm::new(&m.model), ids, &directions)?;
        records.write_batch(ps, projections)?;
    }
    let alerts = records.finish();
    if a.fail_on_alert && alerts > 0 {
        bail!(
            "{alerts} of {} prompts alerted (--fail-on-alert)",
            prompts.len()
        );
    }
    Ok(())
}

/// The prompts' text and the name errors give it: a file, or stdin for `-`.
fn read_input(prompts: &str) -> Result<(String, String)> {
    if prompts == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .context("cannot read prompts from stdin")?;
        let s = String::from_utf8(bytes).context("prompts on stdin are not UTF-8")?;
        Ok((s, "<stdin>".to_owned()))
    } else {
        let s = std::fs::read_to_string(prompts)
            .with_context(|| format!("cannot read prompts file {prompts}"))?;
        Ok((s, prompts.to_owned()))
    }
}

/// Where the records go, and what writing them needs: the directions with their thresholds, the
/// progress bar (alerts are printed above it) and the prompts written and alerted so far.
struct Records<'a> {
    sink: Box<dyn Write>,
    origin: &'a str,
    directions: &'a [TraitDirection],
    thresholds: Vec<Option<f32>>,
    bar: Option<Progress>,
    written: usize,
    alerts: usize,
}

impl<'a> Records<'a> {
    fn new(
        a: &MonitorJob,
        origin: &'a str,
        directions: &'a [TraitDirection],
        prompts: usize,
    ) -> Result<Self> {
        let sink: Box<dyn Write> = match &a.out {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            )),
            None => Box::new(std::io::stdout().lock()),
        };
        // One threshold for every direction, or one each.
        let thresholds = (0..directions.len())
            .map(|i| a.threshold.get(i).or(a.threshold.first()).copied())
            .collect();
        Ok(Self {
            sink,
            origin,
            directions,
            thresholds,
            bar: (prompts > a.batch_size)
                .then(|| Progress::new(prompts as u64, "last-token projections")),
            written: 0,
            alerts: 0,
        })
    }

    /// One record per prompt and direction; `projections` is `[prompt][direction]`.
    fn write_batch(
        &mut self,
        prompts: &[MonitoredPrompt],
        projections: Vec<Vec<f32>>,
    ) -> Result<()> {
        for (p, row) in prompts.iter().zip(projections) {
            let mut alerted = false;
            for (di, projection) in row.into_iter().enumerate() {
                let record = self.record(p, di, projection);
                if record.alert {
                    self.print_alert(p, &record);
                    alerted = true;
                }
                writeln!(self.sink, "{}", serde_json::to_string(&record)?)?;
            }
            self.alerts += alerted as usize;
            self.written += 1;
        }
        self.sink.flush()?;
        if let Some(bar) = &self.bar {
            bar.inc(prompts.len() as u64);
        }
        Ok(())
    }

    fn record(&self, p: &MonitoredPrompt, di: usize, projection: f32) -> MonitorRecord {
        let (d, threshold) = (&self.directions[di], self.thresholds[di]);
        MonitorRecord {
            index: self.written,
            line: p.line,
            prompt: p.text().to_owned(),
            trait_name: d.trait_name.clone(),
            layer: d.layer,
            projection,
            threshold,
            alert: threshold.is_some_and(|t| projection > t),
        }
    }

    fn print_alert(&self, p: &MonitoredPrompt, r: &MonitorRecord) {
        let msg = format!(
            "ALERT {}:{}: {} projection {:.3} > {} at layer {}: {}",
            self.origin,
            p.line,
            r.trait_name,
            r.projection,
            r.threshold.unwrap_or_default(),
            r.layer,
            one_line(p.text(), 80)
        );
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }

    /// Clears the progress bar; returns how many prompts alerted.
    fn finish(self) -> usize {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.alerts
    }
}

/// The text on one line, cut to `max` characters.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_chats_json_strings_and_plain_text() {
        let text = "plain question?\n\n\"a \\\"quoted\\\"\\nline\"\n{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"U\"}]}\n";
        let p = parse_prompts(text, "in").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[0].messages,
            vec![ChatMessage::new("user", "plain question?")]
        );
        assert_eq!(p[1].line, 3);
        assert_eq!(p[1].text(), "a \"quoted\"\nline");
        assert_eq!(p[2].messages.len(), 2);
        assert_eq!(p[2].text(), "U");
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = parse_prompts("ok\n{not json\n", "in.txt")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("in.txt:2:"), "{err}");
        let err = parse_prompts(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}",
            "in",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("in:1") && err.contains("assistant"), "{err}");
        assert!(parse_prompts("\n  \n", "in").is_err());
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\nb  c", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
