#!/usr/bin/env bash
# Builds llama.cpp's own tools — llama-bench, llama-server, llama-quantize, llama-batched-bench, llama-perplexity,
# llama-simple (the GGUF export check) — natively
# (GGML_NATIVE = -march=native, Release, OpenMP), from the llama.cpp source that llama-cpp-python 0.3.36 vendors
# (PyPI is the only registry this machine reaches; the sdist's sha256 is checked). The same source as
# setup_llamacpp.sh's Python binding, so both peers are one llama.cpp. cmake and ninja come from PyPI into a venv.
# Idempotent. Prints the bin directory last. ~10–15 min on 2 cores the first time.
# QOQ_LLAMACPP_NO_AMX=1 builds every x86 feature of -march=native except AMX, into build-noamx: some VMs report AMX in
# cpuid, but llama.cpp's AMX matmul dies there with SIGILL on its first tileloadd (seen on an Intel Xeon VM, 2026-12-06).
set -euo pipefail
VERSION=0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
ROOT="${QOQ_LLAMACPP_NATIVE:-$HOME/.cache/qoq/llamacpp-native}"
BUILD="$ROOT/build"; [ "${QOQ_LLAMACPP_NO_AMX:-0}" = 1 ] && BUILD="$ROOT/build-noamx"
BIN="$BUILD/bin"
TOOLS=(llama-bench llama-server llama-quantize llama-batched-bench llama-perplexity llama-simple)
if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-perplexity" ] && [ -x "$BIN/llama-simple" ] && [ -f "$BUILD/VERSION" ] && [ "$(cat "$BUILD/VERSION")" = "$VERSION" ]; then
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
if [ ! -f "$ROOT/src/CMakeLists.txt" ] || [ "$(cat "$ROOT/src/.qoq-version" 2>/dev/null)" != "$VERSION" ]; then
  rm -rf "$ROOT/src"; mkdir -p "$ROOT/src"
  tar -xzf "$TGZ" -C "$ROOT/src" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
  echo "$VERSION" > "$ROOT/src/.qoq-version"
fi
ISA=(-DGGML_NATIVE=ON)
if [ "${QOQ_LLAMACPP_NO_AMX:-0}" = 1 ]; then
  ISA=(-DGGML_NATIVE=OFF)
  for f in SSE42 F16C FMA BMI2 AVX AVX2; do ISA+=("-DGGML_$f=ON"); done
  grep -qw avx_vnni /proc/cpuinfo && ISA+=(-DGGML_AVX_VNNI=ON)
  grep -qw avx512f /proc/cpuinfo && ISA+=(-DGGML_AVX512=ON)
  grep -qw avx512vbmi /proc/cpuinfo && ISA+=(-DGGML_AVX512_VBMI=ON)
  grep -qw avx512_vnni /proc/cpuinfo && ISA+=(-DGGML_AVX512_VNNI=ON)
  grep -qw avx512_bf16 /proc/cpuinfo && ISA+=(-DGGML_AVX512_BF16=ON)
fi
PATH="$ROOT/venv/bin:$PATH" cmake -S "$ROOT/src" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${ISA[@]}" \
  -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON >&2
PATH="$ROOT/venv/bin:$PATH" cmake --build "$BUILD" --target "${TOOLS[@]}" -j "$(nproc)" >&2
echo "$VERSION" > "$BUILD/VERSION"
echo "$BIN"
