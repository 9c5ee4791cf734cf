#!/usr/bin/env bash
# The engine at size against llama.cpp's own tools (issue #12 item 5), side by side in one run, same threads:
#   qoq:       `qoq bench --engine` on our W4A8KV4 checkpoint (pp, tg at batch 1, QServe protocol over a batch list);
#   llama.cpp: llama-bench (pp, tg; F16 KV + flash attention = its fastest, and Q4_0 KV + flash attention beside it)
#              and llama-batched-bench (the same B × in/out protocol; throughput = B·out / total time, prefill
#              included), on the same weights as llama.cpp's Q4_0 GGUF.
# SAMPLES rounds (default 5), alternating the systems within each round; the report gives medians and min–max.
# Decode at batch 1 is also given as a share of the memory roofline: bytes of weights streamed per token (from the
# checkpoint's config.json: packed 4-bit codes + group parameters + the int8 LM head) × tokens/s over the read
# bandwidth `qoq bench --kernels` measures.
# Usage: bench_size.sh LABEL QOQ_CHECKPOINT LLAMA_Q4_0.gguf   (env: SAMPLES, THREADS, PP, TG, INPUT, OUTPUT, BATCHES,
# INT4_HEAD=1: the engine also with its int4 LM head, as a second qoq column; REPEATS: qoq bench --repeats, default 2)
# Writes $OUT/LABEL.jsonl (one JSON object per measurement) and prints the Markdown table (report_size.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
LABEL=$1 CKPT=$2 GGUF=$3
SAMPLES=${SAMPLES:-5} THREADS=${THREADS:-2} PP=${PP:-512} TG=${TG:-128} REPEATS=${REPEATS:-2}
INPUT=${INPUT:-128} OUTPUT=${OUTPUT:-64} BATCHES=${BATCHES:-1,4,16}
OUT=${QOQ_SIZE_OUT:-$HOME/.cache/qoq/bench-size}; mkdir -p "$OUT"
BIN=$(bash scripts/bench/setup_llamacpp_native.sh)
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
LOG="$OUT/$LABEL.jsonl"; : > "$LOG"
export QOQ_THREADS=$THREADS
CTX=$(( $(echo "$BATCHES" | tr ',' '\n' | sort -n | tail -1) * (INPUT + OUTPUT) + 256 ))
[ "$CTX" -lt $((PP + TG + 64)) ] && CTX=$((PP + TG + 64))
rec() { python3 -c 'import json,sys; print(json.dumps({"system": sys.argv[1], "round": int(sys.argv[2]), "data": json.loads(sys.stdin.read())}))' "$1" "$2" >> "$LOG"; }
echo "{\"label\": \"$LABEL\", \"checkpoint\": \"$CKPT\", \"gguf\": \"$GGUF\", \"threads\": $THREADS, \"llamacpp\": \"$("$BIN/llama-bench" --version 2>&1 | head -1 | tr -d '"')\", \"machine\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) vCPU\"}" > "$OUT/$LABEL.meta.json"
"$QOQ" bench --kernels --repeats 3 --json 2>/dev/null | rec kernels 0
for r in $(seq 1 "$SAMPLES"); do
  echo "round $r/$SAMPLES" >&2
  "$QOQ" bench --engine -m "$CKPT" --lm-head int8 --pp "$PP" --tg "$TG" --input-len "$INPUT" --output-len "$OUTPUT" --batches "$BATCHES" --repeats "$REPEATS" --json 2>/dev/null | rec qoq "$r"
  if [ -n "${INT4_HEAD:-}" ]; then
    "$QOQ" bench --engine -m "$CKPT" --lm-head int4 --pp "$PP" --tg "$TG" --input-len "$INPUT" --output-len "$OUTPUT" --batches "$BATCHES" --repeats "$REPEATS" --json 2>/dev/null | rec qoq-int4 "$r"
  fi
  for kv in f16 q4_0; do
    "$BIN/llama-bench" -m "$GGUF" -t "$THREADS" -p "$PP" -n "$TG" -r 1 -fa 1 -ctk "$kv" -ctv "$kv" -o json 2>/dev/null | rec "llamacpp-bench-$kv" "$r"
  done
  "$BIN/llama-batched-bench" -m "$GGUF" -t "$THREADS" -c "$CTX" -b 2048 -ub 512 -fa on -npp "$INPUT" -ntg "$OUTPUT" -npl "$BATCHES" \
    --output-format jsonl 2>/dev/null | grep '^{' | python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin]))' | rec llamacpp-batched-f16 "$r"
done
python3 scripts/bench/report_size.py "$OUT/$LABEL.meta.json" "$LOG" "$CKPT/config.json"
