"""Golden bytes for Ember's Q4_K quantizer (crates/ember-kernels/src/quant/q4_k.rs) and
Q6_K reader (q6_k.rs).

The `gguf` Python package dequantizes Q4_K but does not quantize it, so the bytes come
from llama.cpp's own reference quantizer, `quantize_row_q4_K_ref` in libggml-base (what
`llama-quantize` runs without an importance matrix), called through ctypes on the same
values as quant_reference.py's (values.f32, 1,280 values: five super-blocks of 256).
Writes crates/ember-kernels/tests/fixtures/quant/q4_k.bin, and checks that the `gguf`
package dequantizes those bytes as libggml does; and q6_k.bin (`quantize_row_q6_K_ref`'s
bytes of the same values) with q6_k.f32 (libggml's `dequantize_row_q6_K` of them), which
Ember's Q6_K reader must reproduce.

    python scripts/reference/q4_k_reference.py PATH/TO/libggml-base.so
    # e.g. llama.cpp's build/bin/libggml-base.so, or llama_cpp/lib/ in the
    # llama-cpp-python wheel; needs numpy and gguf
"""
import ctypes
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants

BLOCK_BYTES, SUPER_BLOCK = 144, 256

ggml = ctypes.CDLL(sys.argv[1])
out = pathlib.Path(__file__).resolve().parents[2] / "crates/ember-kernels/tests/fixtures/quant"
values = np.fromfile(out / "values.f32", dtype=np.float32)
assert values.size % SUPER_BLOCK == 0
f32p = ctypes.POINTER(ctypes.c_float)


def quantize(name, block_bytes):
    """libggml's `quantize_row_<name>_ref` of the values, and its `dequantize_row_<name>`
    of those blocks."""
    blocks = np.zeros(values.size // SUPER_BLOCK * block_bytes, dtype=np.uint8)
    getattr(ggml, f"quantize_row_{name}_ref")(values.ctypes.data_as(f32p), blocks.ctypes.data_as(ctypes.c_void_p),
                                              ctypes.c_int64(values.size))
    back = np.zeros_like(values)
    getattr(ggml, f"dequantize_row_{name}")(blocks.ctypes.data_as(ctypes.c_void_p), back.ctypes.data_as(f32p),
                                            ctypes.c_int64(values.size))
    return blocks, back


blocks, dequantized = quantize("q4_K", BLOCK_BYTES)
blocks.tofile(out / "q4_k.bin")
by_gguf = quants.dequantize(blocks.reshape(1, -1), GGMLQuantizationType.Q4_K).reshape(-1)
assert np.array_equal(by_gguf, dequantized), "gguf and libggml dequantize alike"
print(f"{values.size} values -> {out / 'q4_k.bin'} ({blocks.size} bytes)")

q6, back = quantize("q6_K", 210)
q6.tofile(out / "q6_k.bin")
back.tofile(out / "q6_k.f32")
print(f"{values.size} values -> {out / 'q6_k.bin'} and q6_k.f32")
