#!/usr/bin/env bash
# The main job on the default model (README): set up SmolLM2-135M, evaluate WikiText-2 perplexity (GPTQ protocol,
# 2048-token windows) and generate text. QoQ quantization joins this script when `qoq quantize` lands.
#   QOQ_WINDOWS  windows to score (default 8; 0 = all 148)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
QOQ="$(swift build -c release --show-bin-path)/qoq"
W="${QOQ_WINDOWS:-8}"
ARGS=(); [ "$W" != "0" ] && ARGS=(--max-windows "$W")
"$QOQ" eval -m "$CACHE/smollm2/hf" --dataset ../shared/data/wikitext-2-raw/wiki.test.raw --seq-len 2048 "${ARGS[@]}"
"$QOQ" generate -m "$CACHE/smollm2/hf" --chat -p "What is the capital of France?" -n 48
