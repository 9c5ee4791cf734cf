#!/usr/bin/env bash
# FP benchmarks for BENCHMARKS.md: qoq next to torch (CPU) in the same run, 1 and 2 threads, on a quiet machine.
# Creates a throwaway venv ($QOQ_CACHE/bench-venv) with torch 2.13.0+cpu and transformers if missing.
# Usage: bash scripts/bench/bench_fp.sh > /tmp/fp.json; python3 scripts/bench/report.py /tmp/fp.json
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
VENV="${QOQ_BENCH_VENV:-$CACHE/bench-venv}"
bash scripts/setup.sh >&2
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, tokenizers" 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet 'torch==2.13.0+cpu' transformers tokenizers accelerate >&2
fi
QOQ="$(swift build -c release --show-bin-path)/qoq"
MODEL="$CACHE/smollm2/hf"
DATA=data/wikitext-2-raw/wiki.test.raw
echo "{"
echo "\"machine\": $(python3 -c 'import json,platform,os; print(json.dumps({"cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"), "family": open("/proc/cpuinfo").read().split("cpu family")[1].split("\n")[0].strip(": \t"), "model": open("/proc/cpuinfo").read().split("\nmodel\t")[1].split("\n")[0].strip(": \t"), "cores": os.cpu_count()}))'),"
for T in 1 2; do
  echo "\"qoq_t$T\": {"
  echo "\"bench\": $(QOQ_THREADS=$T "$QOQ" bench -m "$MODEL" --json --peak),"
  echo "\"eval\": $(QOQ_THREADS=$T "$QOQ" eval -m "$MODEL" --dataset "$DATA" --max-windows 2 --json 2>/dev/null)"
  echo "},"
  echo "\"torch_t$T\": $(HF_HUB_OFFLINE=1 "$VENV/bin/python" scripts/bench/torch_fp.py --model "$MODEL" --data "$DATA" --threads $T 2>/dev/null),"
done
echo "\"date\": \"$(date -u +%Y-%m-%dT%H:%MZ)\""
echo "}"
