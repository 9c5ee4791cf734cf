#!/usr/bin/env bash
# The main job on the default model (README): set up SmolLM2-135M, quantize it with QoQ W4A8KV4 (progressive
# group-64 recipe, 128 × 1024 calibration tokens, stage cache in ~/.cache/qoq/quant-cache), evaluate WikiText-2
# perplexity of the FP and the quantized model (GPTQ protocol, 2048-token windows), and generate with the
# quantized model.
#   QOQ_WINDOWS        windows to score (default 8; 0 = all 148)
#   QOQ_CALIB_SAMPLES  calibration sequences (default 128)
#   QOQ_CALIB_SEQ      calibration sequence length (default 1024)
#   QOQ_SEQ_LEN        evaluation window length (default 2048, the GPTQ protocol's)
#   QOQ_BUILD          swift build configuration (release|debug, default release)
# Outputs: the FP folder ~/.cache/qoq/smollm2/hf, the quantized checkpoint ~/.cache/qoq/smollm2/qoq-w4a8kv4-g64
# (replaced on a rerun: qoq wrote it), the stage cache ~/.cache/qoq/quant-cache (a rerun resumes from it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
QOQ="$(swift build -c "${QOQ_BUILD:-release}" --show-bin-path)/qoq"
W="${QOQ_WINDOWS:-8}"
L="${QOQ_SEQ_LEN:-2048}"
ARGS=(); [ "$W" != "0" ] && ARGS=(--max-windows "$W")
echo "== FP model"
"$QOQ" eval -m "$CACHE/smollm2/hf" --seq-len "$L" "${ARGS[@]}"
echo "== QoQ W4A8KV4 (recipes/qoq-g64.yaml)"
"$QOQ" quantize recipes/qoq-g64.yaml --model-path "$CACHE/smollm2/hf" --save-model "$CACHE/smollm2/qoq-w4a8kv4-g64" --force \
  --calib-num-samples "${QOQ_CALIB_SAMPLES:-128}" --calib-seq-length "${QOQ_CALIB_SEQ:-1024}" \
  --eval-max-windows "$W" --eval-max-seq-length "$L"
echo "== the saved checkpoint on the engine (integer W4A8 kernels, paged KV4 cache)"
"$QOQ" eval -m "$CACHE/smollm2/qoq-w4a8kv4-g64" --engine --seq-len "$L" "${ARGS[@]}"
echo "== generation with the quantized model (engine)"
"$QOQ" generate -m "$CACHE/smollm2/qoq-w4a8kv4-g64" -p "What is the capital of France?" -n 48
# The same prompt on the FP model, so the answer above can be read for what 4-bit costs a 135M model (it may differ).
echo "== the same prompt on the FP model"
"$QOQ" generate -m "$CACHE/smollm2/hf" -p "What is the capital of France?" -n 48
echo "== outputs: $CACHE/smollm2/hf (FP), $CACHE/smollm2/qoq-w4a8kv4-g64 (W4A8KV4 checkpoint), $CACHE/quant-cache (stage cache)"
