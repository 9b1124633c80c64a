//! A judge behind any OpenAI-compatible `/chat/completions` endpoint, following the paper's
//! protocol: one user message, `max_tokens` 1, temperature 0, the top 20 logprobs of that one
//! token, aggregated by [`aggregate_score`].

use super::{aggregate_score, Judge};
use crate::tokenizer::ChatMessage;
use anyhow::{anyhow, bail, Result};
use rand::Rng;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_MODEL: &str = "gpt-4.1-mini";
/// The most logprobs the OpenAI API returns per token, and what the paper asks for.
pub const TOP_LOGPROBS: usize = 20;

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server asking for a longer pause than this is waited on for this long only, so that a
/// misbehaving `Retry-After` cannot stall a run for hours; the attempt bound still applies.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(120);
/// How much of a response body goes into an error message.
const BODY_TAIL: usize = 400;

/// A blocking client for one model behind one chat-completions endpoint, with retries.
pub struct OpenAiClient {
    agent: ureq::Agent,
    base_url: String,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    max_retries: u32,
}

/// How one HTTP attempt ended.
enum Attempt {
    Body(String),
    /// Worth trying again: rate limiting, a server error, a timeout, a dropped connection.
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
    Fatal(anyhow::Error),
}

impl OpenAiClient {
    /// `base_url` is the API base as the OpenAI SDKs take it (`https://api.openai.com/v1`,
    /// `http://localhost:8000/v1`); a full `.../chat/completions` URL is accepted as well.
    /// `timeout` bounds each request from connecting to the last byte of the reply;
    /// `max_retries` counts the attempts after the first.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_retries: u32,
    ) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        let endpoint = if base_url.ends_with("/chat/completions") {
            base_url.clone()
        } else {
            format!("{base_url}/chat/completions")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Self {
            agent,
            base_url,
            endpoint,
            model: model.to_string(),
            api_key,
            timeout,
            max_retries,
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The assistant's reply text.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        max_tokens: usize,
        temperature: f32,
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({ "role": m.role, "content": m.content }))
            .collect();
        let reply = self.post(&json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }))?;
        let content = self.field(&reply, &["choices", "0", "message", "content"], "")?;
        content
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.missing(&reply, "choices[0].message.content is not a string"))
    }

    /// The top [`TOP_LOGPROBS`] candidates for the first token of the reply to `prompt` (sent as
    /// one user message), as probabilities.
    pub fn top_logprobs(&self, prompt: &str) -> Result<Vec<(String, f32)>> {
        let reply = self.post(&json!({
            "model": self.model,
            "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": true,
            "top_logprobs": TOP_LOGPROBS,
        }))?;
        let path = ["choices", "0", "logprobs", "content", "0", "top_logprobs"];
        let no_logprobs = ": the endpoint returned no logprobs; the judge needs an endpoint that supports logprobs";
        let top = self.field(&reply, &path, no_logprobs)?;
        let entries = top
            .as_array()
            .ok_or_else(|| self.missing(&reply, "top_logprobs is not an array"))?;
        entries
            .iter()
            .map(|e| match (e["token"].as_str(), e["logprob"].as_f64()) {
                (Some(token), Some(logprob)) => Ok((token.to_string(), logprob.exp() as f32)),
                _ => Err(self.missing(
                    &reply,
                    "a top_logprobs entry lacks a string `token` or a numeric `logprob`",
                )),
            })
            .collect()
    }

    /// Follows `path` (array indices as numbers) into `reply`; an error names the first missing
    /// step, followed by `hint`.
    fn field<'a>(&self, reply: &'a Value, path: &[&str], hint: &str) -> Result<&'a Value> {
        let mut at = reply;
        for (depth, key) in path.iter().enumerate() {
            let next = match key.parse::<usize>() {
                Ok(i) => at.get(i),
                Err(_) => at.get(key),
            };
            at = match next {
                Some(v) if !v.is_null() => v,
                _ => {
                    return Err(
                        self.missing(reply, &format!("{} missing{hint}", dotted(&path[..=depth])))
                    )
                }
            };
        }
        Ok(at)
    }

    fn missing(&self, reply: &Value, what: &str) -> anyhow::Error {
        anyhow!(
            "{}: {what}; the response: {}",
            self.endpoint,
            tail(&reply.to_string())
        )
    }

    /// Posts `body`, retrying transient failures with exponential backoff and jitter (or the
    /// server's `Retry-After`), and returns the parsed JSON reply.
    fn post(&self, body: &Value) -> Result<Value> {
        let mut retry = 0;
        loop {
            match self.attempt(body) {
                Attempt::Body(text) => {
                    return serde_json::from_str(&text).map_err(|e| {
                        anyhow!(
                            "{}: the response is not valid JSON ({e}): {}",
                            self.endpoint,
                            tail(&text)
                        )
                    })
                }
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient { why, .. } if retry == self.max_retries => {
                    bail!(
                        "{}: giving up after {} attempt(s); the last one: {why}",
                        self.endpoint,
                        retry + 1
                    )
                }
                Attempt::Transient { retry_after, .. } => {
                    std::thread::sleep(retry_after.unwrap_or_else(|| backoff(retry)));
                    retry += 1;
                }
            }
        }
    }

    fn attempt(&self, body: &Value) -> Attempt {
        let mut request = self.agent.post(&self.endpoint);
        if let Some(key) = &self.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send_json(body) {
            Ok(r) => r,
            Err(e) => return self.transport_error(e),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s).min(RETRY_AFTER_MAX));
        let text = match response.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return self.transport_error(e),
        };
        match status {
            200..=299 => Attempt::Body(text),
            429 | 500..=599 => Attempt::Transient {
                why: format!("HTTP {status}: {}", tail(&text)),
                retry_after,
            },
            401 | 403 => Attempt::Fatal(anyhow!(
                "{}: HTTP {status} (check the API key and its variable, api_key_env): {}",
                self.endpoint,
                tail(&text)
            )),
            _ => Attempt::Fatal(anyhow!("{}: HTTP {status}: {}", self.endpoint, tail(&text))),
        }
    }

    fn transport_error(&self, e: ureq::Error) -> Attempt {
        match e {
            ureq::Error::Timeout(_) => Attempt::Transient {
                why: format!("no complete reply within the {:?} timeout", self.timeout),
                retry_after: None,
            },
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_) => {
                Attempt::Transient {
                    why: e.to_string(),
                    retry_after: None,
                }
            }
            e => Attempt::Fatal(anyhow!("{}: {e}", self.endpoint)),
        }
    }
}

