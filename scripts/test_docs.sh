#!/usr/bin/env bash
# The docs test (issue #16): runs every command shown in README.md's ```sh blocks, at small sizes, and checks every
# flag that the README's command table names against that subcommand's --help, so the README cannot drift from the
# CLI. A command that fails, or a flag the CLI does not know, fails the test.
#
# How the README's commands are run:
#   - in order, one block at a time, each as a bash script with `set -e` in a scratch HOME: `~` is a temporary folder
#     whose .cache/qoq/smollm2 links to the real default model (nothing of the user's is written or replaced);
#   - `qoq` is the binary of QOQ_BUILD (default debug, the test command's build) behind a shell function that appends
#     the small sizes: quantize --calib-num-samples 4 --calib-seq-length 256 --max-windows 1, eval --max-windows 1
#     --seq-len 512, generate/chat -n 8 (a repeated option takes its last value);
#   - `swift build -c release` builds QOQ_BUILD instead (CI builds once); `bash scripts/run-main.sh` runs with
#     QOQ_WINDOWS=1 QOQ_SEQ_LEN=512 QOQ_CALIB_SAMPLES=4 QOQ_CALIB_SEQ=256; `bash scripts/test.sh` is the command running this test and is not rerun;
#   - a background `qoq serve … &` is stopped at the end of its block; `lm_eval` runs only where lm-evaluation-harness
#     is installed (SKIPPED, visibly, otherwise: scripts/lmeval/lmeval_check.sh is its own check).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONF=${QOQ_BUILD:-debug}
swift build -c "$CONF" --product qoq > /dev/null
BIN="$(swift build -c "$CONF" --show-bin-path)/qoq"
REAL_CACHE="${QOQ_CACHE:-$HOME/.cache/qoq}"
[ -d "$REAL_CACHE/smollm2/hf" ] || { echo "docs: the default model is not set up (bash scripts/setup.sh)" >&2; exit 1; }

T=$(mktemp -d /tmp/qoq-docs.XXXXXX)
cleanup() { pkill -f "$T/" 2> /dev/null || true; [ -n "${KEEP_DOCS_TMP:-}" ] || rm -rf "$T"; }
trap cleanup EXIT
mkdir -p "$T/home/.cache/qoq/smollm2" "$T/bin" "$T/blocks"
ln -s "$REAL_CACHE/smollm2/hf" "$T/home/.cache/qoq/smollm2/hf"
ln -s "$REAL_CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$T/home/.cache/qoq/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# `swift` on PATH keeps the real HOME (SwiftPM's own caches) and builds QOQ_BUILD when asked for release.
cat > "$T/bin/swift" <<EOF
#!/usr/bin/env bash
args=(); for a in "\$@"; do [ "\$a" = release ] && a=$CONF; args+=("\$a"); done
HOME="$HOME" exec "$(command -v swift)" "\${args[@]}"
EOF
chmod +x "$T/bin/swift"

# 1. The README's ```sh blocks, each run as a script.
python3 - "$ROOT/README.md" "$T/blocks" <<'PY'
import os, sys
lines, out, n, cur = open(sys.argv[1]).read().split("\n"), sys.argv[2], 0, None
for line in lines:
    if cur is None and line.strip() == "```sh":
        cur = []
    elif cur is not None and line.strip() == "```":
        n += 1
        open(os.path.join(out, "%02d.sh" % n), "w").write("\n".join(cur) + "\n")
        cur = None
    elif cur is not None:
        cur.append(line)
print("docs: %d sh blocks in README.md" % n)
PY
PRELUDE=$(cat <<EOF
set -euo pipefail
cd "$ROOT"
export HOME="$T/home" PATH="$T/bin:\$PATH" QOQ_PROGRESS=0
unset QOQ_CACHE
qoq() {
  local sub=\${1:-}; local extra=()
  case "\$sub" in
    quantize) extra=(--calib-num-samples 4 --calib-seq-length 256 --max-windows 1 --eval-max-seq-length 512) ;;
    eval) extra=(--max-windows 1 --seq-len 512) ;;
    generate|chat) extra=(-n 8) ;;
  esac
  echo "docs: qoq \$*" >&2
  "$BIN" "\$@" "\${extra[@]}"
}
bash() {
  case "\$*" in
    scripts/test.sh) echo "docs: bash scripts/test.sh is the command running this test: not rerun" >&2 ;;
    scripts/run-main.sh) echo "docs: bash scripts/run-main.sh (QOQ_WINDOWS=1 QOQ_SEQ_LEN=512 QOQ_CALIB_SAMPLES=4 QOQ_CALIB_SEQ=256)" >&2
      QOQ_WINDOWS=1 QOQ_SEQ_LEN=512 QOQ_CALIB_SAMPLES=4 QOQ_CALIB_SEQ=256 QOQ_BUILD=$CONF command bash "\$@" ;;
    *) command bash "\$@" ;;
  esac
}
lm_eval() {
  if type -P lm_eval > /dev/null; then command lm_eval "\$@"; else echo "docs: lm_eval SKIPPED (lm-evaluation-harness is not installed)" >&2; fi
}
EOF
)
ran=0
for b in "$T"/blocks/*.sh; do
  { echo "$PRELUDE"; cat "$b"; echo "pkill -f -- '$T/home/' || true"; } > "$b.run"
  echo "== docs: README block $(basename "$b" .sh): $(grep -cv '^\s*\(#\|$\)' "$b") command line(s)"
  t0=$(date +%s)
  if ! command bash "$b.run" > "$b.log" 2>&1; then
    echo "docs: FAILED: README block $(basename "$b" .sh):" >&2; cat "$b" >&2; echo "-- its output:" >&2; tail -40 "$b.log" >&2
    exit 1
  fi
  grep '^docs: ' "$b.log" || true
  echo "docs: block $(basename "$b" .sh) passed in $(( $(date +%s) - t0 )) s"
  ran=$((ran + 1))
done

# 2. The command table: every flag of a row exists in that subcommand's --help (or, for quantize, is a recipe field).
python3 - "$ROOT/README.md" "$BIN" <<'PY'
import re, subprocess, sys
readme, binary = open(sys.argv[1]).read(), sys.argv[2]
section = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
bad, checked = [], 0
helps = {}
def help_of(sub):
    if sub not in helps:
        r = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
        helps[sub] = r.stdout + r.stderr
    return helps[sub]
for row in section.split("\n"):
    m = re.match(r"\| `qoq (\w+)([^`]*)`", row)
    if not m:
        continue
    sub, synopsis = m.group(1), m.group(2)
    for flag in sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])", synopsis))):
        checked += 1
        if sub == "quantize":
            # Recipe fields are flags too: an unknown one is refused by name before any work.
            r = subprocess.run([binary, "quantize", flag, "x", "--model-path", "/nonexistent/m"], capture_output=True, text=True)
            if "unknown option " + flag in r.stderr:
                bad.append("quantize " + flag)
        elif not re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", help_of(sub)):
            bad.append(sub + " " + flag)
if bad:
    print("docs: FAILED: flags in the README's command table that the CLI does not know: " + ", ".join(bad), file=sys.stderr)
    sys.exit(1)
print("docs: %d flags of the README's command table found in the CLI" % checked)
PY
echo "docs: README: $ran sh block(s) ran, the command table matches the CLI"
