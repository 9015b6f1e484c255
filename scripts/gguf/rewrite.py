"""Writes a GGUF file again with the `gguf` Python package's writer (GGUFWriter, which
llama.cpp's convert_hf_to_gguf.py uses): every metadata key and tensor of IN, as
GGUFReader reads them, into OUT. scripts/gguf/interop.sh has Ember run the rewritten
file and expects what it computes from the original: Ember reads what the gguf
package writes (its key order, alignment and padding are its own).

    python scripts/gguf/rewrite.py IN.gguf OUT.gguf
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

source, target = sys.argv[1:]
reader = GGUFReader(source)
arch = reader.fields["general.architecture"].contents()
writer = GGUFWriter(target, arch)
for key, field in reader.fields.items():
    if key.startswith("GGUF.") or key == "general.architecture":
        continue
    vtype = field.types[0]
    sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
    writer.add_key_value(key, field.contents(), vtype, sub)
for t in reader.tensors:
    writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(f"{source} -> {target}: {len(reader.fields)} keys, {len(reader.tensors)} tensors")
