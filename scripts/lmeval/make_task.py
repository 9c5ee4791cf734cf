#!/usr/bin/env python3
"""Writes a small multiple-choice task from WikiText-2 validation text (seeded, so every run writes the same file):
the context is the start of a sentence, the choices are its true next four words and three spans of four words
taken from other sentences. One JSON object per line, in the format both `qoq eval --tasks` and the lm-eval task
in this folder read: {"context", "choices" (each with its leading space), "gold"}.

  make_task.py VALID_TEXT OUT.jsonl [N]
"""
import json, os, random, re, sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    text = open(src, encoding="utf-8").read()
    sents = [s.strip() for s in re.split(r"(?<=[.!?]) ", text) if 14 <= len(s.split()) <= 40 and "=" not in s and "<unk>" not in s]
    rng = random.Random(1234)
    rng.shuffle(sents)
    items = []
    for s in sents:
        w = s.split()
        cut = rng.randrange(6, len(w) - 5)
        ctx, gold = " ".join(w[:cut]), " " + " ".join(w[cut:cut + 4])
        others = []
        while len(others) < 3:
            o = rng.choice(sents).split()
            j = rng.randrange(0, len(o) - 4)
            span = " " + " ".join(o[j:j + 4])
            if span != gold and span not in others:
                others.append(span)
        k = rng.randrange(4)
        choices = others[:k] + [gold] + others[k:]
        items.append({"context": ctx, "choices": choices, "gold": k})
        if len(items) == n:
            break
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
