#!/usr/bin/env bash
# Kernel variants side by side on this machine (issue #17): the same source built for two instruction sets
# (QOQ_ISA=avx512 and avx2 by default, each in its own scratch folder under .build-isa/), then ROUNDS rounds that
# alternate the binaries, each running
#   qoq bench                  the FP32 GEMM (the quantizer's and the reference model's work), GFLOPS
#   qoq bench --kernels        W4A8 GEMV/GEMM against the read bandwidth and the int8 peak
#   qoq bench --engine -m CKPT pp512, tg128 and the QServe protocol at BATCHES (128 in / 64 out), tokens/s, and with
#                              PROFILE=1 the batch-1 decode step split by phase (--profile)
# and prints medians (min–max) over the rounds with the ratio of the first variant to the second (report_isa.py).
#   CKPT      a quantized checkpoint for the engine rows (required; e.g. the QoQ g64 checkpoint of run-main.sh)
#   ISAS      the two variants (default "avx512 avx2"); a variant this CPU lacks stops at start-up with the reason
#   BINS      instead of building: prebuilt binaries as "ISA=PATH ISA=PATH" (e.g. "avx512=.build/release/qoq avx2=/tmp/q")
#   ROUNDS 5, THREADS (default: every CPU), BATCHES 16, OUT /tmp/qoq-bench-isa
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CKPT:?CKPT=checkpoint folder}"
ISAS="${ISAS:-avx512 avx2}"; ROUNDS="${ROUNDS:-5}"; BATCHES="${BATCHES:-16}"; OUT="${OUT:-/tmp/qoq-bench-isa}"
THREADS="${THREADS:-$(nproc)}"
mkdir -p "$OUT"
declare -A BIN
if [ -n "${BINS:-}" ]; then
  ISAS=""
  for b in $BINS; do ISAS="$ISAS ${b%%=*}"; BIN[${b%%=*}]="${b#*=}"; done
else
  for isa in $ISAS; do
    QOQ_ISA="$isa" swift build -c release --product qoq --scratch-path ".build-isa/$isa" >&2
    BIN[$isa]=".build-isa/$isa/release/qoq"
  done
fi
LOG="$OUT/log.jsonl"; : > "$LOG"
# rec ISA ROUND TEST COMMAND...: runs the command and appends its JSON to the log; a failure stops the script with the
# command's own last lines.
rec() {
  local isa=$1 r=$2 test=$3 out; shift 3
  out=$("$@" 2>"$OUT/stderr.txt") || { echo "bench_isa: $* failed:" >&2; tail -5 "$OUT/stderr.txt" >&2; exit 1; }
  python3 -c 'import json,sys; print(json.dumps({"isa": sys.argv[1], "round": int(sys.argv[2]), "test": sys.argv[3],
"data": json.loads(sys.argv[4])}))' "$isa" "$r" "$test" "$out" >> "$LOG"
}
for r in $(seq 1 "$ROUNDS"); do
  for isa in $ISAS; do
    Q="${BIN[$isa]}"
    echo "round $r: $("$Q" --version)" >&2
    rec "$isa" "$r" fp "$Q" bench --threads "$THREADS" --repeats 3 --json
    rec "$isa" "$r" kernels "$Q" bench --kernels --threads "$THREADS" --repeats 3 --json
    rec "$isa" "$r" engine "$Q" bench --engine -m "$CKPT" --threads "$THREADS" --pp 512 --tg 128 --input-len 128 \
      --output-len 64 --batches "$BATCHES" --repeats 2 ${PROFILE:+--profile} --json
  done
done
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) vCPU"
python3 scripts/bench/report_isa.py "$LOG" "$machine" "$THREADS" $ISAS