fn backoff(retry: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1 << retry.min(16))
        .min(BACKOFF_MAX);
    exp.mul_f64(rand::rng().random_range(0.5..1.5))
}

fn dotted(path: &[&str]) -> String {
    path.iter().fold(String::new(), |mut s, key| {
        if key.parse::<usize>().is_ok() {
            s.push_str(&format!("[{key}]"));
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        }
        s
    })
}

fn tail(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().rev().nth(BODY_TAIL) {
        Some((i, _)) => format!("…{}", &text[i..]),
        None if text.is_empty() => "(empty body)".to_string(),
        None => text.to_string(),
    }
}

/// [`OpenAiClient::top_logprobs`] for many prompts at once, at most `concurrency` in flight.
pub struct OpenAiJudge {
    client: OpenAiClient,
    concurrency: usize,
}

impl OpenAiJudge {
    pub fn new(client: OpenAiClient, concurrency: usize) -> Self {
        Self {
            client,
            concurrency: concurrency.max(1),
        }
    }
}

impl Judge for OpenAiJudge {
    fn score(&self, prompts: &[String]) -> Result<Vec<Option<f32>>> {
        let next = AtomicUsize::new(0);
        // Once one prompt has failed the batch is lost, so the other workers stop taking work.
        let failed = AtomicBool::new(false);
        let work = || {
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(prompt) = prompts.get(i) else { break };
                let result = self
                    .client
                    .top_logprobs(prompt)
                    .map(|top| aggregate_score(&top));
                failed.fetch_or(result.is_err(), Ordering::Relaxed);
                done.push((i, result));
            }
            done
        };
        let done: Vec<(usize, Result<Option<f32>>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..self.concurrency.min(prompts.len()))
                .map(|_| s.spawn(work))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut scores = vec![None; prompts.len()];
        let mut first_error: Option<(usize, anyhow::Error)> = None;
        for (i, result) in done {
            match result {
                Ok(score) => scores[i] = score,
                Err(e) if first_error.as_ref().is_none_or(|(j, _)| i < *j) => {
                    first_error = Some((i, e))
                }
                Err(_) => {}
            }
        }
        match first_error {
            Some((i, e)) => Err(e.context(format!("judging prompt {i} of {}", prompts.len()))),
            None => Ok(scores),
        }
    }

    fn describe(&self) -> String {
        format!("openai:{}@{}", self.client.model, self.client.base_url)
    }
}
