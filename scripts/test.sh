#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): sets up the default model (the real-model tests need it),
# runs the bounded fuzzer over every parser, the `openai` Python client against `qoq serve` (skipped if PyPI's
# openai package cannot be installed), then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
QOQ_BUILD=debug bash scripts/setup.sh
swift build --product qoq-fuzz
"$(swift build --show-bin-path)/qoq-fuzz" --seconds "${QOQ_FUZZ_SECONDS:-30}"
swift build --product qoq
bash scripts/test_openai_client.sh
swift test
