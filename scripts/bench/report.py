"""Formats bench_fp.sh's JSON as the FP section of BENCHMARKS.md (ratios qoq / torch, same run)."""
import json, sys

r = json.load(open(sys.argv[1]))
m = r["machine"]
def q(t):
    return {row["test"]: row["value"] for row in r[f"qoq_t{t}"]["bench"]}
print(f"Measured {r['date']} on {m['cpu']} (family {m['family']} model {m['model']}), {m['cores']} vCPUs, "
      f"quiet machine. Command: `bash scripts/bench/bench_fp.sh > fp.json && python3 scripts/bench/report.py fp.json`.\n")
peak = q(1).get("fp32 fma peak (1 thread)")
if peak:
    print(f"Synthetic FP32 FMA peak of one thread on this machine: **{peak:.0f} GFLOPS**.\n")
print("| test | threads | qoq | torch | qoq / torch | qoq / peak |")
print("|---|---|---|---|---|---|")
for t in (1, 2):
    qq, tt = q(t), r[f"torch_t{t}"]
    for k in [x for x in qq if x.startswith("sgemm")]:
        eff = f"{qq[k] / (peak * t):.0%}" if peak else ""
        print(f"| {k} GFLOPS | {t} | {qq[k]:.1f} | {tt[k]:.1f} | {qq[k] / tt[k]:.2f} | {eff} |")
for t in (1, 2):
    qq, tt = q(t), r[f"torch_t{t}"]
    print(f"| SmolLM2 prefill pp512 tokens/s | {t} | {qq['prefill pp512']:.0f} | {tt['prefill pp512 tokens/s']:.0f} | "
          f"{qq['prefill pp512'] / tt['prefill pp512 tokens/s']:.2f} | |")
for t in (1, 2):
    e, tt = r[f"qoq_t{t}"]["eval"], r[f"torch_t{t}"]
    s = e["seconds"] / e["windows"]
    print(f"| SmolLM2 seconds per 2048-token window (forward + CE) | {t} | {s:.2f} | "
          f"{tt['seconds per 2048-token window']:.2f} | {tt['seconds per 2048-token window'] / s:.2f}× faster | |")
for t in (1, 2):
    qq = q(t)
    print(f"| SmolLM2 FP decode tg32 tokens/s (qoq only) | {t} | {qq['decode tg32']:.1f} | | | |")
e = r["qoq_t2"]["eval"]
print(f"\nPerplexity of the same 2 windows: qoq {e['perplexity']:.4f}, torch {r['torch_t2']['ppl (first windows)']:.4f}.")
