#!/usr/bin/env bash
# Builds the peer, llama.cpp, from source through PyPI's llama-cpp-python (the only way it reaches this
# machine), into a venv of its own under ~/.cache/qoq/llamacpp. Native CPU flags (AVX-512 VNNI here).
# Idempotent: a second run only checks the import. Takes ~10 min on 2 cores the first time.
set -euo pipefail
VERSION=0.3.36
VENV="${QOQ_LLAMACPP_VENV:-$HOME/.cache/qoq/llamacpp}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$VERSION' else 1)" 2>/dev/null; then
  echo "llama-cpp-python $VERSION already built in $VENV"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# GGML_NATIVE: -march=native (the same ISA our kernels use); OpenMP as llama.cpp ships it by default.
CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$VENV/bin/pip" install --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==$VERSION" numpy
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'built')"
