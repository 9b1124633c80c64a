//! GGUF v3 reader (owned by the GGUF work item; see the interface contract in the task).
