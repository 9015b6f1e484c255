//! Root-mean-square layer normalization (Zhang and Sennrich 2019), as Llama and Qwen3
//! use it: no mean subtraction, no bias, a learned scale; Gemma scales by `1 + weight`
//! (its weights start at zero).

use burn::module::Module;
use burn::nn::Initializer;
use burn::prelude::*;

/// Configuration of [`RmsNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Size of the normalized (last) dimension.
    pub d_model: usize,
    /// Added to the mean square (`rms_norm_eps` in the Hub's configs).
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// Added to the learned scale before it multiplies (Gemma's `1 + weight`: 1).
    #[config(default = 0.0)]
    pub weight_offset: f64,
}

/// `x / √(mean(x²) + ε) · (weight_offset + weight)` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// The learned scale, `[d_model]` (the Hub's `weight`).
    pub weight: burn::module::Param<Tensor<1>>,
    /// ε.
    pub epsilon: f64,
    /// Added to `weight` (0, or Gemma's 1).
    pub weight_offset: f64,
}

impl RmsNormConfig {
    /// A norm whose scale starts at one.
    pub fn init(&self, device: &Device) -> RmsNorm {
        let start = if self.weight_offset == 0.0 {
            Initializer::Ones
        } else {
            Initializer::Constant {
                value: 1.0 - self.weight_offset,
            }
        };
        RmsNorm {
            weight: start.init([self.d_model], device),
            epsilon: self.epsilon,
            weight_offset: self.weight_offset,
        }
    }
}

impl RmsNorm {
    /// # Shapes
    /// - x: `[..., d_model]` → `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let scale = if self.weight_offset == 0.0 {
            self.weight.val()
        } else {
            self.weight.val() + self.weight_offset
        };
        ember_kernels::rms_norm(x, scale, self.epsilon)
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::module::Param;

    #[test]
    fn matches_the_formula() {
        let device = Device::ndarray();
        let mut norm = RmsNormConfig::new(3).with_epsilon(1e-5).init(&device);
        norm.weight = Param::from_data([1.0f32, 2.0, 0.5], &device);
        let rows = [[1.0f32, -2.0, 3.0], [0.0, 0.5, -0.25]];
        let y = norm
            .forward(Tensor::<2>::from_floats(rows, &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (r, row) in rows.iter().enumerate() {
            let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 3.0;
            for (c, (&v, w)) in row.iter().zip([1.0, 2.0, 0.5]).enumerate() {
                let want = v as f64 / (ms + 1e-5).sqrt() * w;
                assert!((y[r * 3 + c] as f64 - want).abs() < 1e-6, "{r},{c}");
            }
        }
        // Gemma's form: the same scale stored as `scale - 1`.
        let mut gemma = RmsNormConfig::new(3)
            .with_epsilon(1e-5)
            .with_weight_offset(1.0)
            .init(&device);
        gemma.weight = Param::from_data([0.0f32, 1.0, -0.5], &device);
        let z = gemma
            .forward(Tensor::<2>::from_floats(rows, &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (a, b) in y.iter().zip(&z) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
