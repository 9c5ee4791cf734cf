#!/usr/bin/env python3
"""Reproduce deepcompressor's LLM calibration sampler and write its token-id sequences.

What this reproduces
--------------------
deepcompressor (mit-han-lab/deepcompressor, commit 69f3473) builds the LLM calibration set in
``deepcompressor/app/llm/quant/dataset.py``:

* ``LlmCalibDataLoaderConfig.__post_init__`` clamps ``min_seq_length``/``max_seq_length`` to >= 0
  (0 = no filter) and replaces ``path`` by ``local_path`` when that exists;
  ``LlmCalibDataLoaderConfig.build_dataset`` passes them to ``LlmCalibDataset``.
* ``LlmCalibDataset.__init__`` (seed defaults to 42 and is never overridden by the config):
  1. ``load_dataset(path, split="validation")`` (only ``data == "pileval"`` is accepted; the default
     path, ``examples/llm/configs/__default__.yaml``, is ``mit-han-lab/pile-val-backup``, 128 x 1024).
  2. ``dataset.shuffle(seed=42)``: HF ``datasets`` ``Dataset.shuffle`` (``src/datasets/arrow_dataset.py``)
     does ``generator = np.random.default_rng(seed)``, ``permutation = generator.permutation(len(self))``
     and ``self.select(indices=permutation)``; rows are then visited in permutation order.
  3. ``rng = random.Random(42)`` (stdlib Mersenne Twister).
  4. For each row: ``ids = tokenizer.encode(row["text"].strip())`` -- transformers' default
     ``add_special_tokens=True`` with the fast tokenizer (``app/llm/model/config.py`` ``_default_build``:
     ``AutoTokenizer.from_pretrained(..., use_fast=True)``), no truncation. Skip the row if it has 0 ids,
     if ``min_seq_length > 0`` and len < min, or if ``max_seq_length > 0`` and len > max. If len >
     ``seq_length``, cut ``ids[s : s + seq_length]`` with ``s = rng.randint(0, len - seq_length)`` (both ends
     inclusive; the rng is consumed only for such long rows). Append; add its length to ``toks``.
     Stop as soon as ``len(seqs) >= num_samples and toks >= num_samples * seq_length``.
  5. Concatenate all kept pieces and split into chunks of ``seq_length`` (``torch.cat(...).split``);
     if ``toks > num_samples * seq_length`` drop the last chunk; keep the first ``num_samples`` chunks.
     (Since every piece is <= seq_length, reaching the token target implies num_samples pieces, and the
     result is always exactly num_samples chunks of seq_length.)

This script is an independent re-implementation of those steps with numpy (the permutation), the
stdlib ``random`` (the windows) and ``tokenizers`` (the tokenizer.json that transformers' fast tokenizer
wraps). The output has exactly N lines, each a JSON array of exactly L token ids.

Loading documents (--text)
--------------------------
* A text file: one row per line, exactly as HF ``datasets``' ``text`` builder
  (``src/datasets/packaged_modules/text/text.py``, ``sample_by="line"``, ``keep_linebreaks=False``): the file
  is read as UTF-8 with universal newlines (``\\r\\n`` and ``\\r`` become ``\\n``), split only at ``\\n``
  (not ``str.splitlines``), the trailing ``\\n`` removed. Blank or whitespace-only lines ARE rows: they take
  a slot in the permutation and are dropped only because they strip to text that tokenizes to 0 ids
  (with a tokenizer that adds BOS they yield ``[BOS]``, length 1, and are kept unless --min-seq-length > 1,
  just as in deepcompressor).
* A ``.jsonl``/``.json`` file: one JSON object per non-blank line, its ``"text"`` field is the row (the
  ``json`` builder, as used for pile-val-backup's ``val.jsonl.zst``; decompress it first).

Deviations / what cannot be reproduced exactly
----------------------------------------------
* deepcompressor cannot load a single local file: ``load_dataset(path, split="validation")`` needs a hub id
  or a *directory* (``datasets/load.py`` ``dataset_module_factory``: a plain file path is neither). A
  directory holding only our file works when the file name carries a validation keyword
  (``datasets/data_files.py`` ``SPLIT_KEYWORDS``: validation/valid/dev/val between ``-._ 0-9`` separators,
  e.g. ``wikitext-2-valid.tokens.txt``); the rows are then what this script reads. (Directories with several
  data files were not examined; for them, pass the rows concatenated in the order datasets lists the files.)
* Tokenization uses the ``tokenizers`` library on tokenizer.json with ``add_special_tokens=True`` and
  truncation/padding turned off, which is what transformers' fast tokenizer does. Some transformers
  classes rebuild the post-processor at load time from tokenizer_config.json (e.g. ``LlamaTokenizerFast``
  from ``add_bos_token``/``add_eos_token``); if that differs from tokenizer.json, use
  ``--no-add-special-tokens`` or a tokenizer.json saved by transformers. Slow (non-fast) tokenizers are not
  reproduced.
* deepcompressor silently returns fewer or shorter sequences if the data runs out before N*L tokens; this
  script exits with an error instead.
* Verified: the permutation equals ``datasets.Dataset.from_dict(...).shuffle(seed=42)`` (datasets 5.2.0,
  numpy 2.4.6); numpy's ``default_rng(seed).permutation`` (PCG64) is stable across numpy versions.

Usage
-----
    python3 scripts/calib/deepcompressor_sampler.py --text docs.txt --tokenizer tokenizer.json \\
        --num-samples 128 --seq-length 1024 -o calib_ids.jsonl

Dependencies: numpy, tokenizers.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys

import numpy as np
from tokenizers import Tokenizer


def load_rows(path: str) -> list[str]:
    """Rows as HF datasets' text builder (one per line) or json builder ("text" per JSONL object) gives them."""
    if path.endswith((".jsonl", ".json")):
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    sys.exit(f"{path}:{n}: expected a JSON object with a string \"text\" field")
                rows.append(obj["text"])
        return rows
    # newline=None: universal newlines, like the builder's open(); then split at "\n" only.
    with open(path, encoding="utf-8", newline=None) as f:
        content = f.read()
    return [line.rstrip("\n") for line in io.StringIO(content).readlines()]


