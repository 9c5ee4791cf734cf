#!/usr/bin/env bash
# Issue #15: quantize SmolLM2 (RTN W4A16 g64 by default), export it with `qoq convert --to gguf`, and check the file
# with llama.cpp itself: llama-perplexity on the export, on llama.cpp's own F32 dequantization of it
# (llama-quantize --allow-requantize … F32: the same weights without llama.cpp's Q8_1 activation rounding), and on the
# FP model (the Q4_1 source GGUF); llama-simple generates from the export. llama-perplexity scores the second half of
# each 2048-token chunk, so its numbers are compared with each other, not with our GPTQ-protocol perplexity.
# Not part of CI. Builds llama.cpp natively first (scripts/bench/setup_llamacpp_native.sh, ~15 min the first time).
# Env: RECIPE (recipes/rtn-w4a16-g64.yaml), OUT (/tmp/qoq-gguf), CHUNKS (8), FLAGS (extra quantize flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
RECIPE=${RECIPE:-recipes/rtn-w4a16-g64.yaml} OUT=${OUT:-/tmp/qoq-gguf} CHUNKS=${CHUNKS:-8}
source scripts/interop/gguf_common.sh
mkdir -p "$OUT"
# shellcheck disable=SC2086
"$Q" quantize "$RECIPE" --model-path "$MODEL" --skip-eval --save-model "$OUT/ckpt" --force ${FLAGS:-} >&2
"$Q" convert "$OUT/ckpt" --to gguf -o "$OUT/gguf" --force
"$BIN/llama-quantize" --allow-requantize "$OUT/gguf/model.gguf" "$OUT/f32.gguf" F32 > "$OUT/quantize.log" 2>&1
E=$(ppl "$OUT/gguf/model.gguf"); D=$(ppl "$OUT/f32.gguf"); F=$(ppl "$FP")
echo "llama-perplexity, $CHUNKS × 2048 (second half of each chunk scored):"
echo "  export (Q4_1 as written)              $E"
echo "  llama.cpp's F32 dequantization of it  $D"
echo "  FP (source GGUF)                      $F"
python3 -c "import sys; e,d,f=map(float,sys.argv[1:]); print(f'  export / F32 copy = {e/d:.4f}, export / FP = {e/f:.4f}')" "$E" "$D" "$F"
"$BIN/llama-simple" -m "$OUT/gguf/model.gguf" -n 32 "The capital of France is" 2>/dev/null | tail -n +1
