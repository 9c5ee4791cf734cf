#!/usr/bin/env bash
# Issue #18 item 5: the thread pool on a shared machine. The same job (default: `qoq eval` of SmolLM2, 4 windows of
# 2048, the reference forward: sgemm-bound like the quantizer's calibration passes) with 1 and 2 threads, on a quiet
# machine and beside one competing CPU-bound process (a busy loop pinned nowhere, as another user's job would be).
# SAMPLES rounds alternate the four configurations; prints median (min–max) wall seconds per configuration.
# Env: QOQ (binary, default the release build), MODEL, WINDOWS (4), SAMPLES (3). Run on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
QOQ=${QOQ:-}
if [ -z "$QOQ" ]; then swift build -c release --product qoq >&2; QOQ="$(swift build -c release --show-bin-path)/qoq"; fi
MODEL=${MODEL:-${QOQ_CACHE:-$HOME/.cache/qoq}/smollm2/hf} WINDOWS=${WINDOWS:-4} SAMPLES=${SAMPLES:-3}
OUT=$(mktemp -d); trap 'rm -rf "$OUT"; kill "$HOG" 2>/dev/null || true' EXIT
HOG=""
job() { local t0; t0=$(date +%s.%N); QOQ_THREADS=$1 "$QOQ" eval -m "$MODEL" --max-windows "$WINDOWS" >/dev/null 2>&1; echo "$(date +%s.%N) - $t0" | bc; }
for r in $(seq 1 "$SAMPLES"); do
  for threads in 1 2; do echo "quiet $threads $(job $threads)" >> "$OUT/t"; done
  python3 -c 'while True: pass' & HOG=$!
  sleep 1
  for threads in 1 2; do echo "busy $threads $(job $threads)" >> "$OUT/t"; done
  kill "$HOG"; wait "$HOG" 2>/dev/null || true; HOG=""
  echo "round $r/$SAMPLES" >&2
done
python3 - "$OUT/t" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, t, s = line.split(); rows.setdefault((mode, int(t)), []).append(float(s))
print("| machine | threads | wall s, median (min–max) |\n|---|---|---|")
for (mode, t), v in sorted(rows.items()):
    print(f"| {mode} | {t} | {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f}) |")
q2, b1, b2 = (statistics.median(rows[k]) for k in [("quiet", 2), ("busy", 1), ("busy", 2)])
print(f"\nbusy 2 threads / busy 1 thread: {b2 / b1:.2f}; busy / quiet at 2 threads: {b2 / q2:.2f}")
PY
