#!/usr/bin/env bash
# Builds llama.cpp's own tools — llama-bench, llama-server, llama-quantize, llama-batched-bench, llama-perplexity,
# llama-simple (the GGUF export check) — natively
# (GGML_NATIVE = -march=native, Release, OpenMP), from the llama.cpp source that llama-cpp-python 0.3.36 vendors
# (PyPI is the only registry this machine reaches; the sdist's sha256 is checked). The same source as
# setup_llamacpp.sh's Python binding, so both peers are one llama.cpp. cmake and ninja come from PyPI into a venv.
# Idempotent. Prints the bin directory last. ~10–15 min on 2 cores the first time.
set -euo pipefail
VERSION=0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
ROOT="${QOQ_LLAMACPP_NATIVE:-$HOME/.cache/qoq/llamacpp-native}"
BIN="$ROOT/build/bin"
TOOLS=(llama-bench llama-server llama-quantize llama-batched-bench llama-perplexity llama-simple)
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-perplexity" ] && [ -x "$BIN/llama-simple" ] && [ -f "$ROOT/VERSION" ] && [ "$(cat "$ROOT/VERSION")" = "$VERSION" ]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$ROOT"
[ -x "$ROOT/venv/bin/cmake" ] || { python3 -m venv "$ROOT/venv"; "$ROOT/venv/bin/pip" install --quiet cmake ninja >&2; }
TGZ="$ROOT/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$TGZ" ] || ! echo "$SHA  $TGZ" | sha256sum -c --status; then
  URL=$(curl -fsSL https://pypi.org/simple/llama-cpp-python/ | grep -o "https://[^\"#]*llama_cpp_python-$VERSION.tar.gz" | head -1)
  [ -n "$URL" ] || { echo "llama-cpp-python $VERSION not found on PyPI" >&2; exit 1; }
  curl -fsSL -o "$TGZ.part" "$URL"
  echo "$SHA  $TGZ.part" | sha256sum -c --status || { echo "sha256 mismatch for $URL" >&2; rm -f "$TGZ.part"; exit 1; }
  mv "$TGZ.part" "$TGZ"
fi
rm -rf "$ROOT/src"; mkdir -p "$ROOT/src"
tar -xzf "$TGZ" -C "$ROOT/src" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
PATH="$ROOT/venv/bin:$PATH" cmake -S "$ROOT/src" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON >&2
PATH="$ROOT/venv/bin:$PATH" cmake --build "$ROOT/build" --target "${TOOLS[@]}" -j "$(nproc)" >&2
echo "$VERSION" > "$ROOT/VERSION"
echo "$BIN"
