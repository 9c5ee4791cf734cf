#!/usr/bin/env bash
# Issue #12 item 3 / #19: the accuracy table on the real Qwen2.5-Coder-1.5B-Instruct (scripts/setup_qwen.sh), WikiText-2
# GPTQ protocol at 2048 tokens. One `qoq quantize` per row, each printing its quantize wall time and peak RSS (VmHWM
# right after quantization, before the evaluation loads the fake-quantized model), then a Markdown table.
#   rtn-w4a16     recipes/rtn-w4a16-g128.yaml
#   awq           recipes/awq.yaml (W4A16 g128) + recipes/search-4seq.yaml (all 128 sequences: ~10 h on 2 cores)
#   rtn-w4a8kv4   recipes/rtn-w4a8kv4-g128.yaml, with the same weights at KV16 (the KV4 cost)
#   qoq           recipes/qoq-g128.yaml, with the same weights at KV16
#   qoq-norot     the same without key rotation (--opts-rotate-keys never: deepcompressor's KV side plus centering)
# Env: WINDOWS (8), SAMPLES/SEQ (calibration; default: each recipe's own), ROWS (all of the above), OUT (results
# folder, default /tmp/qoq-qwen-table; rows already there are not rerun), SAVE (a folder: each row's checkpoint is saved
# there as SAVE/<row>, for the engine checks), MODEL (the GGUF). Not part of CI: the QoQ
# row is the long one (GPTQ over 28 layers; the run prints per-stage seconds and resumes a killed run).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${MODEL:-${QOQ_CACHE:-$HOME/.cache/qoq}/qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}"
WINDOWS="${WINDOWS:-8}"; OUT="${OUT:-/tmp/qoq-qwen-table}"; ROWS="${ROWS:-rtn-w4a16 awq rtn-w4a8kv4 qoq-norot qoq}"
CAL="${CAL:-data/calibration/wikitext-2-valid.tokens.txt}"
[ -f "$MODEL" ] || { echo "bench_qwen_table: $MODEL missing (bash scripts/setup_qwen.sh)" >&2; exit 2; }
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
mkdir -p "$OUT"
CALIB=(--calib-path "$CAL")
[ -n "${SAMPLES:-}" ] && CALIB+=(--calib-num-samples "$SAMPLES")
[ -n "${SEQ:-}" ] && CALIB+=(--calib-seq-length "$SEQ")
for row in $ROWS; do
  [ -f "$OUT/$row.json" ] && continue
  case "$row" in
    rtn-w4a16) args=(recipes/rtn-w4a16-g128.yaml) ;;
    awq) args=(recipes/awq.yaml recipes/search-4seq.yaml "${CALIB[@]}") ;;
    rtn-w4a8kv4) args=(recipes/rtn-w4a8kv4-g128.yaml "${CALIB[@]}" --kv-ablation-bits 16) ;;
    qoq) args=(recipes/qoq-g128.yaml "${CALIB[@]}" --kv-ablation-bits 16) ;;
    qoq-norot) args=(recipes/qoq-g128.yaml "${CALIB[@]}" --kv-ablation-bits 16 --opts-rotate-keys never) ;;
    *) echo "bench_qwen_table: unknown row $row" >&2; exit 2 ;;
  esac
  save=(); [ -n "${SAVE:-}" ] && save=(--save-model "$SAVE/$row")
  echo "== $row: qoq quantize ${args[*]} --model-path $MODEL --eval-max-windows $WINDOWS" >&2
  "$QOQ" quantize "${args[@]}" --model-path "$MODEL" --eval-max-windows "$WINDOWS" "${save[@]}" --results-json "$OUT/$row.json.tmp" >&2
  mv "$OUT/$row.json.tmp" "$OUT/$row.json"
done
python3 - "$OUT" $ROWS <<'PY'
import json, os, re, sys
out, rows = sys.argv[1], sys.argv[2:]
print("| row | calibration | windows | ppl | same weights, KV16 | KV4 cost | quantize s | peak RSS GB |")
print("|---|---|---|---|---|---|---|---|")
for row in rows:
    p = os.path.join(out, row + ".json")
    if not os.path.exists(p): continue
    r = json.load(open(p))
    kv16 = r.get("kv_ablation", {}).get("kv16")
    q = r.get("quantization", {})
    y = r.get("recipe", "")
    n = re.search(r"num_samples: *(\d+)", y); L = re.search(r"\n *seq_length: *(\d+)", y)
    cal = f"{n.group(1)} × {L.group(1)}" if n and L and row != "rtn-w4a16" else "—"
    cost = f"×{r['wikitext2_ppl'] / kv16:.4f}" if kv16 else "—"
    kv = f"{kv16:.4f}" if kv16 else "—"
    print(f"| {row} | {cal} | {r.get('eval_windows')} | {r['wikitext2_ppl']:.4f} | {kv} | {cost} | {r['quantize_seconds']:.0f} | {r['peak_rss_gb']:.2f} |")
PY
