#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): sets up the default model (the real-model tests need it),
# runs the bounded fuzzer over every parser, the `openai` Python client against `qoq serve` (skipped if PyPI's
# openai package cannot be installed), `qoq chat` in tmux, the chat page in headless Chromium, every README command
# (the docs test), then the whole test suite. First, scripts/ci/check_structure.py (Package.swift declares exactly
# what each target imports; Sources lines ≤ 150 characters, files ≤ 600 lines). Prints the wall time of each phase at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMES=()
report() {  # the wall time of each phase run so far
  echo "== phase times =="
  local t
  for t in "${TIMES[@]}"; do echo "  $t"; done
}
phase() {  # phase NAME COMMAND...: runs it and records its wall time; a failure stops here, after the report
  local name=$1 t0 rc=0; shift
  t0=$(date +%s)
  "$@" || rc=$?
  TIMES+=("$name: $(( $(date +%s) - t0 )) s$([ $rc -ne 0 ] && echo " (failed, exit $rc)" || true)")
  if [ $rc -ne 0 ]; then report; exit $rc; fi
}
phase "structure (Package.swift imports, line and file lengths)" python3 scripts/ci/check_structure.py
phase "setup (model, debug build)" env QOQ_BUILD=debug bash scripts/setup.sh
phase "fuzzer build" swift build --product qoq-fuzz
phase "fuzzer" "$(swift build --show-bin-path)/qoq-fuzz" --seconds "${QOQ_FUZZ_SECONDS:-30}"
phase "qoq build" swift build --product qoq
phase "openai client" bash scripts/test_openai_client.sh
phase "chat (tmux)" bash scripts/test_chat_tmux.sh
phase "chat page (chromium)" bash scripts/test_chat_page.sh
phase "docs (README commands)" bash scripts/test_docs.sh
phase "swift test" swift test
report
