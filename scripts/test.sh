#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): sets up the default model (the real-model tests need it),
# runs the whole test suite, then the bounded fuzzer over every parser.
set -euo pipefail
cd "$(dirname "$0")/.."
QOQ_BUILD=debug bash scripts/setup.sh
swift build --product qoq-fuzz
"$(swift build --show-bin-path)/qoq-fuzz" --seconds "${QOQ_FUZZ_SECONDS:-30}"
swift test
