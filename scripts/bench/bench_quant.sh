#!/usr/bin/env bash
# Accuracy and cost of the recipes on the default model (BENCHMARKS.md, issue #3): FP, RTN W4A8KV4 and QoQ
# W4A8KV4 (per-channel and group-64), WikiText-2 GPTQ protocol, first N windows of 2048 (default 8), with wall time
# and peak memory of each quantization (128 × 1024 calibration tokens). Writes JSON lines to stdout.
#   QOQ_WINDOWS (default 8)   QOQ_CALIB_SAMPLES (default 128)   QOQ_CALIB_LEN (default 1024)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >&2
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
QOQ="$(swift build -c release --show-bin-path)/qoq"
MODEL="$CACHE/smollm2/hf"
DATA=data/wikitext-2-raw/wiki.test.raw
CALIB=data/calibration/wikitext-2-valid.tokens.txt
W="${QOQ_WINDOWS:-8}"; NS="${QOQ_CALIB_SAMPLES:-128}"; SL="${QOQ_CALIB_LEN:-1024}"
OUT="${QOQ_BENCH_OUT:-$CACHE/bench-quant}"
mkdir -p "$OUT"
[ -z "${QOQ_BENCH_ONLY:-}" ] && echo "{\"name\": \"FP (dequantized Q4_1)\", \"eval\": $("$QOQ" eval -m "$MODEL" --dataset "$DATA" --max-windows "$W" --json 2>/dev/null)}"
run() {  # name, recipe files..., -- extra flags
  local name="$1"; shift
  local files=(); while [ "$1" != "--" ]; do files+=("$1"); shift; done; shift
  local res
  res=$("$QOQ" quantize "${files[@]}" --model-path "$MODEL" --calib-path "$CALIB" --calib-num-samples "$NS" \
        --calib-seq-length "$SL" --eval-dataset "$DATA" --eval-max-windows "$W" --cache-root none \
        --save-model "$OUT/$name" "$@" 2>"$OUT/$name.log" | tail -1)
  echo "{\"name\": \"$name\", \"recipe\": \"${files[*]} $*\", \"result\": $res}"
}
# SmolLM2's head_dim is 64, so KV groups are 64 wide (one head) in every recipe.
ONLY="${QOQ_BENCH_ONLY:-rtn-w4a8kv4-gchn rtn-w4a8kv4-g64 qoq-g64 qoq-gchn}"
for n in $ONLY; do
  case "$n" in
    rtn-w4a8kv4-gchn) run rtn-w4a8kv4-gchn recipes/rtn-w4a8kv4-gchn.yaml -- --opts-group-shapes 1,64 ;;
    rtn-w4a8kv4-g64) run rtn-w4a8kv4-g64 recipes/rtn-w4a8kv4-g64.yaml -- ;;
    qoq-g64) run qoq-g64 recipes/qoq-g64.yaml -- ;;
    qoq-gchn) run qoq-gchn recipes/qoq-gchn.yaml recipes/search-4seq.yaml -- --opts-group-shapes 1,64 ;;
    qoq-gchn-all) run qoq-gchn-all recipes/qoq-gchn.yaml -- --opts-group-shapes 1,64 ;;
    qoq-g64-bf16calib) run qoq-g64-bf16calib recipes/qoq-g64.yaml -- --model-dtype torch.bfloat16 ;;
  esac
done
