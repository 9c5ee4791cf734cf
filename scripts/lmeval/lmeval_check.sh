#!/usr/bin/env bash
# lm-evaluation-harness against `qoq serve`, as its README recommends for served models: `--model local-completions`
# with the server's own tokenizer (tokenizer_backend=remote: /tokenizer_info, /tokenize, /detokenize) and token-id
# requests (echo + logprobs). The same task is scored in-process by `qoq eval --tasks` (the reference forward);
# acc and acc_norm must agree.
# lm_eval (which brings torch) is installed from PyPI into a venv of its own, ~/.cache/qoq/lmeval-venv, unless
# QOQ_LMEVAL_PY names a python that already has it.
#   scripts/lmeval/lmeval_check.sh [MODEL]   (default: the FP SmolLM2 folder; a QoQ checkpoint also works, but then
#   the server's integer kernels and the fake-quantized reference may differ on a close item)
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
PY="${QOQ_LMEVAL_PY:-$CACHE/lmeval-venv/bin/python}"
if ! "$PY" -c "import lm_eval, tenacity" 2>/dev/null; then
  [ -z "${QOQ_LMEVAL_PY:-}" ] || { echo "lm_eval is not installed for $PY" >&2; exit 1; }
  python3 -m venv "$CACHE/lmeval-venv"
  "$CACHE/lmeval-venv/bin/pip" install --quiet "torch==2.13.0+cpu" "lm_eval[api]==0.4.13" >&2
fi
CKPT="${1:-$CACHE/smollm2/hf}"
OUT="$CACHE/lmeval"; mkdir -p "$OUT/tasks"
python3 scripts/lmeval/make_task.py data/calibration/wikitext-2-valid.tokens.txt "$OUT/qoq_mc.jsonl" 40
sed "s#QOQ_MC_DATA#$OUT/qoq_mc.jsonl#" scripts/lmeval/qoq_mc.yaml > "$OUT/tasks/qoq_mc.yaml"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
"$QOQ" eval -m "$CKPT" --tasks "qoq_mc=$OUT/qoq_mc.jsonl" --json > "$OUT/qoq-eval.json"
PORT=18190
"$QOQ" serve -m "$CKPT" --port $PORT --served-model-name qoq > "$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$PY" -m lm_eval --model local-completions \
  --model_args "model=qoq,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer_backend=remote,tokenized_requests=True,num_concurrent=4,max_retries=1" \
  --include_path "$OUT/tasks" --tasks qoq_mc --output_path "$OUT/lm-eval" --log_samples > "$OUT/lm-eval.txt" 2>&1 || { tail -30 "$OUT/lm-eval.txt" >&2; exit 1; }
kill -TERM $PID; wait $PID || true
trap - EXIT
python3 - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/qoq-eval.json"))[0]
res = sorted(glob.glob(f"{out}/lm-eval/**/results_*.json", recursive=True))[-1]
theirs = json.load(open(res))["results"]["qoq_mc"]
print(f"qoq eval --tasks (in-process):          acc {ours['acc']:.4f}  acc_norm {ours['acc_norm']:.4f}  (n={ours['n']})")
print(f"lm-eval local-completions via qoq serve: acc {theirs['acc,none']:.4f}  acc_norm {theirs['acc_norm,none']:.4f}")
ok = abs(ours["acc"] - theirs["acc,none"]) < 1e-9 and abs(ours["acc_norm"] - theirs["acc_norm,none"]) < 1e-9
print("agree" if ok else "DISAGREE")
sys.exit(0 if ok else 1)
PY
