//! The feed-forward network of Llama and Qwen3: a SiLU-gated linear unit
//! (Shazeer 2020), `down(silu(gate(x)) · up(x))`; Gemma gates with GELU (tanh
//! approximation) instead, GeGLU in Shazeer's names.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// The activation on the gate of a gated feed-forward network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GateActivation {
    /// SiLU (`silu`: Llama, Qwen3).
    #[default]
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`: Gemma).
    GeluTanh,
}

/// Configuration of [`SwiGlu`].
#[derive(Config, Debug)]
pub struct SwiGluConfig {
    /// Model width.
    pub d_model: usize,
    /// Hidden width (`intermediate_size`).
    pub d_hidden: usize,
    /// The gate's activation.
    #[config(default = "GateActivation::Silu")]
    pub activation: GateActivation,
}

/// `down_proj(act(gate_proj(x)) · up_proj(x))`, no biases; the Hub's names.
#[derive(Module, Debug)]
pub struct SwiGlu {
    /// `[d_model, d_hidden]`
    pub gate_proj: Linear,
    /// `[d_model, d_hidden]`
    pub up_proj: Linear,
    /// `[d_hidden, d_model]`
    pub down_proj: Linear,
    /// The gate's activation (not a parameter).
    #[module(skip)]
    pub activation: GateActivation,
}

impl SwiGluConfig {
    /// The layer, drawn with Burn's defaults (loaded weights replace them).
    pub fn init(&self, device: &Device) -> SwiGlu {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        SwiGlu {
            gate_proj: linear(self.d_model, self.d_hidden),
            up_proj: linear(self.d_model, self.d_hidden),
            down_proj: linear(self.d_hidden, self.d_model),
            activation: self.activation,
        }
    }
}

impl SwiGlu {
    /// # Shapes
    /// - x: `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = ember_kernels::linear(&self.gate_proj, x.clone());
        let gate = match self.activation {
            GateActivation::Silu => ember_kernels::silu_fused(gate),
            GateActivation::GeluTanh => ember_kernels::gelu_tanh(gate),
        };
        let up = ember_kernels::linear(&self.up_proj, x);
        ember_kernels::linear(&self.down_proj, gate * up)
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
        let mut mlp = SwiGluConfig::new(2, 3).init(&device);
        mlp.gate_proj.weight = Param::from_data([[1.0f32, 0.0, -1.0], [0.5, 2.0, 1.0]], &device);
        mlp.up_proj.weight = Param::from_data([[0.0f32, 1.0, 1.0], [1.0, -1.0, 0.5]], &device);
        mlp.down_proj.weight = Param::from_data([[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &device);
        let x = [0.3f32, -1.2];
        let y = mlp
            .forward(Tensor::<3>::from_floats([[x]], &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let (x0, x1) = (x[0] as f64, x[1] as f64);
        let gate = [x0 + 0.5 * x1, 2.0 * x1, -x0 + x1].map(silu);
        let up = [x1, x0 - x1, x0 + 0.5 * x1];
        let h: Vec<f64> = gate.iter().zip(up).map(|(g, u)| g * u).collect();
        let want = [h[0] + h[2], h[1] + h[2]];
        for (got, want) in y.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
