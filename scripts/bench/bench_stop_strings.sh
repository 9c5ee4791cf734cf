#!/usr/bin/env bash
# Long stop strings must not slow other clients (BENCHMARKS.md "Hardening"): `qoq serve` on the SmolLM2 FP model,
# bench_stop_strings.py alternating B clients with and without 16 adversarial 401-character stop strings.
#   QOQ_SAMPLES (5)  QOQ_THREADS (2)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >&2
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
export QOQ_THREADS="${QOQ_THREADS:-2}"
OUT="$CACHE/bench-stop"; mkdir -p "$OUT"
PORT=18190
"$QOQ" serve -m "$CACHE/smollm2/hf" --port $PORT > "$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.5; done
python3 scripts/bench/bench_stop_strings.py --url "http://127.0.0.1:$PORT" --samples "${QOQ_SAMPLES:-5}" --json "$OUT/stop-strings.json"
