#!/usr/bin/env python3
"""Markdown report of bench_size.sh: medians (min–max) over the rounds, qoq / llama.cpp ratios, and decode at batch 1
as a share of the memory roofline. Usage: report_size.py META.json LOG.jsonl CHECKPOINT/config.json"""
import json, re, statistics, sys

meta = json.load(open(sys.argv[1]))
recs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
cfg = json.load(open(sys.argv[3]))


def spread(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[0], xs[-1]


def fmt(xs):
    m, lo, hi = spread(xs)
    return f"{m:.1f} ({lo:.1f}–{hi:.1f})"


series = {}  # metric -> system -> [values]
def put(metric, system, v):
    series.setdefault(metric, {}).setdefault(system, []).append(v)

bandwidth = None
# The engine with the run's default LM head ("qoq"), and with the int4 head where the run measured it too.
QOQ = {"qoq": "qoq", "qoq-int4": "qoq int4 head"}
for r in recs:
    s, d = r["system"], r["data"]
    if s == "kernels":
        for row in d:
            if row["test"].startswith("read bandwidth"):
                bandwidth = row["value"]
    elif s in QOQ:
        for row in d:
            t = row["test"]
            if m := re.fullmatch(r"engine pp(\d+)", t): put(f"pp{m[1]}", QOQ[s], row["value"])
            elif m := re.fullmatch(r"engine tg(\d+)", t): put(f"tg{m[1]}", QOQ[s], row["value"])
            elif m := re.fullmatch(r"engine qserve B=(\d+) .*", t): put(f"B={m[1]}", QOQ[s], row["value"])
    elif s.startswith("llamacpp-bench-"):
        kv = s.rsplit("-", 1)[1]
        for e in d:
            metric = f"pp{e['n_prompt']}" if e["n_gen"] == 0 else f"tg{e['n_gen']}"
            put(metric, f"llama.cpp {kv} KV", e["avg_ts"])
    elif s == "llamacpp-batched-f16":
        for e in d:
            put(f"B={e['pl']}", "llama.cpp f16 KV", e["pl"] * e["tg"] / e["t"])

# Best batched throughput per round (each system's best batch in that round), then the median over rounds.
rounds = sorted({r["round"] for r in recs if r["system"] != "kernels"})
for sysname in ("qoq", "qoq int4 head", "llama.cpp f16 KV"):
    for rd in rounds:
        vals = [v[rd - 1] for m, v in ((m, series[m].get(sysname, [])) for m in series if m.startswith("B=")) if len(v) >= rd]
        if vals:
            put("best batched", sysname, max(vals))

H, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
nh = cfg["num_attention_heads"]; nkv = cfg.get("num_key_value_heads", nh); hd = cfg.get("head_dim", H // nh)
q = cfg.get("quantization_config", {}).get("weight", {})
g = q.get("group_size", 128)
g = H if g in (-1, None) else g
per_layer = H * (nh + 2 * nkv) * hd + nh * hd * H + 3 * H * I
# 4-bit codes + one (s, z) pair per row and group as the engine packs them (int8 for progressive weights, fp32 for
# asymmetric ones) + the per-row scale; the LM head as the run stored it (int8 per row, or progressive int4 g128).
progressive = q.get("format") == "progressive"
rows = (nh + 2 * nkv) * hd + H + 2 * I
layer_bytes = L * (per_layer / 2 + per_layer / g * (2 if progressive else 8) + rows * 4)
head_bytes = {"qoq": V * H + V * 4, "qoq int4 head": V * H / 2 + V * (H // 128) * 2 + V * 4}

print(f"{meta['label']}: `{meta['checkpoint']}` (int8 LM head; int4 where shown) vs `{meta['gguf']}`, {meta['threads']} threads, {meta['machine']}, "
      f"llama.cpp {meta['llamacpp']}; {len(rounds)} rounds alternating the systems; median (min–max) tokens/s.\n")
ours = [s for s in QOQ.values() if any(s in v for v in series.values())]
systems = ours + ["llama.cpp f16 KV", "llama.cpp q4_0 KV"]
pairs = [(o, p) for p in systems[len(ours):] for o in ours]
print("| test | " + " | ".join(systems) + " | " + " | ".join(f"{o} / {p}" for o, p in pairs) + " |")
print("|---" * (len(systems) + len(pairs) + 1) + "|")
order = sorted(series, key=lambda m: (0 if m.startswith("pp") else 1 if m.startswith("tg") else 2 if m.startswith("B=") else 3,
                                      int(re.sub(r"\D", "", m) or 0)))
for m in order:
    row = [fmt(series[m][s]) if s in series[m] else "—" for s in systems]
    ratios = []
    for o, peer in pairs:
        if o in series[m] and peer in series[m]:
            ratios.append(f"{statistics.median(series[m][o]) / statistics.median(series[m][peer]):.2f}×")
        else:
            ratios.append("—")
    print(f"| {m} | " + " | ".join(row) + " | " + " | ".join(ratios) + " |")
if bandwidth:
    tg = [m for m in series if m.startswith("tg")]
    for o in ours:
        if not tg or o not in series[tg[0]]: continue
        bytes_per_token = layer_bytes + head_bytes[o]
        tps = statistics.median(series[tg[0]][o])
        print(f"\nDecode at batch 1 ({o}): {bytes_per_token / 1e9:.3f} GB of weights per token × {tps:.2f} tokens/s = "
              f"{bytes_per_token * tps / 1e9:.1f} GB/s, {100 * bytes_per_token * tps / 1e9 / bandwidth:.0f}% of the "
              f"{bandwidth:.1f} GB/s read bandwidth `qoq bench --kernels` measured in the same run.")
