#!/usr/bin/env python3
"""The BENCHMARKS.md table of scripts/bench/bench_prefix.sh: per load and system, the median of the samples and
their range (min–max) for TTFT p50 / p99 (all requests, and turns 2… of the multi-turn load) and streamed tokens/s,
and the ratios that issue #18 asks for.

  report_prefix.py ~/.cache/qoq/bench-prefix/prefix.jsonl
"""
import json, statistics, sys


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    if not rows:
        sys.exit("no samples")
    meta = rows[-1]["meta"]
    print(f"Machine: {meta['machine']}; {meta['threads']} threads each; llama.cpp: {meta['llamacpp']} "
          f"({meta.get('llamacpp_bin', '')}), llama-server extra flags: {meta.get('llama_flags') or 'none'}.")
    keys = [("ttft_p50_s", "TTFT p50 s"), ("ttft_p99_s", "TTFT p99 s"), ("ttft_later_turns_p50_s", "TTFT p50 s, turns 2…"),
            ("chunks_per_s", "streamed tokens/s"), ("wall_s", "wall s")]
    med = {}
    for load in sorted({r["load"] for r in rows}, reverse=True):
        sub = [r for r in rows if r["load"] == load]
        cols = [k for k in keys if k[0] != "ttft_later_turns_p50_s" or load == "multiturn"]
        print(f"\n{load}: {sub[0]['clients']} clients, {sub[0]['requests']} requests, {sub[0]['max_tokens']} new tokens"
              + (f", {sub[0]['turns']} turns" if sub[0].get("turns") else "")
              + (f", {sub[0]['shared_prefix_chars']}-character shared prefix" if sub[0].get("shared_prefix_chars") else ""))
        print("\n| system | samples | " + " | ".join(c[1] for c in cols) + " | failed |")
        print("|---" * (len(cols) + 3) + "|")
        for system in ["qoq", "qoq-nocache", "llama-server"]:
            s = [r for r in sub if r["system"] == system]
            if not s:
                continue
            cells = []
            for k, _ in cols:
                v = [r[k] for r in s]
                m = statistics.median(v)
                med[(load, system, k)] = m
                cells.append(f"{m:.3f} ({min(v):.3f}–{max(v):.3f})" if k != "chunks_per_s" else f"{m:.1f} ({min(v):.1f}–{max(v):.1f})")
            print(f"| {system} | {len(s)} | " + " | ".join(cells) + f" | {sum(r['failed'] for r in s)} |")
        key = "ttft_later_turns_p50_s" if load == "multiturn" else "ttft_p50_s"
        q, n, l = (med.get((load, x, key)) for x in ["qoq", "qoq-nocache", "llama-server"])
        if q:
            parts = []
            if n:
                parts.append(f"without the cache / with it = {n / q:.2f}×")
            if l:
                parts.append(f"llama-server / qoq = {l / q:.2f}×")
            print(f"\nTTFT p50{' (turns 2…)' if load == 'multiturn' else ''}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
