#!/usr/bin/env bash
# Issue #12: Qwen2.5-Coder-1.5B-Instruct's FP perplexity from `qoq eval` against transformers' (the fixture
# Tests/Fixtures/qwen2.5-coder-1.5b/ppl.json, made by scripts/fixtures/make_qwen_reference.py in a throwaway torch
# venv). Needs the model (bash scripts/setup_qwen.sh) and a release build; not part of CI (~75 s per window on 2 cores).
# Checks: the same number of tokens, and each window's mean cross-entropy within 1e-4 (relative).
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF="${QOQ_CACHE:-$HOME/.cache/qoq}/qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
FIX=Tests/Fixtures/qwen2.5-coder-1.5b/ppl.json
[ -f "$GGUF" ] || { echo "check_qwen_fp: $GGUF missing (bash scripts/setup_qwen.sh)" >&2; exit 1; }
W=$(python3 -c "import json; print(json.load(open('$FIX'))['windows'])")
swift build -c release --product qoq >&2
OUT=$(mktemp); trap 'rm -f "$OUT"' EXIT
"$(swift build -c release --show-bin-path)/qoq" eval -m "$GGUF" --max-windows "$W" --json > "$OUT"
python3 - "$FIX" "$OUT" <<'PY'
import json, math, sys
ref, got = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert got["tokens"] == ref["total_tokens"], f"tokens {got['tokens']} != transformers' {ref['total_tokens']}"
worst = 0.0
for w, (a, b) in enumerate(zip(got["mean_ce"], ref["window_ce"])):
    rel = abs(a - b) / abs(b)
    worst = max(worst, rel)
    print(f"window {w}: qoq {a:.6f} transformers {b:.6f} rel {rel:.2e}")
print(f"ppl qoq {got['perplexity']:.5f} transformers {ref['ppl']:.5f}; worst window rel {worst:.2e}")
sys.exit(0 if worst < 1e-4 else 1)
PY
