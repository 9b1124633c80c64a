//! persona-train: LoRA fine-tuning with persona-vector monitoring and preventative steering.
//!
//! Layout: `gguf` reads GGUF files, `tokenizer` builds tokenizers and renders chat templates,
//! `source` resolves model sources to files on disk, `model` is the transformer (it knows nothing
//! about files), `loader` maps checkpoints onto it, `generate` decodes with a KV cache.

pub mod atomic;
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod history;
pub mod judge;
pub mod lm;
pub mod loader;
pub mod merge;
pub mod model;
pub mod persona;
pub mod plot;
pub mod progress;
pub mod recipe;
pub mod report;
pub mod serve;
pub mod source;
pub mod steering;
pub mod tensor_file;
pub mod tensorboard;
pub mod tokenizer;
pub mod train;
