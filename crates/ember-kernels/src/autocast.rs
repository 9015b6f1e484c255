//! The precision [`matmul`](crate::matmul) and [`linear`](crate::linear) compute in, set
//! for a scope as PyTorch's `torch.autocast` sets it.
//!
//! Under `autocast(Dtype::Bf16)` the matrix products of the CPU kernels round their
//! operands to bf16 and sum in f32 (`vdpbf16ps` where the CPU has AVX512_BF16), in the
//! forward pass and in the backward pass of every product made inside the scope (the
//! backward node keeps the precision it was made with). On the other backends (GPUs) a
//! product inside the scope is the backend's own on operands cast to bf16, its result
//! cast back to f32, as PyTorch's autocast does on CUDA; the casts' backward passes make
//! the gradients' products bf16 too and hand f32 gradients to the f32 weights (on a
//! device without bf16, see [`supports`], products stay f32). Everything else stays
//! f32: weights, gradients, optimizer state, normalisations, softmax and the loss
//! ("mixed precision"). The setting belongs to the calling thread and is restored when
//! the guard drops; outside any scope products are f32, computed exactly as without
//! this module. `autocast(Dtype::F16)` rounds the operands to f16 the same way
//! (computed in f32, for measuring what f16 arithmetic does to a result; no faster).

use std::cell::Cell;

use crate::dtype::Dtype;

thread_local! {
    static PRECISION: Cell<Dtype> = const { Cell::new(Dtype::F32) };
}

/// Sets the precision of this thread's matrix products until the guard drops.
#[must_use = "the precision holds only while the guard lives"]
///
/// # Panics
/// If `precision` is not a float format ([`Dtype::is_float`]): q8_0 and q4_0 hold
/// weights, products do not compute in them.
pub fn autocast(precision: Dtype) -> AutocastGuard {
    assert!(
        precision.is_float(),
        "products compute in a float format, not {precision}"
    );
    AutocastGuard {
        previous: PRECISION.with(|p| p.replace(precision)),
    }
}

/// The precision of this thread's matrix products now.
pub fn current_precision() -> Dtype {
    PRECISION.with(Cell::get)
}

/// Whether this CPU computes bf16 products in hardware (AVX512_BF16); without it bf16
/// products are rounded the same way but computed in f32, no faster than f32.
pub fn has_bf16_instructions() -> bool {
    crate::bf16_gemm::has_bf16_instructions()
}

/// Whether products on `device` follow [`autocast`]: tensors of a CPU backend the
/// kernels know (elsewhere products stay those of the backend).
pub fn covers(device: &burn::prelude::Device) -> bool {
    let probe = burn::prelude::Tensor::<1>::zeros([1], device);
    crate::cpu::is_on_cpu_backend(&probe)
}

/// Whether products on `device` can compute in `precision`: f32 everywhere; bf16 and
/// f16 on the CPU backends the kernels know, and on a device whose backend computes in
/// that format itself (Burn's `supports_dtype`: CUDA, and wgpu where the GPU and its
/// driver have the type).
pub fn supports(device: &burn::prelude::Device, precision: Dtype) -> bool {
    precision == Dtype::F32
        || (precision.is_float() && covers(device))
        || precision
            .float_dtype()
            .is_some_and(|format| device.supports_dtype(format))
}

/// Restores the previous precision when dropped.
#[derive(Debug)]
pub struct AutocastGuard {
    previous: Dtype,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        PRECISION.with(|p| p.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current_precision(), Dtype::F32);
        {
            let _outer = autocast(Dtype::Bf16);
            assert_eq!(current_precision(), Dtype::Bf16);
            {
                let _inner = autocast(Dtype::F32);
                assert_eq!(current_precision(), Dtype::F32);
            }
            assert_eq!(current_precision(), Dtype::Bf16);
        }
        assert_eq!(current_precision(), Dtype::F32);
    }
}
