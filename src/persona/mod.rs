//! Persona vectors (Chen et al. 2025): trait definitions and what is built from them.

pub mod activations;
pub mod answers;
pub mod artifacts;
pub mod cvec;
pub mod extract;
pub mod monitor;
pub mod probes;
pub mod screen;
pub mod steer;
pub mod sweep;
pub mod vector;
