#!/usr/bin/env python3
"""Markdown report of bench_isa.sh: per test, the median (min–max) over the rounds for each kernel variant and the
ratio of the first variant's median to the second's. Usage: report_isa.py LOG.jsonl MACHINE THREADS ISA_A ISA_B"""
import json, re, statistics, sys

log, machine, threads, a, b = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
series, units, order = {}, {}, []
rounds = set()
for line in open(log):
    if not line.strip():
        continue
    r = json.loads(line)
    rounds.add(r["round"])
    for row in r["data"]:
        # The int8 peak row names the variant ("int8 peak (1 thread, avx512)"): one name for both.
        test = re.sub(r", (avx512|avx2|portable)\)", ")", row["test"])
        if test == "threads":
            continue
        if test not in series:
            order.append(test)
        series.setdefault(test, {}).setdefault(r["isa"], []).append(row["value"])
        units[test] = re.sub(r" \(.*", "", row["unit"])


def fmt(xs):
    xs = sorted(xs)
    return f"{statistics.median(xs):.1f} ({xs[0]:.1f}–{xs[-1]:.1f})"


print(f"{machine}, {threads} threads; {len(rounds)} rounds alternating the two builds; median (min–max).\n")
print(f"| test | unit | {a} | {b} | {a} / {b} |")
print("|---|---|---|---|---|")
for t in order:
    s = series[t]
    if a not in s or b not in s:
        continue
    ratio = statistics.median(s[a]) / statistics.median(s[b])
    print(f"| {t} | {units[t]} | {fmt(s[a])} | {fmt(s[b])} | {ratio:.2f}× |")
