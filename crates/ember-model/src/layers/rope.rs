//! Rotary position embeddings (Su et al. 2021) as Llama and Qwen3 apply them, in
//! Hugging Face's layout: the two halves of each head's dimensions are the real and
//! imaginary parts (`rotate_half`), and Llama 3's frequency scaling for long contexts
//! (Gemma 3's larger models scale linearly).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Llama 3's `rope_scaling` (`rope_type: "llama3"`): low frequencies are divided by
/// `factor`, high ones kept, the band between interpolated smoothly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    /// How much longer the context became (`factor`).
    pub factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are fully scaled.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context the model was pretrained with (`original_max_position_embeddings`).
    pub original_max_position_embeddings: usize,
}

/// The rotary embedding of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Base of the geometric frequencies (`rope_theta`).
    pub theta: f64,
    /// Llama 3's scaling, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama3: Option<Llama3Scaling>,
    /// Linear scaling (`rope_type: "linear"`, Gemma 3 4B and up): every frequency
    /// divided by this factor. Not combined with `llama3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<f64>,
}

impl RopeConfig {
    /// The inverse frequencies `θ^(-2i/d)` for `i < d/2`, scaled as configured; computed
    /// in f64, returned as the f32 values transformers uses.
    pub fn inverse_frequencies(&self, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        (0..half)
            .map(|i| {
                let inv = 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64);
                match (&self.llama3, self.linear) {
                    (Some(s), _) => llama3_scaled(inv as f32 as f64, s) as f32,
                    // transformers divides the f32 frequencies.
                    (None, Some(factor)) => inv as f32 / factor as f32,
                    (None, None) => inv as f32,
                }
            })
            .collect()
    }

    /// `(cos, sin)` of positions `start..start + len`, each `[len, head_dim]` (the
    /// angles repeated for both halves).
    pub fn cos_sin(
        &self,
        head_dim: usize,
        start: usize,
        len: usize,
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let positions: Vec<usize> = (start..start + len).collect();
        self.cos_sin_at(head_dim, &positions, device)
    }

    /// `(cos, sin)` of the given positions, one row each (`[positions, head_dim]`):
    /// several sequences packed into one row of a batch each start at their own
    /// position.
    pub fn cos_sin_at(
        &self,
        head_dim: usize,
        positions: &[usize],
        device: &Device,
    ) -> (Tensor<2>, Tensor<2>) {
        let inverse = self.inverse_frequencies(head_dim);
        let len = positions.len();
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for &position in positions {
            // The angle is an f32 product, as transformers computes it.
            let angles: Vec<f32> = inverse.iter().map(|&f| position as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        debug_assert_eq!(cos.len(), len * 2 * inverse.len());
        (
            Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
            Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
        )
    }

    /// The rotation tables of positions `start..start + len` for heads of `head_dim`:
    /// computed once per forward pass and shared by every block.
    pub fn tables(&self, head_dim: usize, start: usize, len: usize, device: &Device) -> RopeTables {
        let (cos, sin) = self.cos_sin(head_dim, start, len, device);
        RopeTables { cos, sin }
    }

    /// The rotation tables of the given positions, one row each.
    pub fn tables_at(&self, head_dim: usize, positions: &[usize], device: &Device) -> RopeTables {
        let (cos, sin) = self.cos_sin_at(head_dim, positions, device);
        RopeTables { cos, sin }
    }

    /// Rotates queries or keys at positions `start..start + seq`.
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]` → `[batch, heads, seq, head_dim]`
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let [_, _, seq, head_dim] = x.dims();
        self.tables(head_dim, start, seq, &x.device()).apply(x)
    }
}

/// `cos` and `sin` of the rotation angles of a run of positions.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `[seq, head_dim]`.
    cos: Tensor<2>,
    /// `[seq, head_dim]`.
    sin: Tensor<2>,
}

impl RopeTables {
    /// Rotates queries or keys at the tables' positions.
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]` → `[batch, heads, seq, head_dim]`
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let head_dim = x.dims()[3];
        let half = head_dim / 2;
        // rotate_half: (x1, x2) → (−x2, x1)
        let rotated = Tensor::cat(
            vec![
                -x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        x * self.cos.clone().unsqueeze::<4>() + rotated * self.sin.clone().unsqueeze::<4>()
    }
}

/// transformers' `_compute_llama3_parameters` for one inverse frequency.
fn llama3_scaled(inv: f64, s: &Llama3Scaling) -> f64 {
    let original = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = original / s.low_freq_factor;
    let high_freq_wavelen = original / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / inv;
    if wavelen < high_freq_wavelen {
        inv
    } else if wavelen > low_freq_wavelen {
        inv / s.factor
    } else {
        let smooth =
            (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv / s.factor + smooth * inv
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;

    /// Each pair (x_i, x_{i+d/2}) turns by the angle position · θ^(-2i/d).
    #[test]
    fn rotates_each_pair_by_its_angle() {
        let device = Device::ndarray();
        let rope = RopeConfig {
            theta: 10_000.0,
            llama3: None,
            linear: None,
        };
        let values: Vec<f32> = (0..2 * 4).map(|v| v as f32 * 0.3 - 1.0).collect();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, 1, 2, 4]), &device);
        let y = rope.apply(x, 5).into_data().to_vec::<f32>().unwrap();
        for row in 0..2 {
            let position = (5 + row) as f64;
            for i in 0..2 {
                let angle = position / 10_000f64.powf(2.0 * i as f64 / 4.0);
                let (a, b) = (values[row * 4 + i] as f64, values[row * 4 + i + 2] as f64);
                let want_a = a * angle.cos() - b * angle.sin();
                let want_b = b * angle.cos() + a * angle.sin();
                assert!((y[row * 4 + i] as f64 - want_a).abs() < 1e-5);
                assert!((y[row * 4 + i + 2] as f64 - want_b).abs() < 1e-5);
            }
        }
    }

    /// Llama 3.2's scaling (factor 32, low 1, high 4, original 8192): short wavelengths
    /// kept, long ones divided by 32, the band between interpolated.
    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = Llama3Scaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = RopeConfig {
            theta: 500_000.0,
            llama3: None,
            linear: None,
        }
        .inverse_frequencies(64);
        let scaled = RopeConfig {
            theta: 500_000.0,
            llama3: Some(scaling),
            linear: None,
        }
        .inverse_frequencies(64);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] as f64 - plain[31] as f64 / 32.0).abs() < 1e-12);
        let wavelen = |f: f32| 2.0 * std::f64::consts::PI / f as f64;
        let medium: Vec<usize> = (0..32)
            .filter(|&i| wavelen(plain[i]) >= 8192.0 / 4.0 && wavelen(plain[i]) <= 8192.0)
            .collect();
        assert!(!medium.is_empty());
        for i in medium {
            assert!(scaled[i] < plain[i] && scaled[i] > plain[i] / 32.0, "{i}");
        }
    }
}
