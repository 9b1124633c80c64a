//! Persona vectors (Chen et al. 2025): trait definitions and what is built from them.

pub mod artifacts;
pub mod cvec;
pub mod extract;
pub mod monitor;
pub mod screen;
pub mod sweep;
pub mod vector;
