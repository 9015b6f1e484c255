//! [`Dtype`]: the one name for a number format everywhere in Ember: the weights a model
//! is held in (`--dtype`), the arithmetic of a training run's matrix products
//! (`train.precision`, `bench --precision`) and the kernels' [`autocast`](crate::autocast()).
//!
//! Each use accepts what it can compute: every dtype holds weights; the float ones
//! (f32, bf16, f16) are product precisions of the kernels, the block-quantized ones
//! (q8_0, q4_0, q4_k) weight formats only; training takes f32 or bf16 (f16 gradients
//! underflow without the loss scaling Ember does not do), which the training
//! configuration checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::packed_weights::WeightFormat;

/// A number format, named as PyTorch's `torch.float32`, `torch.bfloat16`,
/// `torch.float16` are (`f32`, `bf16`, `f16`; the long names and `fp32`/`fp16` are
/// accepted too), or a block-quantized weight format named as GGUF's (`q8_0`, `q4_0`,
/// `q4_k`).
///
/// ```
/// use ember_kernels::Dtype;
///
/// assert_eq!("bfloat16".parse::<Dtype>(), Ok(Dtype::Bf16));
/// assert_eq!("fp32".parse::<Dtype>().unwrap().to_string(), "f32");
/// assert_eq!(Dtype::F16.bits(), 16);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit IEEE floats: training, and exact parity with the references.
    #[default]
    #[serde(alias = "fp32", alias = "float32")]
    F32,
    /// bfloat16: f32's range with 8 bits of mantissa.
    #[serde(alias = "bfloat16")]
    Bf16,
    /// IEEE half: 11 bits of mantissa, range ±65504.
    #[serde(alias = "fp16", alias = "float16")]
    F16,
    /// GGUF's Q8_0, for weights only: blocks of 32 signed bytes with an f16 scale.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGUF's Q4_0, for weights only: blocks of 32 four-bit values with an f16 scale.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// GGUF's Q4_K, for weights only: super-blocks of 256 four-bit values whose eight
    /// sub-blocks each have a 6-bit scale and minimum (rows that are not whole
    /// super-blocks are held in Q8_0).
    #[serde(rename = "q4_k")]
    #[allow(non_camel_case_types)] // GGUF's name
    Q4_K,
}

impl Dtype {
    /// Every dtype, in the order error messages list them.
    pub const ALL: [Dtype; 6] = [
        Dtype::F32,
        Dtype::Bf16,
        Dtype::F16,
        Dtype::Q8_0,
        Dtype::Q4_0,
        Dtype::Q4_K,
    ];

    /// The name Ember prints and writes (`f32`, `bf16`, `f16`, `q8_0`, `q4_0`, `q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_K => "q4_k",
        }
    }

    /// Bits per number (of the block-quantized formats, per value, not counting the
    /// scales their blocks share: 8.5, 4.5 and 4.5 bits per weight in all).
    pub fn bits(self) -> u32 {
        match self {
            Self::F32 => 32,
            Self::Bf16 | Self::F16 => 16,
            Self::Q8_0 => 8,
            Self::Q4_0 | Self::Q4_K => 4,
        }
    }

    /// Whether this is a float format, which products can compute in (the others are
    /// weight formats only).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::Bf16 | Self::F16)
    }

    /// Burn's float format of this dtype (`None` for the block-quantized ones), for the
    /// backends that compute in it themselves.
    pub fn float_dtype(self) -> Option<burn::tensor::FloatDType> {
        use burn::tensor::FloatDType;
        match self {
            Self::F32 => Some(FloatDType::F32),
            Self::Bf16 => Some(FloatDType::BF16),
            Self::F16 => Some(FloatDType::F16),
            Self::Q8_0 | Self::Q4_0 | Self::Q4_K => None,
        }
    }

    /// The packed layout a weight matrix of this dtype is stored in (`None` for f32).
    pub fn weight_format(self) -> Option<WeightFormat> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(WeightFormat::Bf16),
            Self::F16 => Some(WeightFormat::F16),
            Self::Q8_0 => Some(WeightFormat::Q8_0),
            Self::Q4_0 => Some(WeightFormat::Q4_0),
            Self::Q4_K => Some(WeightFormat::Q4_K),
        }
    }

    /// `v` rounded to this float format (to nearest, ties to even) and widened back to
    /// f32.
    ///
    /// # Panics
    /// For a block-quantized format, which rounds blocks of values, not one.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::Bf16 => f32::from_bits(u32::from(crate::bf16_gemm::to_bf16_bits(v)) << 16),
            Self::F16 => half::f16::from_f32(v).to_f32(),
            Self::Q8_0 | Self::Q4_0 | Self::Q4_K => {
                panic!("{self} rounds blocks of values, not one")
            }
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dtype name that is none of [`Dtype::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDtype(pub String);

impl fmt::Display for UnknownDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
        write!(f, "unknown dtype \"{}\" ({})", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownDtype {}

impl FromStr for Dtype {
    type Err = UnknownDtype;

    fn from_str(s: &str) -> Result<Self, UnknownDtype> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4_k" => Ok(Self::Q4_K),
            other => Err(UnknownDtype(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_serde_agrees_with_them() {
        for dtype in Dtype::ALL {
            assert_eq!(dtype.name().parse::<Dtype>(), Ok(dtype));
            let json = serde_json::to_string(&dtype).unwrap();
            assert_eq!(json, format!("\"{}\"", dtype.name()));
            assert_eq!(serde_json::from_str::<Dtype>(&json).unwrap(), dtype);
        }
        // Run configurations written before the names were unified say "fp32".
        assert_eq!(
            serde_json::from_str::<Dtype>("\"fp32\"").unwrap(),
            Dtype::F32
        );
        assert_eq!(
            "int8".parse::<Dtype>().unwrap_err().to_string(),
            "unknown dtype \"int8\" (f32, bf16, f16, q8_0, q4_0, q4_k)"
        );
    }

    #[test]
    fn rounding_keeps_each_formats_mantissa() {
        // 1 + 2^-9 fits f16's 10 mantissa bits but not bf16's 7.
        let v = 1.0 + 2f32.powi(-9);
        assert_eq!(Dtype::F32.round(v), v);
        assert_eq!(Dtype::F16.round(v), v);
        assert_eq!(Dtype::Bf16.round(v), 1.0);
        // Past f16's range.
        assert_eq!(Dtype::F16.round(1e5), f32::INFINITY);
        assert_eq!(Dtype::Bf16.round(1e5), 99840.0);
    }
}
