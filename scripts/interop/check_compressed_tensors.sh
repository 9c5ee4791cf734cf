#!/usr/bin/env bash
# Issue #15: quantize SmolLM2 W4A16 with PreScale zero points, export it to compressed-tensors, and check the export
# with compressed-tensors' own decompressor and with transformers (perplexity beside our fake-quantized model's).
# Not part of CI. Needs a venv with CPU torch, transformers and compressed-tensors:
#   python3 -m venv /tmp/venv-ct && /tmp/venv-ct/bin/pip install 'torch==2.13.0+cpu' transformers compressed-tensors
# Env: VENV (default /work/venv-ref), RECIPE (default recipes/rtn-w4a16-g64.yaml), OUT (default /tmp/qoq-ct),
#      WINDOWS (8), FLAGS (extra quantize flags, e.g. "--calib-num-samples 16" for gptq-g64.yaml).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-/work/venv-ref} RECIPE=${RECIPE:-recipes/rtn-w4a16-g64.yaml} OUT=${OUT:-/tmp/qoq-ct} WINDOWS=${WINDOWS:-8}
MODEL=${MODEL:-${QOQ_CACHE:-$HOME/.cache/qoq}/smollm2/hf}
swift build -c release --product qoq >&2
Q="$(swift build -c release --show-bin-path)/qoq"
mkdir -p "$OUT"
# shellcheck disable=SC2086
"$Q" quantize "$RECIPE" --model-path "$MODEL" --wgts-zero-point PreScale --eval-max-windows "$WINDOWS" \
  --save-model "$OUT/ckpt" --force --results-json "$OUT/quant.json" ${FLAGS:-} >&2
"$Q" convert "$OUT/ckpt" --to compressed-tensors -o "$OUT/ct" --force >&2
PPL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["wikitext2_ppl"])' "$OUT/quant.json")
"$VENV/bin/python" scripts/interop/check_compressed_tensors.py "$OUT/ckpt" "$OUT/ct" Tests/Fixtures/smollm2/ppl_tokens.i32.bin "$PPL" "$WINDOWS"
