"""Formats bench_quant.sh's JSON lines as the quantization section of BENCHMARKS.md."""
import json, sys

def fmt_time(s):
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


rows, fp = [], None
for line in open(sys.argv[1]).read().replace("}}\n", "}}\n\x00").split("\x00"):
    line = line.strip()
    if not line or line == "DONE":
        continue
    for part in line.split("\nDONE"):
        part = part.strip()
        if part:
            rows.append(json.loads(part))
for r in rows:
    if "eval" in r:
        fp = r["eval"]["perplexity"]
print("| method | precision | recipe | WikiText-2 PPL (8 × 2048, GPTQ protocol) | gap to FP | quantize wall time | peak RSS |")
print("|---|---|---|---|---|---|---|")
print(f"| FP (dequantized Q4_1 GGUF) | FP32 | — | {fp:.4f} | — | — | — |")
gaps = {}
for r in rows:
    if "result" not in r:
        continue
    res = r["result"]
    ppl = res["wikitext2_ppl"]
    gaps[r["name"]] = ppl - fp
    prec = "W4A8KV4"
    print(f"| {r['name']} | {prec} | `{r['recipe'].strip()}` | {ppl:.4f} | {ppl - fp:+.4f} | "
          f"{fmt_time(res['quantize_seconds'])} | {res['peak_rss_gb']:.2f} GB |")
print()
for q, base in [("qoq-g64", "rtn-w4a8kv4-g64"), ("qoq-gchn", "rtn-w4a8kv4-gchn")]:
    if q in gaps and base in gaps:
        print(f"- {q} closes {1 - gaps[q] / gaps[base]:.0%} of {base}'s gap to FP "
              f"((ppl_QoQ − ppl_FP) / (ppl_RTN − ppl_FP) = {gaps[q] / gaps[base]:.2f}; the goal is ≤ 0.5).")
