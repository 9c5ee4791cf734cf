#!/usr/bin/env bash
# Issue #18 item 5: the thread pool on a shared machine. The same job (default: `qoq eval` of SmolLM2, 4 windows of
# 2048, the reference forward: sgemm-bound like the quantizer's calibration passes) with 1 and 2 threads, on a quiet
# machine and beside one competing CPU-bound process (a busy loop pinned nowhere, as another user's job would be).
# SAMPLES rounds alternate the configurations (and the binaries, when several are given); prints median (min–max)
# wall seconds per binary and configuration.
# Env: QOQ (binary, default the release build) or BINS="name=path name=path" to compare builds side by side in the
# same rounds; MODEL, WINDOWS (4), SAMPLES (3); JOB=quantize times `qoq quantize recipes/qoq-g64.yaml` on CALIB (8)
# sequences of 1024 tokens instead (no evaluation, nothing saved). Run on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BINS=${BINS:-}
if [ -z "$BINS" ]; then
  QOQ=${QOQ:-}
  if [ -z "$QOQ" ]; then swift build -c release --product qoq >&2; QOQ="$(swift build -c release --show-bin-path)/qoq"; fi
  BINS="qoq=$QOQ"
fi
for b in $BINS; do [ -x "${b#*=}" ] || { echo "bench_shared: ${b#*=} is not an executable" >&2; exit 2; }; done
MODEL=${MODEL:-${QOQ_CACHE:-$HOME/.cache/qoq}/smollm2/hf} WINDOWS=${WINDOWS:-4} SAMPLES=${SAMPLES:-3}
JOB=${JOB:-eval} CALIB=${CALIB:-8}
case $JOB in
  eval) args=(eval -m "$MODEL" --max-windows "$WINDOWS") ;;
  quantize) args=(quantize recipes/qoq-g64.yaml --model-path "$MODEL" --calib-num-samples "$CALIB" --skip-eval --cache-root none) ;;
  *) echo "bench_shared: JOB is eval or quantize, not $JOB" >&2; exit 2 ;;
esac
OUT=$(mktemp -d); trap 'rm -rf "$OUT"; kill "$HOG" 2>/dev/null || true' EXIT
HOG=""
job() {  # binary threads -> wall seconds; a failing run stops the script with its output
  local t0 t1; t0=$(date +%s.%N)
  if ! QOQ_THREADS=$2 "$1" "${args[@]}" > "$OUT/log" 2>&1; then
    echo "bench_shared: $1 $JOB failed:" >&2; tail -5 "$OUT/log" >&2; exit 1
  fi
  t1=$(date +%s.%N); echo "$t1 - $t0" | bc
}
for r in $(seq 1 "$SAMPLES"); do
  for b in $BINS; do for threads in 1 2; do echo "${b%%=*} quiet $threads $(job "${b#*=}" $threads)" >> "$OUT/t"; done; done
  python3 -c 'while True: pass' & HOG=$!
  sleep 1
  for b in $BINS; do for threads in 1 2; do echo "${b%%=*} busy $threads $(job "${b#*=}" $threads)" >> "$OUT/t"; done; done
  kill "$HOG"; wait "$HOG" 2>/dev/null || true; HOG=""
  echo "round $r/$SAMPLES" >&2
done
python3 - "$OUT/t" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, mode, t, s = line.split(); rows.setdefault((name, mode, int(t)), []).append(float(s))
print("| binary | machine | threads | wall s, median (min–max) |\n|---|---|---|---|")
for (name, mode, t), v in sorted(rows.items()):
    print(f"| {name} | {mode} | {t} | {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f}) |")
for name in sorted({k[0] for k in rows}):
    q2, b1, b2 = (statistics.median(rows[(name,) + k]) for k in [("quiet", 2), ("busy", 1), ("busy", 2)])
    print(f"\n{name}: busy 2 threads / busy 1 thread: {b2 / b1:.2f}; busy / quiet at 2 threads: {b2 / q2:.2f}")
PY
