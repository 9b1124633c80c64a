#!/usr/bin/env bash
# The GPU benchmark of issue 11: LoRA r=32 training (batch 8x512, every token a target), prefill
# and decode at the shapes people fine-tune, random weights (nothing downloaded), bf16 on cuda:0.
# One JSON line per shape from examples/bench_gpu.rs, plus the peak GPU memory nvidia-smi saw.
#
# On the GPU machine (the binary is built beforehand, where there is time: 71 min on 2 cores):
#   scripts/setup-llvm.sh && cargo build --release --locked --features cuda --example bench_gpu
#   pip install nvidia-cuda-nvcc-cu12   # libdevice, unless a CUDA toolkit is installed
#   bench/gpu.sh [SHAPE ...]            # default: smollm2-135m qwen2.5-7b llama-3.1-8b
# BENCH_GPU_BIN names another binary (a .zst is unpacked first); OUT names the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BENCH_GPU_BIN:-target/release/examples/bench_gpu}
if [[ ! -x $bin && -f $bin.zst ]]; then
    zstd -q -d -f "$bin.zst" -o "$bin" && chmod +x "$bin"
fi
[[ -x $bin ]] || { echo "bench/gpu.sh: no $bin; build it with --features cuda (see above)" >&2; exit 1; }
if [[ -z ${CUDA_PATH:-} ]]; then
    CUDA_PATH=$(python3 -c 'import nvidia.cuda_nvcc as m; print(m.__path__[0])' 2>/dev/null) || true
    export CUDA_PATH
fi
out=${OUT:-bench/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
shapes=("$@")
[[ ${#shapes[@]} -gt 0 ]] || shapes=(smollm2-135m qwen2.5-7b llama-3.1-8b)
for shape in "${shapes[@]}"; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$out/mem-$shape.log" &
    sampler=$!
    status=0
    "$bin" --shape "$shape" --device cuda --dtype bf16 --r 32 --batch 8 --seq 512 --steps 6 \
        >"$out/$shape.json" 2>"$out/$shape.log" || status=$?
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$out/mem-$shape.log" | tail -1)
    echo "$shape: exit $status, peak GPU memory ${peak:-?} MiB: $(cat "$out/$shape.json")" | tee -a "$out/gpu.jsonl.txt"
    tail -3 "$out/$shape.log"
done
