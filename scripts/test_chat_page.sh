#!/usr/bin/env bash
# Issue #16: the chat page of `qoq serve` in a real browser. Starts the server on the default model (loopback, a free
# port), then scripts/chat_page_cdp.py drives headless Chromium over the DevTools protocol: load /, type a message,
# Enter, the answer streams in (several lengths seen), Stop, the statistics line; the screenshot is kept in
# runs/chat-page.png (a CI artefact). Installs Debian's chromium when missing and possible; otherwise says SKIPPED
# and exits 0 (visibly). Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
MODEL="${QOQ_SERVE_MODEL:-$CACHE/smollm2/hf}"
QOQ="${QOQ_BIN:-$(swift build --show-bin-path)/qoq}"
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium > /dev/null 2>&1; }
if ! command -v chromium > /dev/null; then (install || { apt-get update > /dev/null 2>&1 && install; }) || true; fi
if ! command -v chromium > /dev/null; then echo "chat page (chromium): SKIPPED — chromium is not installed and could not be"; exit 0; fi
[ -x "$QOQ" ] || { echo "chat page: $QOQ is not built" >&2; exit 1; }
LOG="$(mktemp)"
source scripts/serve_start.sh
start_serve "$LOG" "$QOQ" serve -m "$MODEL" --port 0 --served-model-name smollm2 -t 2
mkdir -p runs
python3 scripts/chat_page_cdp.py --url "http://127.0.0.1:$SERVE_PORT/" --chromium "$(command -v chromium)" \
  --screenshot runs/chat-page.png \
  || { echo "server log:" >&2; tail -20 "$LOG" >&2; exit 1; }
grep -qE "^request [0-9]+ " "$LOG" || { cat "$LOG" >&2; echo "no request line in the server log" >&2; exit 1; }
echo "chat page (chromium): loaded, sent, streamed, stopped; the server logged the request"
