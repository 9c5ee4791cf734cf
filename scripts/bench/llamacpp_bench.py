#!/usr/bin/env python3
"""The peer's side of the engine benchmark: llama.cpp (built from source by setup_llamacpp.sh) through
llama-cpp-python's low-level API, the same tests as `qoq bench --engine`:
  pp<N>  one prompt of N random tokens in one llama_decode (llama-bench's pp test)
  tg<N>  N tokens decoded one at a time from an empty cache (llama-bench's tg test)
  qserve B x (in, out): B sequences of `in` random tokens prefilled, then `out` decode steps of B tokens;
         throughput = B*out / total time, prefill included (QServe's protocol, llama-batched-bench's S).
Usage: llamacpp_bench.py --model M.gguf [--make-q4_0 SRC.gguf] --threads 2 --batches 1,4,16 ... ; prints JSON."""
import argparse, ctypes, json, random, sys, time
import llama_cpp as L

GGML_TYPE_Q4_0 = 2

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--make-q4_0", help="requantize this GGUF to Q4_0 into --model first (allow_requantize)")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--pp", type=int, default=512)
ap.add_argument("--tg", type=int, default=128)
ap.add_argument("--input-len", type=int, default=128)
ap.add_argument("--output-len", type=int, default=64)
ap.add_argument("--batches", default="1,2,4,8,16,32")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--kv", default="q4_0", choices=["q4_0", "f16"])
a = ap.parse_args()

L.llama_backend_init()
if a.make_q4_0:
    qp = L.llama_model_quantize_default_params()
    qp.ftype = L.LLAMA_FTYPE_MOSTLY_Q4_0
    qp.allow_requantize = True
    qp.nthread = a.threads
    rc = L.llama_model_quantize(a.make_q4_0.encode(), a.model.encode(), ctypes.byref(qp))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")

mp = L.llama_model_default_params()
model = L.llama_model_load_from_file(a.model.encode(), mp)
if not model:
    sys.exit(f"cannot load {a.model}")
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)


def make_ctx(n_ctx, n_seq, n_batch):
    cp = L.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_batch
    cp.n_ubatch = min(n_batch, 512)
    cp.n_seq_max = n_seq
    cp.n_threads = a.threads
    cp.n_threads_batch = a.threads
    if a.kv == "q4_0":
        cp.type_k = GGML_TYPE_Q4_0
        cp.type_v = GGML_TYPE_Q4_0
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED  # quantized V needs flash attention
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        sys.exit("llama_init_from_model failed")
    return ctx


def decode(ctx, batch, items):
    """items: list of (token, pos, seq, want_logits)."""
    for i, (t, p, s, lg) in enumerate(items):
        batch.token[i] = t
        batch.pos[i] = p
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = s
        batch.logits[i] = 1 if lg else 0
    batch.n_tokens = len(items)
    rc = L.llama_decode(ctx, batch)
    if rc != 0:
        sys.exit(f"llama_decode failed ({rc})")


def median(xs):
    return sorted(xs)[len(xs) // 2]


rng = random.Random(1)
rows = []
# pp
ctx = make_ctx(max(a.pp, a.tg) + 16, 1, max(a.pp, 512))
batch = L.llama_batch_init(max(a.pp, 512), 0, 1)
mem = L.llama_get_memory(ctx)
pps, tgs = [], []
for _ in range(max(2, a.repeats)):
    L.llama_memory_clear(mem, True)
    toks = [rng.randrange(n_vocab) for _ in range(a.pp)]
    t = time.perf_counter()
    decode(ctx, batch, [(tok, i, 0, i == a.pp - 1) for i, tok in enumerate(toks)])
    L.llama_synchronize(ctx)
    pps.append(a.pp / (time.perf_counter() - t))
    L.llama_memory_clear(mem, True)
    t = time.perf_counter()
    for i in range(a.tg):
        decode(ctx, batch, [(rng.randrange(n_vocab), i, 0, True)])
    L.llama_synchronize(ctx)
    tgs.append(a.tg / (time.perf_counter() - t))
rows.append({"test": f"llama.cpp pp{a.pp}", "value": median(pps), "unit": "tokens/s"})
rows.append({"test": f"llama.cpp tg{a.tg}", "value": median(tgs), "unit": "tokens/s"})
L.llama_batch_free(batch)
L.llama_free(ctx)

best = (0.0, 0)
for B in [int(x) for x in a.batches.split(",") if x]:
    per = a.input_len + a.output_len
    ctx = make_ctx(B * per + 64, B, min(2048, B * a.input_len))
    n_batch = min(2048, B * a.input_len)
    batch = L.llama_batch_init(max(n_batch, B), 0, 1)
    prompts = [[rng.randrange(n_vocab) for _ in range(a.input_len)] for _ in range(B)]
    items = [(tok, i, s, i == a.input_len - 1) for s in range(B) for i, tok in enumerate(prompts[s])]
    t = time.perf_counter()
    for k in range(0, len(items), n_batch):
        decode(ctx, batch, items[k:k + n_batch])
    for step in range(a.output_len):
        decode(ctx, batch, [(rng.randrange(n_vocab), a.input_len + step, s, True) for s in range(B)])
    L.llama_synchronize(ctx)
    tput = B * a.output_len / (time.perf_counter() - t)
    rows.append({"test": f"llama.cpp qserve B={B} in={a.input_len} out={a.output_len}", "value": tput, "unit": "tokens/s"})
    if tput > best[0]:
        best = (tput, B)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
rows.append({"test": f"llama.cpp qserve best (B={best[1]})", "value": best[0], "unit": "tokens/s"})
print(json.dumps(rows, indent=1))
