#!/usr/bin/env bash
# Issue #19: what KV4 alone costs on a model, and what each remedy buys. Weights and activations stay FP; only the KV
# cache is quantized (UINT4, asymmetric, per token per head, post-RoPE keys), with or without QoQ's transforms:
#   rtn             no transforms (deepcompressor's RTN KV4)
#   smooth          rotation + SmoothAttention Manual α 0.5 (qoq-g128.yaml's KV side, deepcompressor's behaviour)
#   grid            rotation + SmoothAttention GridSearch (deepcompressor's strategy, α over its 19 candidates)
#   center          key centering alone (quant.opts.center_keys always)
#   smooth+center   rotation + SmoothAttention Manual + centering (the default for Qwen2 under QoQ recipes)
#   grid+center     rotation + SmoothAttention GridSearch + centering
#   V+rotk          variant V with key rotation (quant.opts.rotate_keys always: each head of post-RoPE Q and K
#                   Walsh–Hadamard rotated); the variants above keep keys unrotated (rotate_keys never), e.g. rtn+rotk,
#                   smooth+rotk, center+rotk, smooth+center+rotk, grid+center+rotk
#   V+scale+rotk    the same with key scaling (quant.opts.scale_keys always: s_j = (E[q_j²]/E[(k_j − c_j)²])^¼ per
#                   post-RoPE key channel, the query divided by it), e.g. center+scale+rotk, smooth+center+scale+rotk
#   V+scalegrid+rotk  key scaling with its exponent chosen per layer (quant.opts.scale_keys_strategy GridSearch)
# Prints one JSON line per variant (results.json of `qoq quantize`). Not part of CI: on Qwen2.5-Coder-1.5B each variant
# takes ~8 min on 2 cores (2 windows, 8 × 1024 calibration tokens).
#   MODEL (default: the Qwen2.5-Coder-1.5B GGUF of scripts/setup_qwen.sh), WINDOWS (2), SAMPLES (8), SEQ (1024),
#   HEAD_DIM (128: the KV group), VARIANTS (all of the above, space-separated)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${MODEL:-${QOQ_CACHE:-$HOME/.cache/qoq}/qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}"
WINDOWS="${WINDOWS:-2}"; SAMPLES="${SAMPLES:-8}"; SEQ="${SEQ:-1024}"; HEAD_DIM="${HEAD_DIM:-128}"
VARIANTS="${VARIANTS:-rtn smooth grid center smooth+center grid+center}"
CAL="${CAL:-data/calibration/wikitext-2-valid.tokens.txt}"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
KV=(--opts-dtype uint4 --opts-zero-point PostScale --opts-group-shapes "1,$HEAD_DIM" --opts-scale-dtypes torch.float16
    --opts-skips attn_q --calib-path "$CAL" --calib-num-samples "$SAMPLES" --calib-seq-length "$SEQ")
QOQ_KV=(--enable-rotation --rotation-transforms out_proj --enable-smooth --smooth-enable-attn)
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
for v in $VARIANTS; do
  rot=never scale=never kgrid=Manual base="$v"
  case "$base" in *+rotk) rot=always; base="${base%+rotk}" ;; esac
  case "$base" in
    *+scale) scale=always; base="${base%+scale}" ;;
    *+scalegrid) scale=always; kgrid=GridSearch; base="${base%+scalegrid}" ;;
  esac
  case "$base" in
    rtn) flags=(--opts-center-keys never) ;;
    smooth) flags=("${QOQ_KV[@]}" --opts-center-keys never) ;;
    grid) flags=("${QOQ_KV[@]}" --smooth-attn-strategy GridSearch --opts-center-keys never) ;;
    center) flags=(--opts-center-keys always) ;;
    smooth+center) flags=("${QOQ_KV[@]}" --opts-center-keys always) ;;
    grid+center) flags=("${QOQ_KV[@]}" --smooth-attn-strategy GridSearch --opts-center-keys always) ;;
    *) echo "bench_kv4: unknown variant $v" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  "$QOQ" quantize --model-path "$MODEL" "${KV[@]}" "${flags[@]}" --opts-rotate-keys "$rot" --opts-scale-keys "$scale" \
    --opts-scale-keys-strategy "$kgrid" --eval-max-windows "$WINDOWS" --cache-root none \
    --results-json "$OUT/$v.json" >&2
  python3 - "$OUT/$v.json" "$v" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"variant": sys.argv[2], "ppl": r["wikitext2_ppl"], "windows": r["eval_windows"], "seconds": int(sys.argv[3])}))
PY
done
