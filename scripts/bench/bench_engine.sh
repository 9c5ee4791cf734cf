#!/usr/bin/env bash
# The engine against llama.cpp on this machine (BENCHMARKS.md, issue #5), all in one run, same threads:
#  1. W4A8 kernels vs the measured read bandwidth and VNNI peak (qoq bench --kernels);
#  2. SmolLM2 QoQ g64 on the engine: pp512, tg128, QServe protocol (B × 128 in / 64 out) over a batch sweep;
#  3. llama.cpp (built from source via llama-cpp-python) on the same model as Q4_0 with a Q4_0 KV cache (and, as a
#     second peer configuration, an F16 KV cache): the same tests;
#  4. engine perplexity (integer kernels, KV4 pages) vs the fake-quantized model, 8 × 2048 WikiText-2 windows.
# Writes JSON to $OUT/engine-bench.json and prints the BENCHMARKS.md section (report_engine.py).
#   QOQ_ENGINE_CKPT: the QoQ checkpoint (default: ~/.cache/qoq/bench-quant/qoq-g64; quantized here if missing)
#   QOQ_THREADS (default 2)   QOQ_BATCHES (default 1,2,4,8,16,32,64)   QOQ_SKIP_PPL=1 to skip step 4
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >&2
bash scripts/bench/setup_llamacpp.sh >&2
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
swift build -c release --product qoq >&2
QOQ="$(swift build -c release --show-bin-path)/qoq"
CKPT="${QOQ_ENGINE_CKPT:-$CACHE/bench-quant/qoq-g64}"
THREADS="${QOQ_THREADS:-2}"; export QOQ_THREADS="$THREADS"
BATCHES="${QOQ_BATCHES:-1,2,4,8,16,32,64}"
DATA=data/wikitext-2-raw/wiki.test.raw
OUT="$CACHE/bench-engine"; mkdir -p "$OUT"
if [ ! -f "$CKPT/config.json" ]; then
  echo "quantizing $CKPT with recipes/qoq-g64.yaml (about 13 min)" >&2
  "$QOQ" quantize recipes/qoq-g64.yaml --model-path "$CACHE/smollm2/hf" \
    --calib-path data/calibration/wikitext-2-valid.tokens.txt --save-model "$CKPT" --cache-root none >&2
fi
Q40="$CACHE/smollm2-q4_0.gguf"
PY="$CACHE/llamacpp/bin/python"
MAKE=(); [ -f "$Q40" ] || MAKE=(--make-q4_0 "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
{
  echo "{\"machine\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) vCPU\", \"threads\": $THREADS,"
  echo "\"kernels\": $("$QOQ" bench --kernels --repeats 5 --json)," 
  echo "\"engine\": $("$QOQ" bench --engine -m "$CKPT" --pp 512 --tg 128 --input-len 128 --output-len 64 --batches "$BATCHES" --repeats 4 --json),"
  echo "\"llamacpp_q4_0_kv\": $("$PY" scripts/bench/llamacpp_bench.py --model "$Q40" "${MAKE[@]}" --threads "$THREADS" --batches "$BATCHES" --kv q4_0 2>/dev/null),"
  echo "\"llamacpp_f16_kv\": $("$PY" scripts/bench/llamacpp_bench.py --model "$Q40" --threads "$THREADS" --batches "$BATCHES" --kv f16 2>/dev/null),"
  if [ -z "${QOQ_SKIP_PPL:-}" ]; then
    echo "\"ppl_fake\": $("$QOQ" eval -m "$CKPT" --dataset "$DATA" --max-windows 8 --json 2>/dev/null),"
    echo "\"ppl_engine\": $("$QOQ" eval -m "$CKPT" --dataset "$DATA" --max-windows 8 --engine --json 2>/dev/null),"
    echo "\"ppl_engine_fp_scores\": $("$QOQ" eval -m "$CKPT" --dataset "$DATA" --max-windows 8 --engine --fp-scores --json 2>/dev/null),"
    echo "\"ppl_engine_int8_head\": $("$QOQ" eval -m "$CKPT" --dataset "$DATA" --max-windows 8 --engine --lm-head int8 --json 2>/dev/null),"
  fi
  echo "\"done\": true}"
} > "$OUT/engine-bench.json"
python3 scripts/bench/report_engine.py "$OUT/engine-bench.json"
