#!/usr/bin/env bash
# Issue #15: what a better quantizer buys a llama.cpp user. Our W4A16 g32 checkpoints (RTN, AWQ, GPTQ) exported with
# `qoq convert --to gguf` (Q4_1 blocks) beside llama.cpp's own Q4_0 / Q4_1 / Q4_K_M of the same FP model, all scored by
# llama-perplexity (WikiText-2 test, -c 2048, CHUNKS chunks: llama.cpp's protocol, the second half of each chunk).
# Not part of CI. Env: OUT (/tmp/qoq-gguf-cmp), CHUNKS (8), SAMPLES (calibration sequences for AWQ and GPTQ: 32),
# ROWS ("rtn awq gptq"), QOQ_LLAMACPP_NO_AMX (see setup_llamacpp_native.sh). Each row is exported twice: embeddings (and
# LM head, when untied) in f32, and as Q8_0 (`--token-embedding-type q8_0 --output-tensor-type q8_0`), the size llama.cpp's
# own files have; llama.cpp's rows are also made with Q8_0 tables, so that the linears are what differs.
# FP=FILE.gguf MODEL=FILE.gguf compares on another FP model, e.g. SmolLM2 in a rotated basis whose weights lie on no
# 4-bit grid (scripts/interop/rotate_gguf.py; BENCHMARKS "on a model that is not already 4-bit").
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/qoq-gguf-cmp} CHUNKS=${CHUNKS:-8} SAMPLES=${SAMPLES:-32} ROWS=${ROWS:-"rtn awq gptq"}
source scripts/interop/gguf_common.sh
mkdir -p "$OUT"
mb() { python3 -c "import os,sys; print(f'{os.path.getsize(sys.argv[1]) / 1e6:.1f}')" "$1"; }
echo "| model file | MB | llama-perplexity ($CHUNKS × 2048) |"
echo "|---|---|---|"
echo "| FP ($(basename "$FP")) | $(mb "$FP") | $(ppl "$FP") |"
for t in Q4_0 Q4_1 Q4_K_M; do
  f="$OUT/llamacpp-$t.gguf" f8="$OUT/llamacpp-$t-q8tables.gguf"
  [ -f "$f" ] || "$BIN/llama-quantize" --allow-requantize "$FP" "$f" "$t" > "$OUT/quantize-$t.log" 2>&1
  [ -f "$f8" ] || "$BIN/llama-quantize" --allow-requantize --token-embedding-type q8_0 --output-tensor-type q8_0 \
    "$FP" "$f8" "$t" > "$OUT/quantize-$t-q8.log" 2>&1
  echo "| llama.cpp's own $t of FP (\`llama-quantize --allow-requantize\`) | $(mb "$f") | $(ppl "$f") |"
  echo "| llama.cpp's own $t, \`--token-embedding-type q8_0 --output-tensor-type q8_0\` | $(mb "$f8") | $(ppl "$f8") |"
done
for row in $ROWS; do
  case $row in
    rtn) args=(recipes/rtn-w4a16-g64.yaml) ;;
    awq) args=(recipes/awq-g64.yaml recipes/search-4seq.yaml --calib-num-samples "$SAMPLES") ;;
    gptq) args=(recipes/gptq-g64.yaml recipes/calib-concat.yaml --calib-num-samples "$SAMPLES") ;;
  esac
  [ -d "$OUT/$row/ckpt" ] ||
    "$Q" quantize "${args[@]}" --wgts-group-shapes 1,32 --model-path "$MODEL" --skip-eval --save-model "$OUT/$row/ckpt" >&2
  [ -f "$OUT/$row/gguf/model.gguf" ] || "$Q" convert "$OUT/$row/ckpt" --to gguf -o "$OUT/$row/gguf" >&2
  [ -f "$OUT/$row/gguf-q8/model.gguf" ] || "$Q" convert "$OUT/$row/ckpt" --to gguf -o "$OUT/$row/gguf-q8" \
    --token-embedding-type q8_0 --output-tensor-type q8_0 >&2
  echo "| ours: $row W4A16 g32 (\`${args[*]} --wgts-group-shapes 1,32\`), \`--to gguf\` | $(mb "$OUT/$row/gguf/model.gguf") | $(ppl "$OUT/$row/gguf/model.gguf") |"
  echo "| ours: the same, \`--token-embedding-type q8_0\` | $(mb "$OUT/$row/gguf-q8/model.gguf") | $(ppl "$OUT/$row/gguf-q8/model.gguf") |"
done
