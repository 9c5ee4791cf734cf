#!/usr/bin/env python3
"""The same weights as a `qoq synth` checkpoint (HF Llama folder, bf16/f32 sharded safetensors), as a GGUF that
llama.cpp loads (issue #12 item 4: "the same weights as a GGUF for llama.cpp (gguf-py or llama-quantize)").

Runs in a throwaway venv with torch, safetensors and gguf (e.g. /work/venv-ref); not used by CI.
Tensors are streamed one at a time (header, metadata and tensor infos first, then each tensor's data), so memory
stays at one fp32 tensor. Linear weights and the embedding are written as Q8_0 (F32 norms): then
`llama-quantize --allow-requantize OUT.gguf OUT-q4_0.gguf Q4_0` gives llama.cpp's own Q4_0 recipe of them.
q_proj/k_proj rows are permuted exactly as llama.cpp's convert_hf_to_gguf.py does for the `llama` architecture
(HF's rotate-half RoPE layout → GGML's interleaved one), so the GGUF computes the same function as the folder.
The synthetic checkpoint has no tokenizer: the GGUF gets an SPM-style vocabulary of `vocab_size` placeholder pieces
(<unk>, <s>, </s>, the 256 byte tokens, then "<tN>"), enough for llama-bench and llama-server's token-id prompts.

Usage: synth_to_gguf.py HF_FOLDER OUT.gguf
"""
import json, sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
import gguf


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.permute: (heads, 2, rows/heads/2, cols) with the middle axes swapped.
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")  # model.layers.{i}.{module}.{proj}.weight
    i, rest = parts[2], ".".join(parts[3:])
    table = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    if rest not in table:
        sys.exit(f"unexpected tensor {hf}")
    return f"blk.{i}.{table[rest]}"


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        sys.exit("only model_type llama is supported")
    H, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    index = src / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    where = {}
    for f in files:
        with safe_open(src / f, framework="pt") as st:
            for k in st.keys():
                where[k] = f
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in where:
        del where["lm_head.weight"]
    order = sorted(where, key=lambda n: (0, 0, n) if "embed" in n else (2, 0, n) if not n.startswith("model.layers.")
                   else (1, int(n.split(".")[2]), n))

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(src.name)
    w.add_context_length(cfg.get("max_position_embeddings", 8192))
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_rope_dimension_count(cfg.get("head_dim", H // nh))
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"<t{i}>" for i in range(len(tokens), V)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (V - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens[:V])
    w.add_token_scores([0.0] * V)
    w.add_token_types(types[:V])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    Q8 = gguf.GGMLQuantizationType.Q8_0
    def shape_of(name):
        with safe_open(src / where[name], framework="pt") as st:
            return list(st.get_slice(name).get_shape())
    for name in order:
        shp = shape_of(name)
        if len(shp) == 1:
            w.add_tensor_info(gguf_name(name), shp, np.dtype(np.float32), shp[0] * 4)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shp, Q8)
            w.add_tensor_info(gguf_name(name), byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=Q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, name in enumerate(order):
        with safe_open(src / where[name], framework="pt") as st:
            t = st.get_tensor(name).to(torch.float32).numpy()
        if name.endswith("q_proj.weight"):
            t = permute(t, nh)
        elif name.endswith("k_proj.weight"):
            t = permute(t, nkv)
        data = t if t.ndim == 1 else gguf.quants.quantize(t, Q8)
        w.write_tensor_data(data)
        print(f"\r{i + 1}/{len(order)} {name}", end="", file=sys.stderr, flush=True)
    w.close()
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
