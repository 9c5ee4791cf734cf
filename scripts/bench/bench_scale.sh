#!/usr/bin/env bash
# Issue #12 "Scale": the streamed quantizer's peak memory against depth and width, and the engine's load peak against
# its resident size, on random-weight checkpoints with real shapes (`qoq synth`, bf16, fixed seed, outlier channels).
#   - RTN W4A16 g128 on Llama-3-8B shapes of 2, 6 and 32 layers and a 2-layer Llama-3-70B shape;
#   - QoQ W4A8KV4 g128 with 128 × 1024 calibration tokens on a 1-layer 8B shape (QOQ_SCALE_QOQ=0 skips it: ~35 min
#     on 2 cores), whose seconds are one layer's, so a full 8B run takes 32 times as long;
#   - the engine loading the 32-layer W4A16 checkpoint and a 2-layer W4A8KV4 one (peak vs resident after load).
# Prints a Markdown table. Needs ~35 GB of disk under QOQ_SYNTH (default ~/.cache/qoq/synth).
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --product qoq >&2
Q=.build/release/qoq
S=${QOQ_SYNTH:-$HOME/.cache/qoq/synth}
OUT=${QOQ_SCALE_OUT:-/tmp/qoq-scale}
CALIB=${QOQ_CALIB:-data/calibration/wikitext-2-valid.tokens.txt}
mkdir -p "$S" "$OUT"

synth() {  # name shape layers
  [ -f "$S/$1/config.json" ] || $Q synth --shape "$2" --layers "$3" -o "$S/$1" >&2
}

# quantize LABEL MODEL RECIPE [FLAGS...]: one table row from the run's own report (estimate, peak VmHWM, wall time).
quantize() {
  local label=$1 model=$2 recipe=$3; shift 3
  local log="$OUT/$label.log"
  $Q quantize "$recipe" --model-path "$S/$model" --skip-eval --cache-root none "$@" > "$log" 2>&1
  local est peak wall
  est=$(grep -o 'peak memory ≈ [0-9.]* GB' "$log" | grep -o '[0-9.]* GB')
  peak=$(grep -o 'peak RSS [0-9.]* GB' "$log" | grep -o '[0-9.]*')
  wall=$(grep -o 'quantized in [0-9.]* s' "$log" | grep -o '[0-9.]*')
  echo "| quantize $label | $est | $peak GiB | $wall s |"
}

# load LABEL CHECKPOINT: the engine's resident and peak memory after loading (qoq generate prints both).
load() {
  local line
  line=$($Q generate -m "$1" -p hi -n 1 2>&1 | grep -o 'resident [0-9.]* GiB after load, peak [0-9.]* GiB')
  local res peak
  res=$(echo "$line" | awk '{print $2}'); peak=$(echo "$line" | awk '{print $7}')
  echo "| engine load $2 | — | $peak GiB peak, $res GiB resident ($(awk "BEGIN{printf \"%.2f\", $peak/$res}")×) | — |"
}

synth llama3-8b-L2 llama3-8b 2
synth llama3-8b-L6 llama3-8b 6
synth llama3-8b llama3-8b 32
synth llama3-70b-L2 llama3-70b 2
echo "| run | estimate | peak | wall |"
echo "|---|---|---|---|"
quantize rtn-8b-L2 llama3-8b-L2 recipes/rtn-w4a16-g128.yaml
quantize rtn-8b-L6 llama3-8b-L6 recipes/rtn-w4a16-g128.yaml
quantize rtn-8b-L32 llama3-8b recipes/rtn-w4a16-g128.yaml --save-model "$OUT/rtn-8b-L32" --force
quantize rtn-70b-L2 llama3-70b-L2 recipes/rtn-w4a16-g128.yaml
quantize w4a8-8b-L2 llama3-8b-L2 recipes/rtn-w4a8kv4-g128.yaml --save-model "$OUT/w4a8-8b-L2" --force
load "$OUT/rtn-8b-L32" "8B W4A16 (32 layers)"
load "$OUT/w4a8-8b-L2" "8B W4A8KV4 (2 layers)"
if [ "${QOQ_SCALE_QOQ:-1}" != 0 ]; then
  synth llama3-8b-L1 llama3-8b 1
  quantize qoq-8b-L1-128x1024 llama3-8b-L1 recipes/qoq-g128.yaml --calib-path "$CALIB"
fi
