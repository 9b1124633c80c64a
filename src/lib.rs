//! persona-train: LoRA fine-tuning with persona-vector monitoring and preventative steering.
//!
//! Layers, bottom-up; a module uses only those below it (`tests/architecture.rs` checks that the
//! graph has no cycles):
//! 1. **formats and machinery**: `gguf`, `tensor_file`, `tensorboard`, `atomic`, `plot`,
//!    `progress`, `device`, `source` (model sources), `tokenizer` (with chat templates);
//! 2. **model**: `model` (the transformer, its LoRA maths, the intervention point; knows no
//!    files) and `loader` (checkpoints and PEFT adapters onto it, `ModelSpec`);
//! 3. **adapters and steering**: `steering` (persona vectors as interventions) and `lm` (model
//!    + adapters + steering, the one value everything above runs);
//! 4. **generation and scoring**: `generate`, `judge`, `data`;
//! 5. **features**: `persona` (artifacts, extraction, probes, sweep, screening, monitoring),
//!    `eval`, `history`, `report`, `merge`, `serve`, then `recipe` and `train` over them;
//! 6. **command line**: `cli`, which turns flags into the plain values above.

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
