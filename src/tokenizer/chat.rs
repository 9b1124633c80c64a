//! Chat-template rendering with minijinja, as transformers renders templates.
