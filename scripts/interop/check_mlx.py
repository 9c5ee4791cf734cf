#!/usr/bin/env python3
"""Issue #15: our MLX export loaded by mlx-lm itself (throwaway venv: pip install 'mlx[cpu]' mlx-lm; not in CI).
WikiText-2 perplexity (GPTQ protocol, the first N windows of 2048 from the committed token fixture) through mlx-lm's
model, beside our fake-quantized checkpoint's, and a short greedy generation.

Usage: check_mlx.py EXPORT_DIR TOKENS.i32.bin OUR_PPL [WINDOWS [SEQ_LEN]]     Prints one JSON object.
SEQ_LEN (default 2048) shortens the windows: mlx's CPU backend on x86 is slow (one 2048-token window of the 135M model
did not finish in 25 minutes), and `qoq eval --seq-len N` scores the same windows on our side.
"""
import json, math, sys, time

import numpy as np
import mlx.core as mx
import mlx.nn as nn
from mlx_lm import load, generate

export, tokens_path, our_ppl = sys.argv[1], sys.argv[2], float(sys.argv[3])
windows = int(sys.argv[4]) if len(sys.argv) > 4 else 8
seq = int(sys.argv[5]) if len(sys.argv) > 5 else 2048
t0 = time.time()
model, tokenizer = load(export)
load_s = time.time() - t0
ids = np.fromfile(tokens_path, dtype="<i4")
nll, count = 0.0, 0
t0 = time.time()
for w in range(windows):
    x = mx.array(ids[w * seq:(w + 1) * seq].astype(np.int32))[None]
    logits = model(x).astype(mx.float32)
    lp = logits[0, :-1] - mx.logsumexp(logits[0, :-1], axis=-1, keepdims=True)
    nll -= mx.take_along_axis(lp, x[0, 1:, None], axis=-1).sum().item()
    count += seq - 1
ppl = math.exp(nll / count)
eval_s = time.time() - t0
text = generate(model, tokenizer, prompt="The capital of France is", max_tokens=24, verbose=False)
layer = model.model.layers[0].self_attn.q_proj
moe = getattr(model.model.layers[0], "block_sparse_moe", None)  # Mixtral (issue #14): the stacked experts' class
experts = type(moe.switch_mlp.gate_proj).__name__ if moe is not None else None
print(json.dumps({"mlx": mx.__version__, "mlx_lm": __import__("mlx_lm").__version__, "mlx_ppl": ppl, "our_fake_quant_ppl": our_ppl,
                  "relative_difference": ppl / our_ppl - 1, "windows": windows, "seq_len": seq, "load_seconds": load_s, "eval_seconds": eval_s,
                  "q_proj_class": type(layer).__name__, "expert_class": experts, "generation": text}, indent=1))
