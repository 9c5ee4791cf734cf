#!/usr/bin/env bash
# Issue #14: a quantized Mixtral exported with `qoq convert --to gguf` (llama.cpp's merged ffn_*_exps tensors) and
# checked with llama.cpp itself. The model is SmolLM2 upcycled into 4 experts, top 2 (scripts/interop/upcycle_mixtral.py:
# each expert the dense MLP with its own channel permutation and w2 scale, a random router), so that its perplexity
# depends on every expert's tensors and on the routing. Quantized RTN W4A16 g32 (Q4_1 blocks), then scored by
# llama-perplexity on the export and on llama.cpp's F32 dequantization of it (the same weights without llama.cpp's Q8_1
# activation rounding), and by `qoq eval --protocol llamacpp` (llama.cpp's protocol: the second half of each 2048-token
# chunk) on our fake-quantized checkpoint and on the FP model. llama-simple generates from the export.
# Not part of CI. Builds llama.cpp natively first (scripts/bench/setup_llamacpp_native.sh, ~15 min the first time).
# Env: OUT (/tmp/qoq-gguf-moe), CHUNKS (4), EXPERTS (4), TOPK (2).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/qoq-gguf-moe} CHUNKS=${CHUNKS:-4} EXPERTS=${EXPERTS:-4} TOPK=${TOPK:-2}
source scripts/interop/gguf_common.sh
mkdir -p "$OUT"
[ -f "$OUT/fp/model.safetensors" ] || python3 scripts/interop/upcycle_mixtral.py "$MODEL" "$OUT/fp" --experts "$EXPERTS" --top-k "$TOPK" >&2
# A model left in OUT by an earlier run must have the experts and top-k asked for.
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); sys.exit(0 if (c['num_local_experts'], c['num_experts_per_tok']) == \
(int(sys.argv[2]), int(sys.argv[3])) else f'{sys.argv[1]}: another expert count or top-k; use another OUT')" "$OUT/fp/config.json" "$EXPERTS" "$TOPK"
"$Q" quantize recipes/rtn-w4a16-g64.yaml --wgts-group-shapes 1,32 --model-path "$OUT/fp" --skip-eval --save-model "$OUT/ckpt" --force >&2
"$Q" convert "$OUT/ckpt" --to gguf -o "$OUT/gguf" --force
"$BIN/llama-quantize" --allow-requantize "$OUT/gguf/model.gguf" "$OUT/f32.gguf" F32 > "$OUT/quantize.log" 2>&1
ours() { "$Q" eval -m "$1" --protocol llamacpp --max-windows "$CHUNKS" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['perplexity'])"; }
E=$(ppl "$OUT/gguf/model.gguf"); D=$(ppl "$OUT/f32.gguf"); QC=$(ours "$OUT/ckpt"); QF=$(ours "$OUT/fp")
echo "Mixtral-shaped SmolLM2 ($EXPERTS experts, top $TOPK), RTN W4A16 g32; perplexity, $CHUNKS × 2048, llama.cpp's protocol:"
echo "  llama-perplexity, the export (Q4_1 experts as written)   $E"
echo "  llama-perplexity, llama.cpp's F32 dequantization of it   $D"
echo "  qoq eval, the quantized checkpoint (fake-quantized)      $QC"
echo "  qoq eval, the FP model                                  $QF"
python3 -c "import sys; e,d,q=map(float,sys.argv[1:]); print(f'  llama.cpp F32 / qoq = {d/q:.5f}, export / F32 copy = {e/d:.4f}')" "$E" "$D" "$QC"
"$BIN/llama-simple" -m "$OUT/gguf/model.gguf" -n 24 "The capital of France is" 2>/dev/null | tail -n +1
