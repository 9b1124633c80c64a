#!/usr/bin/env bash
# persona-train against its Python peer on SmolLM2-135M-Instruct, side by side in one run: the two
# benchmarks alternate N times (persona-train first in odd rounds, Python first in even ones), each
# run prints one JSON line, and the end shows each side's median and their ratio.
#
#   bench/compare.sh train|train-steer|prefill|decode|mmlu [N]          (N = 3 by default)
#
#   train    examples/bench_train vs bench/bench_peft_train.py (PyTorch + PEFT): LoRA r = 16 on all
#            seven projections, batch 4 x 256, every token a target, AdamW; training tokens/s over
#            TRAIN_STEPS timed steps (default 5; persona-train warms up 1 step, PEFT 2).
#   train-steer  the same with all-layer preventative steering on both sides (--steer: coef 1,
#            random vectors; PEFT's side adds coef·(v[l] − v[l−1]) with forward hooks).
#   prefill  examples/bench_engine --prefill-only vs bench/bench_transformers.py --prefill-only:
#            one forward with logits at every position, batch 1 and 8 x 128 tokens, tokens/s
#            (median of 3 after a warm-up, inside each run).
#   decode   the same two without --prefill-only: greedy decoding at batch 1 after a 128-token
#            prompt, 63 / (t(64 new tokens) − t(1 new token)), KV cache (and the prefills again).
#   mmlu     examples/bench_mmlu vs bench/bench_mmlu.py: 0-shot MMLU questions/s at batch
#            MMLU_BATCH (default 8) over the first MMLU_QUESTIONS (default 200) questions of
#            tests/fixtures/mmlu/golden.json, and the accuracy.
#
# ratio = persona-train / Python: above 1, persona-train is faster (for peak_rss_mb, smaller).
# Every run's JSON line also goes to target/compare/<what>-<time>.jsonl, its stderr beside it.
# Both sides use every core (torch's and rayon's defaults). Run it on an otherwise quiet machine:
# the load average is printed before each run. PYTHON picks the interpreter (default python3,
# which needs torch, transformers and, for train, peft).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
rounds=${2:-3}
python=${PYTHON:-python3}
case "$what" in
train | train-steer)
    steps=${TRAIN_STEPS:-5}
    steer=()
    [ "$what" = train-steer ] && steer=(--steer)
    example=bench_train
    ours=(target/release/examples/bench_train --steps $((steps + 1)) "${steer[@]}")
    theirs=("$python" bench/bench_peft_train.py --steps $((steps + 2)) "${steer[@]}")
    keys=(tokens_per_s peak_rss_mb)
    ;;
prefill)
    example=bench_engine
    ours=(target/release/examples/bench_engine --prefill-only)
    theirs=("$python" bench/bench_transformers.py --prefill-only --json)
    keys=(prefill_b1_tokens_per_s prefill_b8_tokens_per_s peak_rss_mb)
    ;;
decode)
    example=bench_engine
    ours=(target/release/examples/bench_engine)
    theirs=("$python" bench/bench_transformers.py --json)
    keys=(decode_tokens_per_s prefill_b1_tokens_per_s prefill_b8_tokens_per_s)
    ;;
mmlu)
    batch=${MMLU_BATCH:-8}
    questions=${MMLU_QUESTIONS:-200}
    example=bench_mmlu
    ours=(target/release/examples/bench_mmlu --batch "$batch" --questions "$questions")
    theirs=("$python" bench/bench_mmlu.py --batch "$batch" --questions "$questions" --json)
    keys=("batch_${batch}_questions_per_s" "batch_${batch}_accuracy")
    ;;
*)
    echo "usage: bench/compare.sh train|train-steer|prefill|decode|mmlu [N]" >&2
    exit 2
    ;;
esac
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer, got '$rounds'" >&2; exit 2; }

cargo build --release --locked --quiet --example "$example"
mkdir -p target/compare
log="target/compare/$what-$(date +%Y%m%d-%H%M%S).jsonl"
: >"$log"

# run SIDE COMMAND...: one benchmark run; its JSON line, tagged with the side, the round and the
# load average before it, goes to the log and the screen.
run() {
    local side=$1 load line
    shift
    load=$(cut -d' ' -f1 /proc/loadavg)
    if ! line=$("$@" 2>>"$log.stderr" | grep '^{' | tail -n 1) || [ -z "$line" ]; then
        echo "$side run $round failed or printed no JSON line: $* (stderr in $log.stderr)" >&2
        tail -n 20 "$log.stderr" >&2
        exit 1
    fi
    line=$("$python" -c 'import json, sys
d = json.loads(sys.argv[1]); d.update(side=sys.argv[2], round=int(sys.argv[3]), load_before=float(sys.argv[4]))
print(json.dumps(d))' "$line" "$side" "$round" "$load")
    echo "$line" | tee -a "$log"
}

for round in $(seq 1 "$rounds"); do
    if ((round % 2)); then
        run persona-train "${ours[@]}"
        run python "${theirs[@]}"
    else
        run python "${theirs[@]}"
        run persona-train "${ours[@]}"
    fi
done

"$python" - "$log" "${keys[@]}" <<'EOF'
import json, statistics, sys

log, keys = sys.argv[1], sys.argv[2:]
runs = [json.loads(line) for line in open(log)]
print(f"\n{len(runs) // 2} rounds; runs in {log}")
print(f"{'metric':32} {'persona-train':>14} {'python':>14} {'ratio':>8}")
for key in keys:
    med = {}
    for side in ("persona-train", "python"):
        values = [r[key] for r in runs if r["side"] == side and r.get(key) is not None]
        med[side] = statistics.median(values) if values else float("nan")
    ratio = med["persona-train"] / med["python"] if med["python"] else float("nan")
    print(f"{key:32} {med['persona-train']:14.3f} {med['python']:14.3f} {ratio:8.3f}")
EOF
