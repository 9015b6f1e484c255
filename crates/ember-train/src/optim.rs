//! AdamW as PyTorch defines it, global-norm gradient clipping, and the learning-rate
//! schedule of appendix D.
//!
//! Burn's `AdamWConfig` has other defaults than PyTorch (epsilon 1e-5, weight decay
//! 1e-4) and its `GradientClippingConfig::Norm` clips each tensor by its own norm,
//! where `torch.nn.utils.clip_grad_norm_` scales all gradients by one factor from the
//! global norm. [`AdamWSettings`] states every value; [`clip_grad_norm`] is the global
//! version. Both are checked against PyTorch's recorded steps.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ember_kernels::{AdamWHyper, FusedAdamW};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters, PyTorch's defaults unless set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWSettings {
    /// Exponential decay of the first moment.
    pub beta1: f64,
    /// Exponential decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (`p *= 1 - lr * weight_decay` before the update).
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWSettings {
    /// Checks every value (`train.optimizer.*`).
    pub fn validate(&self) -> Result<(), crate::config::InvalidSetting> {
        use crate::config::InvalidSetting;
        for (key, beta) in [
            ("train.optimizer.beta1", self.beta1),
            ("train.optimizer.beta2", self.beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(InvalidSetting::new(
                    key,
                    format!("must be in [0, 1), got {beta}"),
                ));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(InvalidSetting::new(
                "train.optimizer.eps",
                format!("must be positive and finite, got {}", self.eps),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(InvalidSetting::new(
                "train.optimizer.weight_decay",
                format!(
                    "must be zero or positive and finite, got {}",
                    self.weight_decay
                ),
            ));
        }
        Ok(())
    }

    /// The optimizer, without Burn's per-tensor clipping (use [`clip_grad_norm`]).
    ///
    /// It is Burn's AdamW arithmetic, fused into one pass per parameter on the CPU
    /// backend ([`FusedAdamW`]); its state, and so the checkpoints, are Burn's `AdamW`'s.
    pub fn init(&self) -> ModuleOptimizer {
        ModuleOptimizer::from(FusedAdamW::new(AdamWHyper {
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
        }))
    }
}

/// Visits every parameter with a gradient: first to sum the squares, then to scale.
struct GradNorm<'a> {
    grads: &'a mut GradientsParams,
    sum_squares: Vec<Tensor<1>>,
    scale: Option<f64>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match self.scale {
            None => {
                if let Some(grad) = self.grads.get::<D>(param.id) {
                    self.sum_squares.push(grad.square().sum());
                }
            }
            Some(scale) => {
                if let Some(grad) = self.grads.remove::<D>(param.id) {
                    self.grads.register(param.id, grad.mul_scalar(scale));
                }
            }
        }
    }
}

/// L2 norm over every gradient of `module` (what the fixtures record before clipping).
pub fn grad_norm<M: Module>(module: &M, grads: &mut GradientsParams) -> f64 {
    let mut visitor = GradNorm {
        grads,
        sum_squares: Vec::new(),
        scale: None,
    };
    module.visit(&mut visitor);
    if visitor.sum_squares.is_empty() {
        return 0.0;
    }
    let total: f32 = Tensor::cat(visitor.sum_squares, 0).sum().into_scalar();
    (total as f64).sqrt()
}

/// `torch.nn.utils.clip_grad_norm_`: when the global norm exceeds `max_norm`, scale
/// every gradient by `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = grad_norm(module, grads);
    let coefficient = max_norm / (norm + 1e-6);
    if coefficient < 1.0 {
        let mut visitor = GradNorm {
            grads,
            sum_squares: Vec::new(),
            scale: Some(coefficient),
        };
        module.visit(&mut visitor);
    }
    norm
}

/// Linear warmup from `initial_lr` to `peak_lr`, then cosine decay to `min_lr` at
/// `total_steps` (appendix D). With `warmup_steps = 0` and `min_lr = peak_lr` it is a
/// constant rate, the book's chapter 5 setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Rate at step 0 of the warmup.
    pub initial_lr: f64,
    /// Rate at the end of the warmup.
    pub peak_lr: f64,
    /// Rate at the end of training.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Steps in the whole run.
    pub total_steps: usize,
}

impl LrSchedule {
    /// A constant rate.
    pub fn constant(lr: f64) -> Self {
        Self {
            initial_lr: lr,
            peak_lr: lr,
            min_lr: lr,
            warmup_steps: 0,
            total_steps: 1,
        }
    }

    /// The rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let increment = (self.peak_lr - self.initial_lr) / self.warmup_steps as f64;
            return self.initial_lr + step as f64 * increment;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.min_lr
            + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine() {
        // Appendix D: peak 0.01, initial 0.0001, 20% warmup.
        let s = LrSchedule {
            initial_lr: 1e-4,
            peak_lr: 1e-2,
            min_lr: 1e-4,
            warmup_steps: 18,
            total_steps: 90,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - (1e-4 + 9.0 * (1e-2 - 1e-4) / 18.0)).abs() < 1e-12);
        assert!((s.lr(18) - 1e-2).abs() < 1e-12);
        assert!((s.lr(54) - (1e-4 + (1e-2 - 1e-4) * 0.5)).abs() < 1e-12);
        assert!((s.lr(90) - 1e-4).abs() < 1e-12);
        assert!((s.lr(500) - 1e-4).abs() < 1e-12);
        assert_eq!(LrSchedule::constant(4e-4).lr(1000), 4e-4);
    }
}
