#!/usr/bin/env bash
# The server under load (BENCHMARKS.md, issue #6), side by side with llama.cpp's server in one run:
#  1. `qoq serve` on the QoQ SmolLM2 checkpoint; load_test.py: C concurrent streaming clients, R requests
#     (~150-token WikiText-2 prompts, 64 new tokens, every 8th client hangs up after 4 chunks); /metrics must
#     show no page in use afterwards; then SIGTERM, which must drain and exit 0.
#  2. llama.cpp's server (llama-cpp-python[server], built from source by setup_llamacpp.sh) on the same model as
#     Q4_0, same threads, same load. Its default `interrupt_requests` cuts the running stream short whenever a new
#     request arrives (every stream then ends after a token or two), so it is turned off: requests queue instead.
# Writes $OUT/server-qoq.json, $OUT/server-llamacpp.json and prints the BENCHMARKS.md section (report_server.py).
#   QOQ_CLIENTS (64)  QOQ_REQUESTS (320)  QOQ_MAX_TOKENS (64)  QOQ_THREADS (2)  QOQ_SKIP_PEER=1: qoq only
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >&2
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
CKPT="${QOQ_ENGINE_CKPT:-$CACHE/bench-quant/qoq-g64}"
[ -f "$CKPT/config.json" ] || { echo "no checkpoint at $CKPT: run scripts/bench/bench_engine.sh (or qoq quantize) first" >&2; exit 1; }
CLIENTS="${QOQ_CLIENTS:-64}"; REQUESTS="${QOQ_REQUESTS:-320}"; MAXTOK="${QOQ_MAX_TOKENS:-64}"
THREADS="${QOQ_THREADS:-2}"; export QOQ_THREADS="$THREADS"
OUT="$CACHE/bench-server"; mkdir -p "$OUT"
LOAD=(python3 scripts/bench/load_test.py --clients "$CLIENTS" --requests "$REQUESTS" --max-tokens "$MAXTOK" --cancel-every 8 --cancel-after 4)

source scripts/bench/wait_up.sh

PORT=18180
"$QOQ" serve -m "$CKPT" --port $PORT --max-queued 1024 > "$OUT/qoq-serve.log" 2>&1 &
PID=$!
wait_up "http://127.0.0.1:$PORT/health" $PID
set +e
"${LOAD[@]}" --url "http://127.0.0.1:$PORT" --check-metrics --json "$OUT/server-qoq.json" >&2
LOAD_RC=$?
kill -TERM $PID; wait $PID; TERM_RC=$?
set -e
python3 - "$OUT/server-qoq.json" $LOAD_RC $TERM_RC <<'PY'
import json, sys
p, load_rc, term_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = json.load(open(p)); d["load_rc"] = load_rc; d["sigterm_exit"] = term_rc
json.dump(d, open(p, "w"), indent=1)
PY

if [ -z "${QOQ_SKIP_PEER:-}" ]; then
  bash scripts/bench/setup_llamacpp.sh >&2
  PY="$CACHE/llamacpp/bin/python"
  "$PY" -m pip install --quiet "llama-cpp-python[server]==0.3.36" >&2
  Q40="$CACHE/smollm2-q4_0.gguf"
  [ -f "$Q40" ] || { echo "no $Q40: run scripts/bench/bench_engine.sh first (it makes the Q4_0 file)" >&2; exit 1; }
  PORT=18181
  "$PY" -m llama_cpp.server --model "$Q40" --n_ctx 4096 --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_batch 512 \
    --interrupt_requests False --host 127.0.0.1 --port $PORT > "$OUT/llamacpp-serve.log" 2>&1 &
  PID=$!
  wait_up "http://127.0.0.1:$PORT/v1/models" $PID
  "${LOAD[@]}" --url "http://127.0.0.1:$PORT" --json "$OUT/server-llamacpp.json" >&2 || true
  kill -TERM $PID; wait $PID || true
fi
python3 scripts/bench/report_server.py "$OUT/server-qoq.json" "$OUT/server-llamacpp.json"
