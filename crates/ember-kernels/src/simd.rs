//! The widest vector instructions the CPU has, for the kernels' element-wise loops.
//!
//! The crate is compiled for baseline x86-64, where the compiler vectorises four f32
//! lanes wide (SSE2). A function declared through [`widest_fn!`] is compiled three
//! times, for AVX-512, for AVX2 with FMA and for the baseline, and runs the copy the
//! CPU has, chosen at run time: its loops run sixteen, eight or four lanes wide. The
//! arithmetic is the same IEEE operations in every copy (Rust does not contract
//! `a * b + c` into an FMA), so the results are too.

/// The `N` lanes of an accumulator added pairwise (lane `i + N/2` into lane `i`, then
/// `i + N/4`, ...): the order the kernels' vector reductions use, so that a sum does
/// not depend on the instruction set's width.
#[inline(always)]
pub(crate) fn pairwise_sum<const N: usize>(mut acc: [f32; N]) -> f32 {
    let mut width = N;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// 2: AVX-512 (F, BW, DQ, VL); 1: AVX2 and FMA; 0: neither.
#[inline]
pub(crate) fn level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                2
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                1
            } else {
                0
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Declares `fn NAME(ARGS) -> RET BODY` compiled for each vector width [`level`] names,
/// dispatching at run time.
macro_rules! widest_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                // SAFETY: each copy runs only on a CPU with its features.
                match $crate::simd::level() {
                    2 => return unsafe { avx512($($arg),*) },
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use widest_fn;
