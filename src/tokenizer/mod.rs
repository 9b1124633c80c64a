//! Tokenizers built from GGUF metadata or a Hugging Face directory.
