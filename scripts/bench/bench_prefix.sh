#!/usr/bin/env bash
# Prefix caching under load (issue #18), side by side with llama.cpp's own server, medians of alternating runs.
# Two loads (scripts/bench/load_test.py, streaming /v1/completions, greedy):
#   shared     C clients, R requests: one ~1,000-token system prompt (4,400 characters of WikiText-2) before each
#              request's own ~100-token question (400 characters), M new tokens (a chat service)
#   multiturn  C clients, each a T-turn conversation: every request is the previous prompt, its answer and a new
#              ~100-token turn; TTFT of turns 2… reported apart (the turns a prefix cache can help)
# Systems, each started fresh for every sample (an empty cache) and run in turn within a round, ROUNDS rounds:
#   qoq          qoq serve CKPT (prefix caching on: the default)
#   qoq-nocache  qoq serve CKPT --no-prefix-caching
#   llama-server llama.cpp's server (scripts/bench/setup_llamacpp_native.sh: native build) on the same model as Q4_0,
#                -np C slots, continuous batching, F16 KV, flash attention, its prompt cache (cache_prompt) on
# Same threads for all. Raw results: $OUT/prefix.jsonl (one line per sample); the table: report_prefix.py.
#   CKPT (required: a qoq checkpoint)  GGUF (llama.cpp's model; default: Q4_0 made from the SmolLM2 FP GGUF)
#   CLIENTS (64) REQUESTS (128) MAX_TOKENS (32) TURN_CLIENTS (16) TURNS (4) ROUNDS (5) THREADS (nproc) OUT
#   SYSTEMS ("qoq qoq-nocache llama-server") LOADS ("shared multiturn") LLAMA_FLAGS (extra llama-server flags, e.g. -kvu)
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
: "${CKPT:?set CKPT to a qoq checkpoint (qoq quantize … --save-model DIR)}"
CLIENTS=${CLIENTS:-64} REQUESTS=${REQUESTS:-128} MAXTOK=${MAX_TOKENS:-32} TURN_CLIENTS=${TURN_CLIENTS:-16}
TURNS=${TURNS:-4} ROUNDS=${ROUNDS:-5} THREADS=${THREADS:-$(nproc)} OUT=${OUT:-$CACHE/bench-prefix}
SYSTEMS=${SYSTEMS:-"qoq qoq-nocache llama-server"} LOADS=${LOADS:-"shared multiturn"}
mkdir -p "$OUT"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
BIN=$(bash scripts/bench/setup_llamacpp_native.sh)
GGUF=${GGUF:-$CACHE/smollm2-q4_0-native.gguf}
if [ ! -f "$GGUF" ]; then
  "$BIN/llama-quantize" --allow-requantize "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF.part" Q4_0 >&2
  mv "$GGUF.part" "$GGUF"
fi
PORT=18190
source scripts/bench/wait_up.sh
load() {  # name: the load_test.py arguments of a load
  case $1 in
    shared) echo "--clients $CLIENTS --requests $REQUESTS --shared-prefix-chars 4400 --prompt-chars 400" ;;
    multiturn) echo "--clients $TURN_CLIENTS --turns $TURNS --prompt-chars 400" ;;
  esac
}
META="{\"machine\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) vCPU\", \"threads\": $THREADS, \
\"llamacpp\": \"$("$BIN/llama-server" --version 2>&1 | grep -m1 version | tr -d '"')\", \"checkpoint\": \"$CKPT\", \"gguf\": \"$GGUF\", \"llama_flags\": \"${LLAMA_FLAGS:-}\", \"llamacpp_bin\": \"$BIN\"}"
for round in $(seq 1 "$ROUNDS"); do
  for sys in $SYSTEMS; do
    for ld in $LOADS; do
      case $sys in
        qoq) QOQ_THREADS=$THREADS "$QOQ" serve -m "$CKPT" --port $PORT --max-queued 4096 > "$OUT/$sys.log" 2>&1 & ;;
        qoq-nocache) QOQ_THREADS=$THREADS "$QOQ" serve -m "$CKPT" --port $PORT --max-queued 4096 --no-prefix-caching \
                       > "$OUT/$sys.log" 2>&1 & ;;
        llama-server) N=$CLIENTS; [ "$ld" = multiturn ] && N=$TURN_CLIENTS
          "$BIN/llama-server" -m "$GGUF" -t "$THREADS" -tb "$THREADS" -np "$N" -c $((N * 2048)) -fa on -b 2048 -ub 512 \
            ${LLAMA_FLAGS:-} --host 127.0.0.1 --port $PORT > "$OUT/$sys.log" 2>&1 & ;;
      esac
      PID=$!
      wait_up "http://127.0.0.1:$PORT/health" $PID
      # shellcheck disable=SC2046
      python3 scripts/bench/load_test.py --url "http://127.0.0.1:$PORT" $(load "$ld") --max-tokens "$MAXTOK" \
        --cancel-every 0 --ignore-eos $( [ "${sys%%-*}" = qoq ] && echo --check-metrics ) --json "$OUT/last.json" >&2 || true
      kill -TERM $PID; wait $PID || true
      python3 - "$OUT/last.json" "$round" "$sys" "$ld" "$META" >> "$OUT/prefix.jsonl" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d.update(round=int(sys.argv[2]), system=sys.argv[3], load=sys.argv[4], meta=json.loads(sys.argv[5]))
print(json.dumps(d))
PY
      echo "round $round $sys $ld: $(python3 -c "import json;d=json.load(open('$OUT/last.json'));print(d['ttft_p50_s'], d['ttft_later_turns_p50_s'], d['chunks_per_s'], d['failed'])")" >&2
    done
  done
done
python3 scripts/bench/report_prefix.py "$OUT/prefix.jsonl"
