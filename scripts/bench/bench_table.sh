#!/usr/bin/env bash
# The paper's accuracy table on the default model (BENCHMARKS.md, issue #4): FP, RTN at each precision, AWQ and
# GPTQ-R (W4A16), SmoothQuant (W8A8KV8), QoQ (W4A8KV4) and a QuaRot-like rotation recipe (W4A4KV4); WikiText-2
# GPTQ protocol, first 8 windows of 2048. Group size 64 where 128 does not divide SmolLM2's widths, KV groups of 64
# (one head); GPTQ-R calibrates from the concatenated stream (recipes/calib-concat.yaml: WikiText-2 validation has no
# 2048-token documents). Results per recipe in runs/table-smollm2 (a rerun computes only what changed).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >&2
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
"$QOQ" table --model-path "$CACHE/smollm2/hf" --output "${QOQ_TABLE_OUT:-runs/table-smollm2}" --eval-max-windows "${QOQ_WINDOWS:-8}" \
  --recipes recipes/rtn-w4a16-g64.yaml recipes/awq-g64.yaml+recipes/search-4seq.yaml recipes/gptq-g64.yaml+recipes/calib-concat.yaml \
            recipes/rtn-w8a8kv8.yaml recipes/smoothquant-dynamic.yaml recipes/smoothquant-static.yaml \
            recipes/rtn-w4a8kv4-g64.yaml recipes/qoq-g64.yaml \
            recipes/rtn-w4a4kv4.yaml+recipes/kv-g64.yaml recipes/quarot-w4a4kv4.yaml+recipes/kv-g64.yaml
