//! AdamW with PyTorch's update rule, one fused pass per parameter tensor on the CPU.
//!
//! Burn's `AdamW` is a dozen tensor operations per parameter (moment updates, bias
//! corrections, square root, division, decay), each a separate pass over the parameter
//! that allocates its result. For gpt2-small's 162M parameters that is the whole
//! optimizer phase. [`FusedAdamW`] does the same arithmetic in one pass over (parameter,
//! gradient, moments), in place, on the ndarray backend, and hands every other backend
//! to Burn's `AdamW`. Its state is Burn's `AdamWState`, so checkpoints written by either
//! load in the other.

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::prelude::*;
use rayon::prelude::*;

use crate::ELEMENTS_PER_TASK;
use crate::cpu::{CpuBackend, with_cpu_backend};

/// AdamW's hyper-parameters (PyTorch's names and meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    /// Exponential decay of the first moment.
    pub beta1: f32,
    /// Exponential decay of the second moment.
    pub beta2: f32,
    /// Added to the square root of the second moment.
    pub eps: f32,
    /// Decoupled weight decay: `p ← p·(1 − lr·weight_decay)` before the update.
    pub weight_decay: f32,
}

/// AdamW: `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p·(1 − lr·λ) − lr·(m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`.
#[derive(Clone)]
pub struct FusedAdamW {
    hyper: AdamWHyper,
    /// Burn's implementation, for the backends without the fused kernel.
    fallback: AdamW,
}