def shuffle_order(num_rows: int, seed: int) -> np.ndarray:
    """Row order of datasets.Dataset.shuffle(seed=seed)."""
    return np.random.default_rng(seed).permutation(num_rows)


def sample(rows, encode, num_samples, seq_length, min_seq_length=0, max_seq_length=0, seed=42, trace=None):
    """deepcompressor's LlmCalibDataset selection; returns num_samples lists of seq_length ids."""
    if num_samples <= 0 or seq_length <= 0:
        raise ValueError("num_samples and seq_length must be positive")
    min_seq_length = max(0, min_seq_length)
    max_seq_length = max(0, max_seq_length)
    target = num_samples * seq_length
    rng = random.Random(seed)
    pieces: list[list[int]] = []
    total = 0
    for row_index in shuffle_order(len(rows), seed):
        ids = encode(rows[int(row_index)].strip())
        n = len(ids)
        if n == 0 or (min_seq_length > 0 and n < min_seq_length) or (max_seq_length > 0 and n > max_seq_length):
            if trace:
                trace(f"row {int(row_index)}: {n} ids, skipped")
            continue
        if n > seq_length:
            start = rng.randint(0, n - seq_length)
            ids = ids[start:start + seq_length]
            if trace:
                trace(f"row {int(row_index)}: {n} ids, window [{start}, {start + seq_length})")
        elif trace:
            trace(f"row {int(row_index)}: {n} ids, whole")
        pieces.append(list(ids))
        total += len(ids)
        if len(pieces) >= num_samples and total >= target:
            break
    else:
        if total < target:
            raise ValueError(
                f"data ran out: {total} tokens from {len(pieces)} documents, need {target} "
                f"({num_samples} x {seq_length}); deepcompressor would return short/fewer sequences here")
    flat = [t for p in pieces for t in p]
    chunks = [flat[i:i + seq_length] for i in range(0, len(flat), seq_length)]
    if total > target:
        chunks = chunks[:-1]
    chunks = chunks[:num_samples]
    assert len(chunks) == num_samples and all(len(c) == seq_length for c in chunks)
    return chunks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--text", required=True, help="documents: text file (one per line) or .jsonl with \"text\"")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json")
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--min-seq-length", type=int, default=0, help="skip documents shorter than this (0: off)")
    p.add_argument("--max-seq-length", type=int, default=0, help="skip documents longer than this (0: off)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--add-special-tokens", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the tokenizer's post-processor (BOS etc.), as transformers' encode() does")
    p.add_argument("--trace", action="store_true", help="print each visited document's fate to stderr")
    p.add_argument("-o", "--output", required=True, help="output .jsonl: one JSON array of ids per line")
    a = p.parse_args(argv)

    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_truncation()
    tok.no_padding()

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=a.add_special_tokens).ids

    rows = load_rows(a.text)
    trace = (lambda msg: print(msg, file=sys.stderr)) if a.trace else None
    try:
        seqs = sample(rows, encode, a.num_samples, a.seq_length, a.min_seq_length, a.max_seq_length, a.seed, trace)
    except ValueError as e:
        sys.exit(f"error: {e}")
    with open(a.output, "w", encoding="utf-8") as f:
        for s in seqs:
            f.write(json.dumps(s, separators=(",", ":")) + "\n")
    print(f"wrote {len(seqs)} x {a.seq_length} ids from {len(rows)} rows to {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
