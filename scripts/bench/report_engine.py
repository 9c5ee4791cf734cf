"""Formats bench_engine.sh's JSON as the engine section of BENCHMARKS.md: every claim a ratio measured in one run."""
import json, sys

d = json.load(open(sys.argv[1]))


def rows(key):
    return {r["test"]: r for r in d.get(key, [])}


k, e, q, f = rows("kernels"), rows("engine"), rows("llamacpp_q4_0_kv"), rows("llamacpp_f16_kv")
print(f"Machine: {d['machine']}; {d['threads']} threads for both systems.\n")
print("### W4A8 kernels against this machine's ceilings (`qoq bench --kernels`)\n")
print("| kernel | measured | of the ceiling |\n|---|---|---|")
for name, r in k.items():
    if name == "threads":
        continue
    unit = r["unit"]
    main, _, rest = unit.partition(" (")
    print(f"| {name} | {r['value']:.1f} {main} | {rest.rstrip(')') if rest else '(ceiling)'} |")
print()
print("GEMV rows stream ≥ 512 MB of weights per measurement (copies used in turn), so they read from memory, not L3.\n")
print("### SmolLM2-135M: the engine (QoQ W4A8KV4 g64) vs llama.cpp (Q4_0 weights)\n")
print("| test | qoq engine | llama.cpp, Q4_0 KV | ratio | llama.cpp, F16 KV | ratio |\n|---|---|---|---|---|---|")


def line(label, ek, lk):
    ev = e[ek]["value"]
    qv, fv = q[lk]["value"], f[lk]["value"]
    print(f"| {label} | {ev:.1f} | {qv:.1f} | {ev / qv:.2f}× | {fv:.1f} | {ev / fv:.2f}× |")


pp = next(t for t in e if t.startswith("engine pp"))
tg = next(t for t in e if t.startswith("engine tg"))
line(f"prefill {pp[7:]} (tokens/s)", pp, "llama.cpp " + pp[7:])
line(f"decode {tg[7:]}, batch 1 (tokens/s)", tg, "llama.cpp " + tg[7:])
for t in e:
    if t.startswith("engine qserve B="):
        line(t[7:].replace("qserve ", "QServe protocol ") + " (tokens/s)", t, "llama.cpp " + t[7:])
eb = next(t for t in e if t.startswith("engine qserve best"))
qb = next(t for t in q if "best" in t)
fb = next(t for t in f if "best" in t)
print(f"| best batched throughput | {e[eb]['value']:.1f} ({eb.split('(')[1][:-1]}) | {q[qb]['value']:.1f} ({qb.split('(')[1][:-1]}) | "
      f"{e[eb]['value'] / q[qb]['value']:.2f}× | {f[fb]['value']:.1f} ({fb.split('(')[1][:-1]}) | {e[eb]['value'] / f[fb]['value']:.2f}× |")
if "ppl_fake" in d:
    print("\n### Engine accuracy: integer kernels vs the fake-quantized model (WikiText-2, GPTQ protocol, 8 × 2048)\n")
    fake = d["ppl_fake"]["perplexity"]
    print("| path | perplexity | vs fake-quant | s/window |\n|---|---|---|---|")
    print(f"| fake-quantized model (`qoq eval`) | {fake:.4f} | — | {d['ppl_fake']['seconds'] / 8:.2f} |")
    for key, label in [("ppl_engine", "engine: W4A8 kernels, KV4 pages, integer scores, fp32 lm_head"),
                       ("ppl_engine_fp_scores", "engine: same, fp32 attention scores"),
                       ("ppl_engine_int8_head", "engine: integer scores, int8 lm_head (the generate/bench default)")]:
        if key in d:
            p = d[key]["perplexity"]
            print(f"| {label} | {p:.4f} | {100 * (p - fake) / fake:+.2f}% | {d[key]['seconds'] / 8:.2f} |")
