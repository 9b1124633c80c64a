#!/usr/bin/env python3
"""PyTorch + PEFT LoRA training baseline: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32 by
transformers), CPU.

    python bench/bench_peft_train.py [--steps 10] [--threads N] [--steer] [--smollm2 PATH.gguf|PATH.whl]

LoRA r = 16, lora_alpha = 32, lora_dropout 0, targets q_proj k_proj v_proj o_proj gate_proj up_proj
down_proj of every block; batch 4 x 256 random token ids (seed 0), labels = input_ids (every token
trained, transformers' shifted causal LM loss), full attention mask; torch.optim.AdamW(lr 1e-4) over
the LoRA weights; each step = forward + backward + optimizer step + zero_grad. The first 2 steps are
warmup and not timed (so --steps must be > 2). Attention is transformers' default (sdpa), train mode,
no gradient checkpointing.

--steer adds forward hooks on every decoder block that add coef * (v[l] - v[l-1]) (coef 1, random
v [L+1, H] * 0.5) to the output of block l-1 at every position, like preventative all-layer steering.

Prints ONE JSON line on stdout: tokens_per_s = batch * seq * timed_steps / timed seconds (training
tokens processed per second), peak_rss_mb (resource.getrusage ru_maxrss, process-wide, so it includes
the GGUF load + dequantize; peak_rss_after_load_mb is the same reading taken right after loading), the
settings and the first / last loss. Progress goes to stderr. Run it on an otherwise idle machine
(see bench_transformers.py). The GGUF is located as in tests/fixtures/make_golden.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

import make_golden  # noqa: E402  (for the shared SmolLM2 GGUF lookup / download)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WARMUP = 2


def log(msg: str) -> None:
    print(f"[bench_peft_train] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="total steps, the first 2 untimed (default 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--steer", action="store_true", help="all-layer incremental steering hooks (coef 1)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--smollm2", metavar="PATH")
    args = ap.parse_args()
    if args.steps <= WARMUP:
        ap.error(f"--steps must be > {WARMUP} (the first {WARMUP} are warmup)")

    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gguf = make_golden.smollm2_path(args)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    load_s = time.perf_counter() - t
    rss_load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    log(f"loaded {gguf} in {load_s:.1f} s, peak RSS {rss_load_mb:.0f} MB")
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"),
    )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen)
    attention_mask = torch.ones_like(input_ids)

    handles = []
    if args.steer:
        L, H = cfg.num_hidden_layers, cfg.hidden_size
        v = torch.randn(L + 1, H, generator=gen) * 0.5
        for block, layer in enumerate(model.get_base_model().model.layers):
            delta = 1.0 * (v[block + 1] - v[block])

            def hook(_m, _i, out, delta=delta):
                if isinstance(out, tuple):
                    return (out[0] + delta, *out[1:])
                return out + delta

            handles.append(layer.register_forward_hook(hook))

    losses, times = [], []
    for step in range(args.steps):
        t = time.perf_counter()
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(out.loss.item())
        if step >= WARMUP:
            times.append(dt)
        log(f"step {step}: loss {losses[-1]:.4f}, {dt:.2f} s{' (warmup)' if step < WARMUP else ''}")
    for h in handles:
        h.remove()

    timed_s = sum(times)
    result = {
        "bench": "pytorch_peft_lora_train",
        "model": gguf.name,
        "tokens_per_s": round(args.batch * args.seq * len(times) / timed_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "peak_rss_after_load_mb": round(rss_load_mb, 1),
        "s_per_step": round(timed_s / len(times), 3),
        "steps": args.steps,
        "timed_steps": len(times),
        "batch": args.batch,
        "seq": args.seq,
        "steer": args.steer,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "lora_r": 16,
        "lora_alpha": 32,
        "trainable_params": n_trainable,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "load_s": round(load_s, 1),
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
