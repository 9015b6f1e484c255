//! The book's PyTorch state dict (`torch.save(model.state_dict())`, `.pth`): names
//! `tok_emb`, `trf_blocks.N.att.W_query`, ..., `nn.Linear` weights `[out, in]`.
//!
//! The one mapping that is not a renaming: the book keeps separate query, key and
//! value projections, which become GPT-2's fused `c_attn` (`[Q | K | V]`). The result
//! is a set of GPT-2 tensors under Hugging Face names, loaded like a Hub checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use super::GptConfig;
use crate::weights::WeightsError;
use crate::weights::tensors::{MemoryTensors, RawTensor};

/// Every floating-point tensor of a `torch.save` file, as f32.
#[cfg(feature = "pth")]
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    use pytorch_reader::DType;
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| {
        WeightsError::format(path, format!("not a readable PyTorch checkpoint: {e}"))
    })?;
    let mut out = BTreeMap::new();
    for (name, tensor) in reader.into_tensors() {
        let bytes = match tensor.dtype() {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                tensor.read().map_err(|e| WeightsError::io(path, e))?
            }
            // Integer and boolean buffers (the book's causal masks) are not weights.
            _ => continue,
        };
        let data: Vec<f32> = match tensor.dtype() {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        out.insert(
            name,
            RawTensor {
                shape: tensor.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Without the `pth` feature, reading a `torch.save` file is an error naming it.
#[cfg(not(feature = "pth"))]
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    Err(WeightsError::format(
        path,
        "reading PyTorch .pth checkpoints needs ember-model's `pth` feature, which this build leaves out",
    ))
}

/// The book's tensors renamed to GPT-2's (`transformer.` prefix), Q, K and V fused,
/// `nn.Linear` weights transposed to `Conv1D`'s `[in, out]`. Every missing or
/// mis-shaped tensor is named.
pub fn to_gpt2_tensors(
    config: &GptConfig,
    mut book: BTreeMap<String, RawTensor>,
    path: &Path,
) -> Result<MemoryTensors, WeightsError> {
    let (v, d) = (config.vocab_size, config.emb_dim);
    let mut problems = Vec::new();
    let mut take = |name: String, shape: &[usize]| -> Option<RawTensor> {
        match book.remove(&name) {
            None => {
                problems.push(format!("missing tensor {name} {shape:?}"));
                None
            }
            Some(t) if t.shape != shape => {
                problems.push(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.shape
                ));
                None
            }
            Some(t) => Some(t),
        }
    };
    let mut hf = BTreeMap::new();
    let mut put = |name: String, t: Option<RawTensor>| {
        if let Some(t) = t {
            hf.insert(format!("transformer.{name}"), t);
        }
    };
    put("wte.weight".into(), take("tok_emb.weight".into(), &[v, d]));
    put(
        "wpe.weight".into(),
        take("pos_emb.weight".into(), &[config.context_length, d]),
    );
    for i in 0..config.n_layers {
        let b = |s: &str| format!("trf_blocks.{i}.{s}");
        let h = |s: &str| format!("h.{i}.{s}");
        let qkv: Vec<Option<RawTensor>> = ["W_query", "W_key", "W_value"]
            .iter()
            .map(|w| take(b(&format!("att.{w}.weight")), &[d, d]).map(|t| t.transposed()))
            .collect();
        if qkv.iter().all(Option::is_some) {
            let parts: Vec<RawTensor> = qkv.into_iter().flatten().collect();
            put(h("attn.c_attn.weight"), Some(concat_columns(&parts)));
        }
        if config.qkv_bias {
            let biases: Vec<Option<RawTensor>> = ["W_query", "W_key", "W_value"]
                .iter()
                .map(|w| take(b(&format!("att.{w}.bias")), &[d]))
                .collect();
            if biases.iter().all(Option::is_some) {
                let data: Vec<f32> = biases.into_iter().flatten().flat_map(|t| t.data).collect();
                put(
                    h("attn.c_attn.bias"),
                    Some(RawTensor {
                        shape: vec![data.len()],
                        data,
                    }),
                );
            }
        }
        for (from, to, d_in, d_out) in [
            ("att.out_proj", "attn.c_proj", d, d),
            ("ff.layers.0", "mlp.c_fc", d, 4 * d),
            ("ff.layers.2", "mlp.c_proj", 4 * d, d),
        ] {
            let w = take(b(&format!("{from}.weight")), &[d_out, d_in]).map(|t| t.transposed());
            put(h(&format!("{to}.weight")), w);
            put(
                h(&format!("{to}.bias")),
                take(b(&format!("{from}.bias")), &[d_out]),
            );
        }
        for (from, to) in [("norm1", "ln_1"), ("norm2", "ln_2")] {
            put(
                h(&format!("{to}.weight")),
                take(b(&format!("{from}.scale")), &[d]),
            );
            put(
                h(&format!("{to}.bias")),
                take(b(&format!("{from}.shift")), &[d]),
            );
        }
    }
    put("ln_f.weight".into(), take("final_norm.scale".into(), &[d]));
    put("ln_f.bias".into(), take("final_norm.shift".into(), &[d]));
    let head = take("out_head.weight".into(), &[v, d]);
    if config.tie_embeddings {
        if let (Some(head), Some(wte)) = (&head, hf.get("transformer.wte.weight"))
            && head.data != wte.data
        {
            problems.push(
                "out_head.weight differs from tok_emb.weight but the config ties them".into(),
            );
        }
    } else if let Some(head) = head {
        hf.insert("lm_head.weight".into(), head);
    }
    // The book's own checkpoints carry causal-mask buffers.
    problems.extend(
        book.keys()
            .filter(|name| !name.ends_with(".att.mask"))
            .map(|name| format!("unexpected tensor {name}")),
    );
    if !problems.is_empty() {
        return Err(WeightsError::Mismatch {
            path: path.to_path_buf(),
            problems: problems.join("; "),
        });
    }
    Ok(MemoryTensors {
        tensors: hf,
        origin: path.to_path_buf(),
    })
}

/// Matrices `[rows, c_i]` side by side into `[rows, sum c_i]`.
fn concat_columns(parts: &[RawTensor]) -> RawTensor {
    let rows = parts[0].shape[0];
    let cols: usize = parts.iter().map(|p| p.shape[1]).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for p in parts {
            let c = p.shape[1];
            data.extend_from_slice(&p.data[r * c..(r + 1) * c]);
        }
    }
    RawTensor {
        shape: vec![rows, cols],
        data,
    }
}
