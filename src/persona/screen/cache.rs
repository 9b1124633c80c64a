//! The on-disk caches of base answers and projections, under [`cache_dir`].

use super::{SpanProjections, Teacher};
use crate::generate::{Sampling, Specials};
use crate::loader::LoadedModel;
use crate::persona::vector::TraitDirection;
use crate::source::ModelFiles;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `cache_root()/screen`.
pub fn cache_dir() -> PathBuf {
    crate::source::cache_root().join("screen")
}

/// Projections on disk: `DIR/KEY.projections.jsonl`, KEY a hash of the model's identity, one
/// `{"key": sha256 of (direction, sequence, span), "response_avg": .., "prompt_last": ..}` line per
/// sequence and direction, so re-ranking, re-filtering or re-plotting runs no forward pass.
pub struct ProjectionCache {
    pub path: PathBuf,
    model: String,
    entries: HashMap<String, SpanProjections>,
}

#[derive(Serialize, Deserialize)]
struct CachedProjection {
    key: String,
    response_avg: f32,
    prompt_last: f32,
}

impl ProjectionCache {
    pub fn open(dir: &Path, m: &LoadedModel) -> Result<Self> {
        let model = format!(
            "{:?} {:?}",
            model_identity(&m.files)?,
            m.model.model.embed_tokens.weight.val().dtype()
        );
        let key = &hex(&sha2::Sha256::digest(model.as_bytes()))[..16];
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let path = dir.join(format!("{key}.projections.jsonl"));
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Ok(c) = serde_json::from_str::<CachedProjection>(line) {
                    let p = SpanProjections {
                        response_avg: c.response_avg,
                        prompt_last: c.prompt_last,
                    };
                    entries.insert(c.key, p);
                }
            }
        }
        Ok(Self {
            path,
            model,
            entries,
        })
    }

    fn key(&self, seq: &Teacher, d: &TraitDirection) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.model.as_bytes());
        h.update((d.layer as u64).to_le_bytes());
        d.unit.iter().for_each(|x| h.update(x.to_le_bytes()));
        for x in [seq.response.start, seq.response.end, seq.ids.len()] {
            h.update((x as u64).to_le_bytes());
        }
        seq.ids.iter().for_each(|id| h.update(id.to_le_bytes()));
        hex(&h.finalize())
    }

    /// Every direction's projections of `seq`, when all are cached.
    pub fn get(
        &self,
        seq: &Teacher,
        directions: &[TraitDirection],
    ) -> Option<Vec<SpanProjections>> {
        directions
            .iter()
            .map(|d| self.entries.get(&self.key(seq, d)).copied())
            .collect()
    }

    pub fn put(
        &mut self,
        seq: &Teacher,
        directions: &[TraitDirection],
        projections: &[SpanProjections],
    ) -> Result<()> {
        let mut text = String::new();
        for (d, p) in directions.iter().zip(projections) {
            let key = self.key(seq, d);
            text += &serde_json::to_string(&CachedProjection {
                key: key.clone(),
                response_avg: p.response_avg,
                prompt_last: p.prompt_last,
            })?;
            text.push('\n');
            self.entries.insert(key, *p);
        }
        append_lines(&self.path, &text)
    }
}

fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}

/// Appends whole lines to a cache file, starting a new line when a crash left the last one cut.
fn append_lines(path: &Path, text: &str) -> Result<()> {
    let torn = last_byte(path).is_some_and(|c| c != b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    write!(f, "{}{text}", if torn { "\n" } else { "" })
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Base answers on disk: `DIR/KEY.jsonl`, KEY a hash of the model's identity and the generation
/// settings, one `{"prompt": sha256 of the prompt ids, "answer": [ids]}` line per prompt, with
/// `DIR/KEY.meta.json` saying what KEY stands for. Appended to batch by batch, so an interrupted
/// run keeps what it generated.
pub struct AnswerCache {
    pub path: PathBuf,
    answers: HashMap<String, Vec<u32>>,
}

#[derive(Serialize, Deserialize)]
struct CachedAnswer {
    prompt: String,
    answer: Vec<u32>,
}

impl AnswerCache {
    pub fn open(
        dir: &Path,
        m: &LoadedModel,
        sampling: &Sampling,
        specials: &Specials,
    ) -> Result<Self> {
        let meta = serde_json::json!({
            "model": model_identity(&m.files)?,
            "max_new_tokens": sampling.max_new_tokens,
            "decoding": "greedy",
            "stop_ids": specials.stop,
            "pad_id": specials.pad,
            "dtype": format!("{:?}", m.model.model.embed_tokens.weight.val().dtype()),
        });
        let key = hex(&sha2::Sha256::digest(meta.to_string().as_bytes()))[..16].to_owned();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let meta_path = dir.join(format!("{key}.meta.json"));
        if !meta_path.exists() {
            crate::atomic::write_json(&meta_path, &meta)?;
        }
        let path = dir.join(format!("{key}.jsonl"));
        let mut answers = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            // A torn last line (an interrupted run) is only a missing entry.
            for line in text.lines() {
                if let Ok(c) = serde_json::from_str::<CachedAnswer>(line) {
                    answers.insert(c.prompt, c.answer);
                }
            }
        }
        Ok(Self { path, answers })
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    pub fn get(&self, prompt: &[u32]) -> Option<&Vec<u32>> {
        self.answers.get(&prompt_key(prompt))
    }

    pub fn put(&mut self, prompt: &[u32], answer: &[u32]) -> Result<()> {
        let entry = CachedAnswer {
            prompt: prompt_key(prompt),
            answer: answer.to_vec(),
        };
        append_lines(&self.path, &(serde_json::to_string(&entry)? + "\n"))?;
        self.answers.insert(entry.prompt, entry.answer);
        Ok(())
    }
}

fn prompt_key(ids: &[u32]) -> String {
    let mut h = sha2::Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which weights answered: the files' absolute paths, sizes and modification times (cheap, and a
/// replaced file changes it).
fn model_identity(files: &ModelFiles) -> Result<Vec<String>> {
    let paths = files.weight_files()?;
    paths
        .iter()
        .map(|p| {
            let meta =
                std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            Ok(format!("{} {} {modified}", abs.display(), meta.len()))
        })
        .collect()
}
