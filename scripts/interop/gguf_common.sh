# Sourced by the GGUF checks (check_gguf.sh, compare_gguf.sh), from the repository root: the model (MODEL, the HF
# folder; FP, the SmolLM2 Q4_1 GGUF it comes from), the text (TEXT), llama.cpp's native tools (BIN, built once by
# scripts/bench/setup_llamacpp_native.sh), our binary (Q), and ppl FILE: llama-perplexity over CHUNKS chunks of 2048.
CACHE=${QOQ_CACHE:-$HOME/.cache/qoq}
MODEL=${MODEL:-$CACHE/smollm2/hf} FP=${FP:-$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${TEXT:-data/wikitext-2-raw/wiki.test.raw}
BIN=$(bash scripts/bench/setup_llamacpp_native.sh)
swift build -c release --product qoq >&2
Q="$(swift build -c release --show-bin-path)/qoq"
ppl() { "$BIN/llama-perplexity" -m "$1" -f "$TEXT" -c 2048 --chunks "$CHUNKS" -t "$(nproc)" 2>&1 | grep -o 'Final estimate: PPL = [0-9.]*' | awk '{print $NF}'; }