impl FusedAdamW {
    /// The optimizer with these hyper-parameters.
    pub fn new(hyper: AdamWHyper) -> Self {
        let fallback = AdamWConfig::new()
            .with_beta_1(hyper.beta1)
            .with_beta_2(hyper.beta2)
            .with_epsilon(hyper.eps)
            .with_weight_decay(hyper.weight_decay)
            .build();
        Self { hyper, fallback }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (tensor, grad, state) = match fused_step(&self.hyper, lr, tensor, grad, state) {
            Ok((tensor, state)) => return (tensor, Some(state)),
            Err(inputs) => inputs,
        };
        self.fallback.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// A step's inputs, handed back when the kernel does not apply.
type StepInputs<const D: usize> = (Tensor<D>, Tensor<D>, Option<AdamWState<D>>);

/// One AdamW step on an f32 parameter of a CPU backend, in place: the parameter and
/// both moments are updated in one parallel pass (Burn's arithmetic, operation for
/// operation, so results match its `AdamW`). `Err` hands back anything else, and states
/// with an AMSGrad maximum.
#[allow(clippy::result_large_err)] // the caller's own tensors, handed back unboxed
fn fused_step<const D: usize>(
    hyper: &AdamWHyper,
    lr: f64,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamWState<D>>,
) -> Result<(Tensor<D>, AdamWState<D>), StepInputs<D>> {
    let plain = |t: &Tensor<D>| !t.device().is_autodiff();
    let moments_fit = state.as_ref().is_none_or(|s| {
        s.momentum.max_moment_2.is_none()
            && plain(&s.momentum.moment_1)
            && plain(&s.momentum.moment_2)
    });
    if !(plain(&tensor) && plain(&grad) && moments_fit) {
        return Err((tensor, grad, state));
    }
    let routed = with_cpu_backend!(&tensor, B => {
        let same = |t: &Tensor<D>| B::plain(t).is_some();
        same(&grad)
            && state
                .as_ref()
                .is_none_or(|s| same(&s.momentum.moment_1) && same(&s.momentum.moment_2))
    });
    if routed != Some(true) {
        return Err((tensor, grad, state));
    }
    Ok(
        with_cpu_backend!(&tensor, B => step_on::<B, D>(hyper, lr, tensor, grad, state))
            .expect("routed above"),
    )
}

/// The step on backend `B`. The tensors are taken by value so that their storage is not
/// shared and the update happens in place, without a copy.
fn step_on<B: CpuBackend, const D: usize>(
    hyper: &AdamWHyper,
    lr: f64,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamWState<D>>,
) -> (Tensor<D>, AdamWState<D>) {
    let shape = tensor.dims();
    let take = |t: Tensor<D>| B::into_values(B::into_plain(t).expect("checked by the caller"));
    let mut param = take(tensor);
    let grad = B::into_plain(grad).expect("checked by the caller");
    let grad = B::values(&grad);
    let (time, mut moment_1, mut moment_2) = match state {
        Some(state) => (
            state.momentum.time + 1,
            take(state.momentum.moment_1),
            take(state.momentum.moment_2),
        ),
        None => (1, vec![0.0; param.len()], vec![0.0; param.len()]),
    };
    update(
        hyper,
        lr,
        time,
        &mut param,
        &mut moment_1,
        &mut moment_2,
        &grad,
    );
    let wrap = |values: Vec<f32>| B::from_plain::<D>(B::new_tensor(&shape, values));
    let state = state_of(time, wrap(moment_1), wrap(moment_2));
    (wrap(param), state)
}

/// The AdamW update of step `time` (1-based) on slices, in place: the same f32 values
/// Burn's AdamW computes.
fn update(
    hyper: &AdamWHyper,
    lr: f64,
    time: usize,
    param: &mut [f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    grad: &[f32],
) {
    assert_eq!(
        param.len(),
        grad.len(),
        "parameter and gradient differ in size"
    );
    let (beta1, beta2, eps) = (hyper.beta1, hyper.beta2, hyper.eps);
    let (factor1, factor2) = (1.0 - beta1, 1.0 - beta2);
    let correction1 = 1f32 - beta1.powi(time as i32);
    let correction2 = 1f32 - beta2.powi(time as i32);
    let decay = (1.0 - lr * hyper.weight_decay as f64) as f32;
    let lr = lr as f32;
    param
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(moment_1.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(moment_2.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(grad.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(((p, m), v), g)| {
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                *m = *m * beta1 + g * factor1;
                *v = *v * beta2 + g * g * factor2;
                let delta = (*m / correction1) / ((*v / correction2).sqrt() + eps);
                *p = *p * decay - delta * lr;
            }
        });
}

/// Burn's AdamW state from its parts (no AMSGrad maximum).
fn state_of<const D: usize>(
    time: usize,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
) -> AdamWState<D> {
    AdamWState::new(AdaptiveMomentumState {
        time,
        moment_1,
        moment_2,
        max_moment_2: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn hyper() -> AdamWHyper {
        AdamWHyper {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }

    fn assert_close<const D: usize>(got: &Tensor<D>, want: &Tensor<D>) {
        got.to_data().assert_approx_eq::<f32>(
            &want.to_data(),
            Tolerance::absolute(1e-7).set_relative(1e-6),
        );
    }

    /// Four steps with changing gradients match Burn's AdamW in the parameter and both
    /// moments, and the states are interchangeable (a checkpoint from one resumes the other).
    #[test]
    fn matches_burns_adamw_and_shares_its_state() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        let fused = FusedAdamW::new(hyper());
        let burn = fused.fallback.clone();
        let start = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 1.0), &device);
        let (mut p_fused, mut p_burn) = (start.clone(), start);
        let (mut s_fused, mut s_burn) = (None, None);
        for step in 0..4 {
            let grad = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 0.1), &device);
            let lr = 4e-4 * (step + 1) as f64;
            let (p, s) = fused.step(lr, p_fused, grad.clone(), s_fused);
            (p_fused, s_fused) = (p, s);
            let (p, s) = burn.step(lr, p_burn, grad, s_burn);
            (p_burn, s_burn) = (p, s);
            let (a, b) = (s_fused.as_ref().unwrap(), s_burn.as_ref().unwrap());
            assert_eq!(a.momentum.time, b.momentum.time);
            assert_close(&a.momentum.moment_1, &b.momentum.moment_1);
            assert_close(&a.momentum.moment_2, &b.momentum.moment_2);
            assert_close(&p_fused, &p_burn);
            assert!(p_fused.to_data() != p_burn.clone().mul_scalar(0.0).to_data());
        }
        // Swap the states: each optimizer continues from the other's.
        let grad = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 0.1), &device);
        let (a, _) = fused.step(1e-3, p_fused.clone(), grad.clone(), s_burn.clone());
        let (b, _) = burn.step(1e-3, p_fused, grad, s_fused);
        assert_close(&a, &b);
    }

    #[test]
    fn the_update_is_the_formula() {
        // One element, one step from zero moments: m = (1-β1)g, v = (1-β2)g², the bias
        // corrections cancel, so the update is lr·g/(|g| + ε) after the decay.
        let device = Device::ndarray();
        let (p, g, lr) = (0.5f32, -0.2f32, 0.01f64);
        let (out, state) = FusedAdamW::new(hyper()).step(
            lr,
            Tensor::<1>::from_floats([p], &device),
            Tensor::<1>::from_floats([g], &device),
            None,
        );
        let want = p as f64 * (1.0 - lr * 0.1) - lr * (g as f64) / ((g as f64).abs() + 1e-8);
        let got: f32 = out.into_scalar();
        assert!((got as f64 - want).abs() < 1e-7, "{got} vs {want}");
        assert_eq!(state.unwrap().momentum.time, 1);
        // ... and on this backend it came from the fused kernel.
        assert!(
            fused_step(
                &hyper(),
                lr,
                Tensor::<1>::from_floats([p], &device),
                Tensor::<1>::from_floats([g], &device),
                None,
            )
            .is_ok()
        );
    }
}
