#!/usr/bin/env bash
# The main job on the default model (README): set up SmolLM2-135M, quantize it with QoQ W4A8KV4 (progressive
# group-64 recipe, 128 × 1024 calibration tokens, stage cache in ~/.cache/qoq/quant-cache), evaluate WikiText-2
# perplexity of the FP and the quantized model (GPTQ protocol, 2048-token windows), and generate with the
# quantized model.
#   QOQ_WINDOWS        windows to score (default 8; 0 = all 148)
#   QOQ_CALIB_SAMPLES  calibration sequences (default 128)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
QOQ="$(swift build -c release --show-bin-path)/qoq"
W="${QOQ_WINDOWS:-8}"
DATA=../shared/data/wikitext-2-raw/wiki.test.raw
ARGS=(); [ "$W" != "0" ] && ARGS=(--max-windows "$W")
echo "== FP model"
"$QOQ" eval -m "$CACHE/smollm2/hf" --dataset "$DATA" --seq-len 2048 "${ARGS[@]}"
echo "== QoQ W4A8KV4 (recipes/qoq-g64.yaml)"
"$QOQ" quantize recipes/qoq-g64.yaml --model-path "$CACHE/smollm2/hf" --save-model "$CACHE/smollm2/qoq-w4a8kv4-g64" \
  --calib-num-samples "${QOQ_CALIB_SAMPLES:-128}" --eval-dataset "$DATA" --eval-max-windows "$W"
echo "== the saved checkpoint on the engine (integer W4A8 kernels, paged KV4 cache)"
"$QOQ" eval -m "$CACHE/smollm2/qoq-w4a8kv4-g64" --engine --dataset "$DATA" --seq-len 2048 "${ARGS[@]}"
echo "== generation with the quantized model (engine)"
"$QOQ" generate -m "$CACHE/smollm2/qoq-w4a8kv4-g64" -p "What is the capital of France?" -n 48
