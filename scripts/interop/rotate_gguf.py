#!/usr/bin/env python3
"""An FP Llama GGUF whose weights are off every 4-bit grid, with the same function (issue #15).

Our only unquantized SmolLM2 is itself a Q4_1 GGUF, so every 4-bit quantizer with aligned groups of 32 reproduces it
exactly and "our AWQ/GPTQ beat llama.cpp's Q4_1" cannot show. This writes the same model in a rotated residual basis:
each RMSNorm weight is folded into the linears that read its output (the norms become ones), and the residual stream
is multiplied by a random orthogonal Q (QR of a seeded Gaussian matrix), as QuaRot does without the Hadamard structure.
In row-vector form (y = x·Wᵀ, W stored [out, in]):
  token_embd E → E·Q;  q/k/v, gate/up W → (W·diag γ)·Q;  attn_output, ffn_down W → Qᵀ·W;
  output (the LM head; tied to E in the source) → (E·diag γ_final)·Q, written as its own tensor.
RMSNorm(x·Q) = RMSNorm(x)·Q for orthogonal Q, so the function is unchanged up to fp32 rounding; every weight is a
dense mix of the source's and lies on no 4-bit grid. Every metadata key is copied; tensors are written as F32.
Needs numpy and gguf (gguf-py). Usage: rotate_gguf.py SRC.gguf DST.gguf [--seed 0]
"""
import argparse
import sys

import numpy as np
import gguf

INPUTS = ("attn_q", "attn_k", "attn_v")
MLP_INPUTS = ("ffn_gate", "ffn_up")
OUTPUTS = ("attn_output", "ffn_down")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = gguf.GGUFReader(a.src)
    arch = r.fields["general.architecture"].contents()
    if arch != "llama":
        sys.exit(f"rotate_gguf: architecture {arch!r}; only llama is handled")
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    order = [t.name for t in r.tensors]
    if any(".ffn_gate_inp." in n or "_exps." in n for n in order):
        sys.exit("rotate_gguf: MoE tensors are not handled")
    h = w["token_embd.weight"].shape[1]
    rng = np.random.default_rng(a.seed)
    q, rr = np.linalg.qr(rng.standard_normal((h, h)))
    q = q * np.sign(np.diag(rr))[None, :]  # a Haar-distributed orthogonal matrix
    out = {}
    out["token_embd.weight"] = w["token_embd.weight"] @ q
    blocks = sorted({int(n.split(".")[1]) for n in order if n.startswith("blk.")})
    for b in blocks:
        p = f"blk.{b}."
        ga, gf = w[p + "attn_norm.weight"], w[p + "ffn_norm.weight"]
        for name in INPUTS:
            out[p + name + ".weight"] = (w[p + name + ".weight"] * ga[None, :]) @ q
        for name in MLP_INPUTS:
            out[p + name + ".weight"] = (w[p + name + ".weight"] * gf[None, :]) @ q
        for name in OUTPUTS:
            out[p + name + ".weight"] = q.T @ w[p + name + ".weight"]
        out[p + "attn_norm.weight"] = np.ones(h)
        out[p + "ffn_norm.weight"] = np.ones(h)
        for n in order:  # biases or anything else in the block would need their own rule
            if n.startswith(p) and n not in out:
                sys.exit(f"rotate_gguf: no rotation rule for {n}")
    head = w.get("output.weight", w["token_embd.weight"])
    out["output.weight"] = (head * w["output_norm.weight"][None, :]) @ q
    out["output_norm.weight"] = np.ones(h)
    if "rope_freqs.weight" in w:  # per-dimension RoPE factors: not in the residual basis
        out["rope_freqs.weight"] = w["rope_freqs.weight"]
    for n in order:
        if n not in out:
            sys.exit(f"rotate_gguf: no rotation rule for {n}")
    wr = gguf.GGUFWriter(a.dst, arch=arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if k == "general.file_type":
            wr.add_key_value(k, int(gguf.LlamaFileType.ALL_F32), gguf.GGUFValueType.UINT32)
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        wr.add_key_value(k, f.contents(), f.types[0], sub_type=sub)
    names = order + (["output.weight"] if "output.weight" not in order else [])
    for n in names:
        wr.add_tensor(n, np.ascontiguousarray(out[n], dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    print(f"rotate_gguf: {len(names)} tensors, hidden {h}, seed {a.seed} -> {a.dst}")


if __name__ == "__main__":
    main()
