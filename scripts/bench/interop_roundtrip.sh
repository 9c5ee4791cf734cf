#!/usr/bin/env bash
# Export the QoQ checkpoint of the default model to QServe's format, import it back, and evaluate both
# (BENCHMARKS.md, issue #7): the perplexity must not change. QOQ_CKPT (default ~/.cache/qoq/bench-quant/qoq-g64).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
CKPT="${QOQ_CKPT:-$CACHE/bench-quant/qoq-g64}"
OUT="$CACHE/interop"; mkdir -p "$OUT"
DATA=data/wikitext-2-raw/wiki.test.raw
"$QOQ" convert "$CKPT" --to qserve -o "$OUT/qserve" --force >&2
"$QOQ" convert "$OUT/qserve" --from qserve -o "$OUT/roundtrip" --kv-bits 4 --act-bits 8 --force >&2
before=$("$QOQ" eval -m "$CKPT" --dataset "$DATA" --max-windows "${QOQ_WINDOWS:-8}" --json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['perplexity'])")
after=$("$QOQ" eval -m "$OUT/roundtrip" --dataset "$DATA" --max-windows "${QOQ_WINDOWS:-8}" --json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['perplexity'])")
echo "{\"checkpoint\": \"$CKPT\", \"ppl_before_export\": $before, \"ppl_after_qserve_roundtrip\": $after, \"qserve_bytes\": $(du -sb "$OUT/qserve/model.safetensors" | cut -f1)}"
