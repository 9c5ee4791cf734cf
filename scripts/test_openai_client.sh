#!/usr/bin/env bash
# End-to-end check with the official `openai` Python client: installs it from PyPI into its own venv (skips, with
# a note, if that cannot be done), starts `qoq serve` on the default model with an API key on a free loopback port,
# runs scripts/openai_client_test.py, then sends SIGTERM and requires a clean exit (drain) with status 0.
#   QOQ_SERVE_MODEL  model to serve (default: the SmolLM2 folder made by scripts/setup.sh)
#   QOQ_BIN          the qoq binary (default: this checkout's debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
VENV="$CACHE/openai-client"
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openai" 2>/dev/null; }; then
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "openai>=1.30"; } >&2; then
    echo "openai client test skipped: the openai package could not be installed"; exit 0
  fi
fi
QOQ="${QOQ_BIN:-$(swift build --show-bin-path)/qoq}"
[ -x "$QOQ" ] || swift build --product qoq >&2
MODEL="${QOQ_SERVE_MODEL:-$CACHE/smollm2/hf}"
KEY="sk-qoq-$RANDOM$RANDOM"
LOG="$(mktemp)"
source scripts/serve_start.sh
start_serve "$LOG" env QOQ_API_KEY="$KEY" "$QOQ" serve -m "$MODEL" --port 0 --served-model-name smollm2
"$VENV/bin/python" scripts/openai_client_test.py --base-url "http://127.0.0.1:$SERVE_PORT/v1" --api-key "$KEY" --model smollm2
kill -TERM $SERVE_PID
RC=0; wait $SERVE_PID || RC=$?
trap 'rm -f "$LOG"' EXIT
[ $RC -eq 0 ] || { cat "$LOG" >&2; echo "qoq serve exited with status $RC after SIGTERM" >&2; exit 1; }
echo "qoq serve drained and exited cleanly after SIGTERM"
