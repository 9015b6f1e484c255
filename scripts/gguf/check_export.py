"""Reads GGUF files `ember export --gguf` wrote with the `gguf` Python package (PyPI,
llama.cpp's own reader) and compares them, tensor for tensor, with the Hub checkpoint
they came from, rearranged as llama.cpp's convert_hf_to_gguf.py rearranges it.

    python scripts/gguf/check_export.py MODEL_DIR DTYPE FILE.gguf [...]

f32, f16 and bf16 tensors must equal the checkpoint's values rounded to the type
(numpy's / gguf's rounding); Q8_0 and Q4_0 tensors must be the bytes `gguf.quants`
makes of them (bit-exact with ggml's reference quantizer); Q4_K tensors (which
`gguf.quants` cannot make) the bytes of libggml's `quantize_row_q4_K_ref` where
LIBGGML names a libggml-base shared library, else dequantized within 1.5 steps of each
sub-block of the values (the fit trades the largest value's error for the rest's: up to
1.14 steps measured on GPT-2 small).
The metadata must hold the architecture's hyperparameters and a vocabulary whose size
is the embedding's. Prints one line per file; exits 1 on any difference.
"""
import ctypes
import json
import os
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader, quants


def hub_tensors(model_dir):
    """Every tensor of the checkpoint's safetensors files, as f32 (read by hand: numpy
    has no bfloat16)."""
    tensors = {}
    for f in sorted(pathlib.Path(model_dir).glob("*.safetensors")):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        for name, t in header.items():
            if name == "__metadata__" or t["dtype"] not in ("F32", "F16", "BF16"):
                continue
            start, end = t["data_offsets"]
            data = raw[8 + n + start:8 + n + end]
            if t["dtype"] == "BF16":
                v = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                v = np.frombuffer(data, {"F32": np.float32, "F16": np.float16}[t["dtype"]]).astype(np.float32)
            tensors[name] = v.reshape(t["shape"])
    return tensors


def interleave(w, heads):
    # convert_hf_to_gguf.py's LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def expected(config, hub):
    """GGUF name -> the values llama.cpp's converter would store (before its type)."""
    out = {}
    if config["model_type"] == "gpt2":
        p = "transformer." if "transformer.wte.weight" in hub else ""
        out["token_embd.weight"] = hub[p + "wte.weight"]
        out["position_embd.weight"] = hub[p + "wpe.weight"]
        for i in range(config["n_layer"]):
            for g, h, conv in [("attn_norm", "ln_1", 0), ("attn_qkv", "attn.c_attn", 1),
                               ("attn_output", "attn.c_proj", 1), ("ffn_norm", "ln_2", 0),
                               ("ffn_up", "mlp.c_fc", 1), ("ffn_down", "mlp.c_proj", 1)]:
                w = hub[f"{p}h.{i}.{h}.weight"]
                out[f"blk.{i}.{g}.weight"] = w.T if conv else w
                out[f"blk.{i}.{g}.bias"] = hub[f"{p}h.{i}.{h}.bias"]
        out["output_norm.weight"] = hub[p + "ln_f.weight"]
        out["output_norm.bias"] = hub[p + "ln_f.bias"]
        if "lm_head.weight" in hub and not config.get("tie_word_embeddings", True):
            out["output.weight"] = hub["lm_head.weight"]
        return out
    llama = config["model_type"] == "llama"
    out["token_embd.weight"] = hub["model.embed_tokens.weight"]
    for i in range(config["num_hidden_layers"]):
        h = f"model.layers.{i}"
        for g, n in [("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"),
                     ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                     ("attn_output", "self_attn.o_proj"), ("attn_q_norm", "self_attn.q_norm"),
                     ("attn_k_norm", "self_attn.k_norm"), ("ffn_norm", "post_attention_layernorm"),
                     ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]:
            for kind in ["weight", "bias"]:
                w = hub.get(f"{h}.{n}.{kind}")
                if w is None:
                    continue
                if llama and g == "attn_q":
                    w = interleave(w, config["num_attention_heads"])
                if llama and g == "attn_k":
                    w = interleave(w, config["num_key_value_heads"])
                out[f"blk.{i}.{g}.{kind}"] = w
    out["output_norm.weight"] = hub["model.norm.weight"]
    if "lm_head.weight" in hub:
        out["output.weight"] = hub["lm_head.weight"]
    return out


def check(model_dir, dtype, path):
    config = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    want = expected(config, hub_tensors(model_dir))
    reader = GGUFReader(path)
    problems = []
    got = {t.name: t for t in reader.tensors}
    missing = set(want) - set(got)
    extra = set(got) - set(want) - {"rope_freqs.weight"}
    if missing or extra:
        problems.append(f"tensors missing {sorted(missing)}, unexpected {sorted(extra)}")
    types = {}
    for name, values in want.items():
        t = got.get(name)
        if t is None:
            continue
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml's dims are innermost first
        if shape != values.shape:
            problems.append(f"{name}: shape {shape}, want {values.shape}")
            continue
        raw = np.asarray(t.data)
        if t.tensor_type in (T.F32, T.F16, T.BF16):
            if t.tensor_type == T.F32:
                ref = values
            elif t.tensor_type == T.F16:
                ref = values.astype(np.float16)
            else:
                ref = quants.quantize(values, T.BF16)
            ok = np.array_equal(raw.reshape(-1).view(np.uint8), np.ascontiguousarray(ref).reshape(-1).view(np.uint8))
        elif t.tensor_type in (T.Q8_0, T.Q4_0):
            ok = np.array_equal(raw.reshape(-1), quants.quantize(values, t.tensor_type).reshape(-1))
        elif t.tensor_type == T.Q4_K and os.environ.get("LIBGGML"):
            ggml = ctypes.CDLL(os.environ["LIBGGML"])
            v = np.ascontiguousarray(values, dtype=np.float32)
            ref = np.zeros(v.size // 256 * 144, np.uint8)
            ggml.quantize_row_q4_K_ref(v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                       ref.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(v.size))
            ok = np.array_equal(ref, raw.reshape(-1))
        elif t.tensor_type == T.Q4_K:
            back = quants.dequantize(raw, T.Q4_K).reshape(values.shape)
            sub = values.reshape(-1, 32)
            step = (sub.max(1) - np.minimum(sub.min(1), 0)) / 15
            ok = bool(np.all(np.abs(back.reshape(-1, 32) - sub) <= step[:, None] * 1.5 + 1e-7))
        else:
            ok = False
        if not ok:
            problems.append(f"{name} ({t.tensor_type.name}) differs")
    fields = reader.fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    tokens = len(fields["tokenizer.ggml.tokens"].data)
    rows = want["token_embd.weight"].shape[0]
    if tokens != rows:
        problems.append(f"{tokens} tokens for an embedding of {rows} rows")
    for key in ["block_count", "embedding_length", "context_length", "attention.head_count"]:
        if f"{arch}.{key}" not in fields:
            problems.append(f"no {arch}.{key}")
    counts = ", ".join(f"{n} {t}" for t, n in sorted(types.items()))
    print(f"{pathlib.Path(path).name}: {arch} {dtype}: {len(want)} tensors ({counts}), "
          f"{tokens} tokens: {'equal' if not problems else 'DIFFERENT: ' + '; '.join(problems[:5])}")
    return not problems


if __name__ == "__main__":
    model_dir, dtype, *paths = sys.argv[1:]
    sys.exit(0 if all([check(model_dir, dtype, p) for p in paths]) else 1)
