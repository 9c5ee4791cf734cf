"""The peer for BENCHMARKS.md's FP section: torch (CPU) on the same shapes and the same SmolLM2 folder that
`qoq convert` wrote (transformers loads it, which also checks our safetensors/config output).
Prints one JSON object. Usage: torch_fp.py --model DIR --data wiki.test.raw --threads N [--windows 2]"""
import argparse, json, time
import torch
from transformers import AutoModelForCausalLM
from tokenizers import Tokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--windows", type=int, default=2)
ap.add_argument("--repeats", type=int, default=5)
a = ap.parse_args()
torch.set_num_threads(a.threads)
out = {"threads": a.threads, "torch": torch.__version__}

def median(xs):
    xs = sorted(xs); return xs[len(xs) // 2]

for (m, n, k) in [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (2048, 1536, 576), (2048, 576, 1536)]:
    x = torch.randn(m, k); w = torch.randn(n, k)
    torch.nn.functional.linear(x, w)
    ts = []
    for _ in range(a.repeats):
        t = time.perf_counter(); torch.nn.functional.linear(x, w); ts.append(time.perf_counter() - t)
    out[f"sgemm {m}x{n}x{k}"] = 2 * m * n * k / median(ts) / 1e9

model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
tok = Tokenizer.from_file(a.model + "/tokenizer.json")
V = model.config.vocab_size
with torch.no_grad():
    ids = torch.tensor([[(i * 7919 + 13) % V for i in range(512)]])
    model(ids)
    ts = []
    for _ in range(max(1, a.repeats // 2)):
        t = time.perf_counter(); model(ids, use_cache=False); ts.append(time.perf_counter() - t)
    out["prefill pp512 tokens/s"] = 512 / median(ts)
    # GPTQ-protocol windows: forward + float32 cross-entropy, as `qoq eval` times them.
    rows = open(a.data, encoding="utf-8").read().splitlines(keepends=True)
    text = "\n\n".join("" if r == " \n" else r for r in rows)
    enc = tok.encode(text).ids
    t0 = time.perf_counter(); nll = 0.0
    for w in range(a.windows):
        x = torch.tensor([enc[w * 2048:(w + 1) * 2048]])
        logits = model(x, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
        nll += loss.item() * 2048
    out["seconds per 2048-token window"] = (time.perf_counter() - t0) / a.windows
    out["ppl (first windows)"] = float(torch.exp(torch.tensor(nll / (a.windows * 2048))))
print(json.dumps(out))
