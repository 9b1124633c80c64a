#!/usr/bin/env python3
"""PyTorch / transformers reference for the server load test (examples/bench_serve.rs): the same
requests (the evaluation questions of datasets/traits/evil.json, request i of client c being
question (c + 16 i) mod 20), chat template applied, greedy, max_new_tokens 32, generated as
left-padded batches of 16 with transformers' generate(), stopping at the end-of-turn token.

    python bench/bench_serve_transformers.py [--smollm2 PATH.gguf] [--clients 16] [--requests 4]
        [--max-tokens 32] [--threads N]

Prints generated tokens/s (tokens up to and including each row's end-of-turn token, over the
wall time of all batches) and the mean time per batch. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import make_golden  # noqa: E402  (for the shared SmolLM2 GGUF lookup / download)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2", metavar="PATH")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    gguf = make_golden.smollm2_path(args)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.padding_side = "left"
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    if tok.pad_token_id is None:
        tok.pad_token_id = stop

    questions = json.loads((REPO / "datasets/traits/evil.json").read_text())["questions"]
    batches = [
        [questions[(c + i * args.clients) % len(questions)] for c in range(args.clients)]
        for i in range(args.requests)
    ]

    def run(batch: list[str], max_new: int) -> int:
        texts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc, do_sample=False, max_new_tokens=max_new, eos_token_id=stop, pad_token_id=tok.pad_token_id
            )
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        return sum(row.index(stop) + 1 if stop in row else len(row) for row in new)

    run(batches[0][:1], 4)  # warm-up
    start = time.perf_counter()
    tokens = sum(run(b, args.max_tokens) for b in batches)
    wall = time.perf_counter() - start
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.requests} batches of {args.clients}, max_new_tokens {args.max_tokens}: {tokens} tokens in {wall:.1f} s")
    print(f"mean time per batch {wall / args.requests:.2f} s")
    print(f"generated {tokens / wall:.1f} tokens/s")


if __name__ == "__main__":
    main()
