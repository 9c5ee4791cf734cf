#!/usr/bin/env bash
# Issue #18: prefix caching changes no output on a real model. 8 prompts that share a 3,000-character prefix
# (WikiText-2 validation paragraphs) run batched through `qoq generate` (24 greedy tokens each) with the cache on and
# with --no-prefix-caching; the texts must be identical. Not part of CI (it needs a quantized checkpoint).
#   CKPT (required: a qoq checkpoint)  OUT (/tmp/qoq-prefix-check)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${CKPT:?set CKPT to a qoq checkpoint}"
OUT=${OUT:-/tmp/qoq-prefix-check}; mkdir -p "$OUT"
swift build -c release --product qoq >&2
Q="$(swift build -c release --show-bin-path)/qoq"
python3 - "$OUT/prompts.jsonl" <<'PY'
import json, sys
paras = [p.strip() for p in open("data/calibration/wikitext-2-valid.tokens.txt", encoding="utf-8").read().split("\n \n")
         if len(p.strip()) > 200]
system = " ".join(paras[:6])[:3000]
with open(sys.argv[1], "w") as f:
    for i in range(8):
        f.write(json.dumps({"prompt": system + "\n\nQuestion: " + paras[10 + i][:300]}) + "\n")
PY
"$Q" generate -m "$CKPT" --prompts-file "$OUT/prompts.jsonl" --raw -n 24 --json > "$OUT/on.jsonl"
"$Q" generate -m "$CKPT" --prompts-file "$OUT/prompts.jsonl" --raw -n 24 --json --no-prefix-caching > "$OUT/off.jsonl"
python3 - "$OUT/on.jsonl" "$OUT/off.jsonl" <<'PY'
import json, sys
on, off = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
key = lambda d: d["index"]
same = sum(a["text"] == b["text"] for a, b in zip(sorted(on, key=key), sorted(off, key=key)))
print(f"{same} of {len(on)} texts identical with the prefix cache on and off")
sys.exit(0 if same == len(on) == len(off) == 8 else 1)
PY
