#!/usr/bin/env bash
# Issue #15: quantize SmolLM2 (RTN W4A16 g64 by default; RECIPE=recipes/qoq-g64.yaml for QoQ), export it with
# `qoq convert --to mlx`, and check the export with mlx-lm itself (throwaway venv with mlx[cpu] and mlx-lm; not part
# of CI): perplexity over the first WINDOWS windows of SEQ tokens of the WikiText-2 test fixture through mlx-lm's
# model, beside `qoq eval --seq-len SEQ` of our fake-quantized checkpoint on the same windows, and a greedy generation.
# Env: RECIPE (recipes/rtn-w4a16-g64.yaml), OUT (/tmp/qoq-mlx), WINDOWS (4), SEQ (256), VENV (/tmp/mlxvenv), FLAGS.
set -euo pipefail
cd "$(dirname "$0")/../.."
RECIPE=${RECIPE:-recipes/rtn-w4a16-g64.yaml} OUT=${OUT:-/tmp/qoq-mlx} WINDOWS=${WINDOWS:-4} SEQ=${SEQ:-256}
VENV=${VENV:-/tmp/mlxvenv} MODEL=${MODEL:-${QOQ_CACHE:-$HOME/.cache/qoq}/smollm2/hf}
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV"; "$VENV/bin/pip" install --quiet 'mlx[cpu]' mlx-lm >&2; }
swift build -c release --product qoq >&2
Q="$(swift build -c release --show-bin-path)/qoq"
mkdir -p "$OUT"
# shellcheck disable=SC2086
[ -f "$OUT/ckpt/config.json" ] || "$Q" quantize "$RECIPE" --model-path "$MODEL" --skip-eval --save-model "$OUT/ckpt" ${FLAGS:-} >&2
[ -f "$OUT/mlx/config.json" ] || "$Q" convert "$OUT/ckpt" --to mlx -o "$OUT/mlx"
# What the export carries: the weights, with activations and the KV cache unquantized (a no-op for W4A16 checkpoints;
# for QoQ W4A8KV4 the int8 activations and KV4 do not carry over to MLX).
OURS=$("$Q" eval -m "$OUT/ckpt" --seq-len "$SEQ" --max-windows "$WINDOWS" --act-bits 16 --kv-bits 16 2>&1 | grep -o 'perplexity [0-9.]*' | tail -1 | awk '{print $2}')
echo "ours (fake-quantized W4A16, qoq eval --seq-len $SEQ --max-windows $WINDOWS --act-bits 16 --kv-bits 16): $OURS" >&2
"$VENV/bin/python" scripts/interop/check_mlx.py "$OUT/mlx" Tests/Fixtures/smollm2/ppl_tokens.i32.bin "$OURS" "$WINDOWS" "$SEQ"
