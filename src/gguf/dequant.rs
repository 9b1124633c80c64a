//! Block dequantizers for GGML quantization types.
