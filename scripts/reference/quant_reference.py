"""Golden bytes for Ember's GGUF block quantizers (crates/ember-kernels/src/quant).

The `gguf` Python package (PyPI) quantizes "with bit-exact same results as the
reference implementation in ggml-quants.c"; Ember's Q8_0 and Q4_0 must give the same
bytes for the same f32 values. Writes, into crates/ember-kernels/tests/fixtures/quant:
values.f32 (little-endian f32), q8_0.bin and q4_0.bin (GGUF's block bytes).

    python scripts/reference/quant_reference.py   # needs numpy and gguf
"""
import pathlib

import numpy as np
from gguf import GGMLQuantizationType, quants

out = pathlib.Path(__file__).resolve().parents[2] / "crates/ember-kernels/tests/fixtures/quant"
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(1234)
blocks = [rng.normal(0, 1, 32) * scale for scale in (1.0, 0.02, 3e3, 1e-3) for _ in range(8)]
blocks.append(np.zeros(32))                                   # d = 0
blocks.append(np.r_[np.zeros(31), -2.5])                      # one value, negative
blocks.append(np.r_[np.arange(-16, 16) * 0.5])                # ties at .5 for Q8_0's codes
blocks.append(np.r_[127.0, np.arange(1, 32) * 0.5])           # exact multiples of the scale
blocks.append(-np.abs(rng.normal(0, 1, 32)))                  # all negative
blocks.append(rng.normal(0, 1, 32) * 1e-8)                    # the f16 scale underflows
blocks.append(np.r_[rng.normal(0, 1, 31), 70000.0])           # a value past f16 (its scale is not)
blocks.append(np.r_[-3.0, 3.0, rng.uniform(-1, 1, 30)])       # two of largest magnitude
values = np.concatenate(blocks).astype(np.float32)
values.tofile(out / "values.f32")
for name, kind in (("q8_0", GGMLQuantizationType.Q8_0), ("q4_0", GGMLQuantizationType.Q4_0)):
    quants.quantize(values.reshape(1, -1), kind).tofile(out / f"{name}.bin")
print(f"{values.size} values, {len(blocks)} blocks -> {out}")
