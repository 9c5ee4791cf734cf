#!/usr/bin/env python3
"""Issue #15: our compressed-tensors export, checked by the real consumers (throwaway venv with CPU torch,
transformers and compressed-tensors; not used by CI).

1. compressed-tensors' own pack-quantized compressor decompresses every exported linear; the result must equal our
   checkpoint's dequantized weight ((u − zp)·s, computed here from our files) rounded to the scale dtype (fp16).
2. transformers loads the exported folder through its compressed-tensors integration (fp32), and its WikiText-2
   perplexity (GPTQ protocol, the first N windows of 2048 from the committed token fixture) is compared with ours.

Usage: check_compressed_tensors.py OUR_CKPT EXPORT_DIR TOKENS.i32.bin OUR_PPL [WINDOWS]
Prints one JSON object.
"""
import json, math, os, sys, time
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from safetensors import safe_open
import compressed_tensors
from compressed_tensors.quantization import QuantizationScheme

ours_dir, ct_dir, tokens_path, our_ppl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
windows = int(sys.argv[5]) if len(sys.argv) > 5 else 8

try:  # compressed-tensors >= 0.13
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor as Packed
except ImportError:
    from compressed_tensors.compressors.quantized_compressors.pack_quantized import PackedQuantizationCompressor as Packed

qcfg = json.load(open(ct_dir + "/config.json"))["quantization_config"]
scheme = QuantizationScheme(**qcfg["config_groups"]["group_0"])


def our_dequantized(f, m):
    """Our layout: qweight U8 (out, in/2), low nibble first; scales F16 (out, ng); zeros U8 zero points (PreScale)."""
    qw = f.get_tensor(m + ".qweight").numpy()
    codes = np.empty((qw.shape[0], qw.shape[1] * 2), dtype=np.int32)
    codes[:, 0::2] = qw & 0xF
    codes[:, 1::2] = qw >> 4
    s = f.get_tensor(m + ".scales").float().numpy()
    z = f.get_tensor(m + ".zeros").numpy().astype(np.float32)
    g = codes.shape[1] // s.shape[1]
    return (codes - np.repeat(z, g, axis=1)) * np.repeat(s, g, axis=1)


ours = safe_open(ours_dir + "/model.safetensors", "pt")
ct = safe_open(ct_dir + "/model.safetensors", "pt")
modules = sorted({k[: -len(".weight_packed")] for k in ct.keys() if k.endswith(".weight_packed")})
worst, n_exact = 0.0, 0
for m in modules:
    sd = {k: ct.get_tensor(m + "." + k) for k in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")}
    dec = Packed.decompress(sd, scheme)["weight"]
    want = torch.from_numpy(our_dequantized(ours, m)).to(dec.dtype)
    d = (dec.float() - want.float()).abs().max().item()
    worst = max(worst, d)
    n_exact += int(d == 0)

t0 = time.time()
from transformers import AutoModelForCausalLM, CompressedTensorsConfig
# dequantize=True: compressed-tensors' decompressor runs on every checkpoint weight at load. (transformers 5.25 with
# compressed-tensors 0.20.1 builds the compressed skeleton with an unpacked weight_zero_point, (out, groups), and then
# refuses the packed (out/8, groups) tensor that compressed-tensors' own compress() writes: the default load fails the
# same way for llm-compressor's asymmetric checkpoints.)
model = AutoModelForCausalLM.from_pretrained(ct_dir, dtype=torch.float32,
                                             quantization_config=CompressedTensorsConfig(dequantize=True))
model.eval()
load_s = time.time() - t0
ids = np.fromfile(tokens_path, dtype="<i4")
nll, count = 0.0, 0
t0 = time.time()
with torch.no_grad():
    for w in range(windows):
        x = torch.from_numpy(ids[w * 2048:(w + 1) * 2048].astype(np.int64))[None]
        logits = model(x).logits.float()
        lp = torch.log_softmax(logits[0, :-1], dim=-1)
        nll -= lp.gather(1, x[0, 1:, None]).sum().item()
        count += 2047
ppl = math.exp(nll / count)
print(json.dumps({
    "compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__,
    "transformers": __import__("transformers").__version__,
    "modules": len(modules), "modules_exact": n_exact, "max_abs_diff_vs_ours_fp16": worst,
    "transformers_ppl": ppl, "our_fake_quant_ppl": our_ppl, "relative_difference": ppl / our_ppl - 1,
    "windows": windows, "load_seconds": load_s, "eval_seconds": time.time() - t0,
    "linear_class": type(model.model.layers[0].self_attn.q_proj).__name__,
}, indent=1))
