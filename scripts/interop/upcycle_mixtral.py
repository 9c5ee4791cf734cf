#!/usr/bin/env python3
"""A working Mixtral-shaped model from a dense Llama folder (issue #14), for checking MoE exports with their consumers.

No unquantized MoE model is reachable here, and a random-weight Mixtral scores near its vocabulary size whatever a
consumer does with it, so a layout bug would not show. This makes one whose perplexity depends on every expert:
expert e of layer l is the dense MLP with its intermediate channels permuted by its own random permutation (w1/w3
rows, w2 columns: a mix-up of one expert's tensors with another's breaks the function) and its w2 scaled by
SCALES[e] (the router's choice changes the output: a wrong router layout or top-k shows in perplexity). The router
is random (std 0.5 / sqrt(hidden)). Writes config.json (model_type mixtral), model.safetensors (f16) and copies the
tokenizer files. Needs numpy only; reads and writes safetensors by hand (8-byte header length, JSON header, data).
Usage: upcycle_mixtral.py SRC_HF_FOLDER DST_FOLDER [--experts 4] [--top-k 2] [--seed 0]
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}
SCALES = [0.8, 0.93, 1.07, 1.2, 0.87, 1.13, 0.97, 1.03]


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            if info["dtype"] == "BF16":
                arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).astype(np.float32)
            out[name] = arr.reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype=np.float16).tobytes()
        header[name] = {"dtype": "F16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".part", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not 1 <= a.top_k <= a.experts <= len(SCALES):
        raise SystemExit(f"need 1 <= top-k <= experts <= {len(SCALES)}")
    if os.path.exists(a.dst):
        raise SystemExit(f"{a.dst} exists; not overwriting")
    cfg = json.load(open(os.path.join(a.src, "config.json")))
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise SystemExit(f"{a.src}: a dense llama/mistral folder is needed, not {cfg.get('model_type')}")
    w = read_safetensors(os.path.join(a.src, "model.safetensors"))
    rng = np.random.default_rng(a.seed)
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    out = {}
    for name, t in w.items():
        if ".mlp." not in name:
            out[name] = t
    for l in range(layers):
        p = f"model.layers.{l}."
        gate, up, down = (w[p + f"mlp.{m}_proj.weight"] for m in ("gate", "up", "down"))
        moe = p + "block_sparse_moe."
        out[moe + "gate.weight"] = rng.normal(0, 0.5 / np.sqrt(hidden), (a.experts, hidden)).astype(np.float32)
        for e in range(a.experts):
            perm = rng.permutation(gate.shape[0])
            out[moe + f"experts.{e}.w1.weight"] = gate[perm]
            out[moe + f"experts.{e}.w3.weight"] = up[perm]
            out[moe + f"experts.{e}.w2.weight"] = down[:, perm] * SCALES[e]
    os.makedirs(a.dst)
    write_safetensors(os.path.join(a.dst, "model.safetensors"), out)
    cfg.update({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": a.experts,
                "num_experts_per_tok": a.top_k, "router_aux_loss_coef": 0.0, "sliding_window": None})
    json.dump(cfg, open(os.path.join(a.dst, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if os.path.exists(os.path.join(a.src, f)):
            shutil.copy(os.path.join(a.src, f), a.dst)
    print(f"wrote {a.dst}: {layers} layers × {a.experts} experts (top {a.top_k}), w2 scales {SCALES[:a.experts]}")


if __name__ == "__main__":
    main()
