//! The one adapter between Burn's tensors and the kernels' slice code.
//!
//! A kernel runs when its tensors are f32 tensors of a CPU backend that implements
//! [`CpuBackend`], plain or under autodiff (without gradient checkpointing); it then
//! reads their values as slices, computes, and registers its own backward node. Any
//! other tensor is handed back to the caller, which runs the plain tensor operations.
//! Supporting another CPU backend means implementing [`CpuBackend`] for it and adding
//! it to [`with_cpu_backend`]; no kernel changes.

use std::borrow::Cow;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};
use burn::prelude::*;
use rayon::prelude::*;

/// A row-major or strided f32 matrix as the `gemm` crate reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatrixView<'a> {
    /// Where element `(0, 0)` is.
    pub ptr: *const f32,
    /// `(rows, cols)`.
    pub dims: (usize, usize),
    /// Elements between consecutive rows.
    pub row_stride: isize,
    /// Elements between consecutive columns.
    pub col_stride: isize,
    _borrow: std::marker::PhantomData<&'a [f32]>,
}

// SAFETY: a view is a shared borrow of f32 values (`&[f32]` is Send and Sync); nothing
// writes through it.
unsafe impl Send for MatrixView<'_> {}
unsafe impl Sync for MatrixView<'_> {}

impl<'a> MatrixView<'a> {
    /// A view of `dims` at `ptr` with the given strides; the caller guarantees that the
    /// memory stays valid for `'a`.
    pub fn new(
        ptr: *const f32,
        dims: (usize, usize),
        row_stride: isize,
        col_stride: isize,
    ) -> Self {
        Self {
            ptr,
            dims,
            row_stride,
            col_stride,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Element `(r, c)`; the caller keeps `r` and `c` within `dims`.
    #[inline(always)]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        debug_assert!(r < self.dims.0 && c < self.dims.1);
        // SAFETY: in bounds by the view's contract and the caller's.
        unsafe {
            *self
                .ptr
                .offset(r as isize * self.row_stride + c as isize * self.col_stride)
        }
    }

    /// Rows `start..start + len`, without moving data.
    pub fn rows(self, start: usize, len: usize) -> Self {
        assert!(
            start + len <= self.dims.0,
            "rows {start}..{} of {}",
            start + len,
            self.dims.0
        );
        Self::new(
            // SAFETY: the first of the rows lies inside the view (asserted).
            unsafe { self.ptr.offset(start as isize * self.row_stride) },
            (len, self.dims.1),
            self.row_stride,
            self.col_stride,
        )
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        Self::new(
            self.ptr,
            (self.dims.1, self.dims.0),
            self.col_stride,
            self.row_stride,
        )
    }
}

/// A tensor's values in memory, of any rank: the address of its first element, its
/// shape and its strides (in elements), borrowed from the tensor.
#[derive(Debug, Clone)]
pub(crate) struct Strided<'a> {
    pub ptr: *const f32,
    pub dims: Vec<usize>,
    pub strides: Vec<isize>,
    _borrow: std::marker::PhantomData<&'a [f32]>,
}

// SAFETY: as for `MatrixView`: a shared borrow that nothing writes through.
unsafe impl Send for Strided<'_> {}
unsafe impl Sync for Strided<'_> {}

impl<'a> Strided<'a> {
    /// The caller guarantees that every element inside `dims` is readable for `'a`.
    pub fn new(ptr: *const f32, dims: Vec<usize>, strides: Vec<isize>) -> Self {
        assert_eq!(dims.len(), strides.len(), "one stride per dimension");
        Self {
            ptr,
            dims,
            strides,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Positions `range` of dimension `axis`: the same memory, no copy.
    pub fn narrow(mut self, axis: usize, range: std::ops::Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= self.dims[axis],
            "{range:?} of dimension {axis} of {:?}",
            self.dims
        );
        if range.start < range.end {
            // SAFETY: position `range.start` of `axis` is inside `dims`.
            self.ptr = unsafe { self.ptr.offset(range.start as isize * self.strides[axis]) };
        }
        self.dims[axis] = range.len();
        self
    }

    /// The matrix of the last two dimensions at index `outer` of the leading ones
    /// (row-major over them).
    pub fn matrix_at(&self, outer: usize) -> MatrixView<'a> {
        let rank = self.dims.len();
        assert!(
            rank >= 2,
            "a matrix needs two dimensions, got {:?}",
            self.dims
        );
        let mut offset = 0isize;
        let mut rest = outer;
        for axis in (0..rank - 2).rev() {
            offset += (rest % self.dims[axis]) as isize * self.strides[axis];
            rest /= self.dims[axis];
        }
        assert_eq!(rest, 0, "matrix {outer} of shape {:?}", self.dims);
        MatrixView::new(
            // SAFETY: `offset` addresses an element inside `dims`.
            unsafe { self.ptr.offset(offset) },
            (self.dims[rank - 2], self.dims[rank - 1]),
            self.strides[rank - 2],
            self.strides[rank - 1],
        )
    }
}

/// What a CPU backend must offer the kernels: its tensors as slices and back.
pub(crate) trait CpuBackend: Backend {
    /// `x` as this backend's autodiff primitive, if it lives there.
    fn tracked<const D: usize>(x: &Tensor<D>) -> Option<FloatTensor<Autodiff<Self>>>;
    /// `x` as this backend's plain primitive, if it lives there.
    fn plain<const D: usize>(x: &Tensor<D>) -> Option<FloatTensor<Self>>;
    /// [`CpuBackend::plain`] taking `x` by value, so that its storage stays unshared.
    fn into_plain<const D: usize>(x: Tensor<D>) -> Option<FloatTensor<Self>>;
    /// Wraps an autodiff primitive back into a tensor.
    fn from_tracked<const D: usize>(t: FloatTensor<Autodiff<Self>>) -> Tensor<D>;
    /// Wraps a plain primitive back into a tensor.
    fn from_plain<const D: usize>(t: FloatTensor<Self>) -> Tensor<D>;
    /// The shape of a primitive.
    fn shape(t: &FloatTensor<Self>) -> Vec<usize>;
    /// The values in row-major order: borrowed when they already are, else copied.
    fn values(t: &FloatTensor<Self>) -> Cow<'_, [f32]>;
    /// The values in row-major order, owned (copied only when shared or strided).
    fn into_values(t: FloatTensor<Self>) -> Vec<f32>;
    /// Where a primitive's values lie: the address of its first element, its shape and
    /// its strides (in elements).
    fn strided(t: &FloatTensor<Self>) -> Strided<'_>;
    /// A 2-D primitive as a strided matrix.
    fn matrix(t: &FloatTensor<Self>) -> MatrixView<'_> {
        let s = Self::strided(t);
        assert_eq!(s.dims.len(), 2, "a matrix, got shape {:?}", s.dims);
        MatrixView::new(s.ptr, (s.dims[0], s.dims[1]), s.strides[0], s.strides[1])
    }
    /// A new primitive holding `values` (row-major) in `shape`.
    fn new_tensor(shape: &[usize], values: Vec<f32>) -> FloatTensor<Self>;
}

/// Runs `$body` with the type `$B` bound to the CPU backend the tensor `$x` (a
/// reference) lives on, evaluating to `Some(..)`; `None` when it lives on none of them or
/// is not f32. The reference is released before `$body` runs, so the body may take the
/// tensor by value.
macro_rules! with_cpu_backend {
    ($x:expr, $B:ident => $body:expr) => {{
        #[allow(unreachable_code, clippy::never_loop)]
        let routed = loop {
            #[cfg(feature = "ndarray")]
            if $crate::cpu::lives_on::<burn::backend::NdArray, _>($x) {
                type $B = burn::backend::NdArray;
                break Some($body);
            }
            #[cfg(feature = "flex")]
            if $crate::cpu::lives_on::<burn::backend::Flex, _>($x) {
                type $B = burn::backend::Flex;
                break Some($body);
            }
            break None;
        };
        routed
    }};
}
pub(crate) use with_cpu_backend;

/// Whether `x` is an f32 tensor of backend `B`, plain or tracked.
pub(crate) fn lives_on<B: CpuBackend, const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == burn::tensor::DType::F32 && (B::plain(x).is_some() || B::tracked(x).is_some())
}

/// Whether `x` is an f32 tensor of a backend the kernels run on.
pub(crate) fn is_on_cpu_backend<const D: usize>(x: &Tensor<D>) -> bool {
    let routed: Option<()> = with_cpu_backend!(x, _B => ());
    routed.is_some()
}

/// An element-wise kernel: forward on the values, backward from the saved input, each
/// one pass on every core, its loops compiled for the widest vectors the CPU has
/// ([`zip_map`]). `value` and `derivative` should be `#[inline]` and branch-free
/// arithmetic (selects are fine), so that those loops vectorise.
pub(crate) trait UnaryKernel: Send + Sync + std::fmt::Debug + Clone + 'static {
    /// `f(x)`.
    fn value(&self, x: f32) -> f32;
    /// `f'(x)`.
    fn derivative(&self, x: f32) -> f32;

    /// `f(x)` element-wise.
    fn forward(&self, xs: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; xs.len()];
        out.par_chunks_mut(crate::ELEMENTS_PER_TASK)
            .zip(xs.par_chunks(crate::ELEMENTS_PER_TASK))
            .for_each(|(out, xs)| zip_map(xs, xs, out, |x, _| self.value(x)));
        out
    }

    /// `grad · f'(x)` element-wise.
    fn backward(&self, xs: &[f32], grads: &[f32]) -> Vec<f32> {
        assert_eq!(
            xs.len(),
            grads.len(),
            "{self:?}: gradient and input differ in size"
        );
        let mut out = vec![0.0; xs.len()];
        out.par_chunks_mut(crate::ELEMENTS_PER_TASK)
            .zip(xs.par_chunks(crate::ELEMENTS_PER_TASK))
            .zip(grads.par_chunks(crate::ELEMENTS_PER_TASK))
            .for_each(|((out, xs), grads)| zip_map(xs, grads, out, |x, g| g * self.derivative(x)));
        out
    }
}

/// `out[i] = f(a[i], b[i])`, the loop compiled for AVX-512 or AVX2 where the CPU has
/// them (the crate is built for baseline x86-64, where it would run one element at a
/// time in SSE: SiLU's pass so took about 7% of a 288-token prompt); the same operations
/// per element, so the same bits, at any width.
fn zip_map<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: F) {
    #[inline(always)]
    fn body<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: F) {
        for ((out, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *out = f(a, b);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn avx512<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: F) {
            body(a, b, out, f)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: F) {
            body(a, b, out, f)
        }
        // SAFETY: each copy runs only on a CPU with its features.
        match crate::simd::level() {
            2 => return unsafe { avx512(a, b, out, f) },
            1 => return unsafe { avx2(a, b, out, f) },
            _ => {}
        }
    }
    body(a, b, out, f)
}

/// Applies a [`UnaryKernel`] to `x` on backend `B`, with a backward node when `x` is
/// tracked.
pub(crate) fn unary<B: CpuBackend, K: UnaryKernel, const D: usize>(
    kernel: K,
    x: &Tensor<D>,
) -> Tensor<D> {
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    let plain = |t: &FloatTensor<B>| B::new_tensor(&B::shape(t), kernel.forward(&B::values(t)));
    if let Some(t) = B::tracked(x) {
        let node = UnaryNode::<K> {
            kernel: kernel.clone(),
        };
        let out = match Backward::<B, 1>::prepare::<NoCheckpointing>(node, [t.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = t.primitive().clone();
                let output = plain(&input);
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(plain(t.primitive())),
        };
        return B::from_tracked(out);
    }
    let t = B::plain(x).expect("routed to this backend");
    B::from_plain(plain(&t))
}

/// The backward node of [`unary`]; its state is the input.
#[derive(Debug)]
struct UnaryNode<K> {
    kernel: K,
}

impl<B: CpuBackend, K: UnaryKernel> burn::backend::autodiff::ops::Backward<B, 1> for UnaryNode<K> {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 1>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let input = ops.state;
        burn::backend::autodiff::ops::unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            let values = self.kernel.backward(&B::values(&input), &B::values(&grad));
            B::new_tensor(&B::shape(&input), values)
        });
    }
}

/// The [`CpuBackend`] methods that move a tensor to and from its backend's primitive,
/// the same for every backend.
#[cfg(any(feature = "ndarray", feature = "flex"))]
macro_rules! routing_through_primitives {
    () => {
        fn tracked<const D: usize>(x: &Tensor<D>) -> Option<FloatTensor<Autodiff<Self>>> {
            x.clone().try_into_primitive::<Autodiff<Self>>().ok()
        }

        fn plain<const D: usize>(x: &Tensor<D>) -> Option<FloatTensor<Self>> {
            x.clone().try_into_primitive::<Self>().ok()
        }

        fn into_plain<const D: usize>(x: Tensor<D>) -> Option<FloatTensor<Self>> {
            x.try_into_primitive::<Self>().ok()
        }

        fn from_tracked<const D: usize>(t: FloatTensor<Autodiff<Self>>) -> Tensor<D> {
            Tensor::from_primitive::<Autodiff<Self>>(t)
        }

        fn from_plain<const D: usize>(t: FloatTensor<Self>) -> Tensor<D> {
            Tensor::from_primitive::<Self>(t)
        }
    };
}

#[cfg(feature = "ndarray")]
mod ndarray_backend {
    use super::*;
    use burn::backend::ndarray::NdArrayTensor;
    use burn::backend::{NdArray, TensorMetadata};
    use ndarray::{ArcArray, IxDyn};

    fn storage(t: &NdArrayTensor) -> ndarray::ArrayViewD<'_, f32> {
        match t {
            NdArrayTensor::F32(storage) => storage.view(),
            other => panic!("expected an f32 ndarray tensor, got {:?}", other.dtype()),
        }
    }

    impl CpuBackend for NdArray {
        routing_through_primitives!();

        fn shape(t: &FloatTensor<Self>) -> Vec<usize> {
            storage(t).shape().to_vec()
        }

        fn values(t: &FloatTensor<Self>) -> Cow<'_, [f32]> {
            let view = storage(t);
            match view.to_slice() {
                Some(slice) => Cow::Borrowed(slice),
                None => Cow::Owned(view.iter().copied().collect()),
            }
        }

        fn into_values(t: FloatTensor<Self>) -> Vec<f32> {
            let array: ArcArray<f32, IxDyn> = match t {
                NdArrayTensor::F32(storage) => storage.into_shared(),
                other => panic!("expected an f32 ndarray tensor, got {:?}", other.dtype()),
            };
            if array.is_standard_layout() {
                let len = array.len();
                let (mut values, offset) = array.into_owned().into_raw_vec_and_offset();
                let offset = offset.unwrap_or(0);
                if offset == 0 && values.len() == len {
                    return values;
                }
                values.drain(..offset);
                values.truncate(len);
                return values;
            }
            array.iter().copied().collect()
        }

        fn strided(t: &FloatTensor<Self>) -> Strided<'_> {
            let view = storage(t);
            Strided::new(
                view.as_ptr(),
                view.shape().to_vec(),
                view.strides().to_vec(),
            )
        }

        fn new_tensor(shape: &[usize], values: Vec<f32>) -> FloatTensor<Self> {
            let array =
                ArcArray::from_shape_vec(IxDyn(shape), values).expect("values fill the shape");
            NdArrayTensor::from(array)
        }
    }
}

/// Burn's successor CPU backend (ndarray is deprecated in Burn 0.22 and removed in 0.23).
#[cfg(feature = "flex")]
mod flex_backend {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;

    fn f32_storage(t: &FlexTensor) -> &[f32] {
        assert_eq!(
            t.dtype(),
            burn::tensor::DType::F32,
            "expected an f32 flex tensor"
        );
        t.storage::<f32>()
    }

    impl CpuBackend for Flex {
        routing_through_primitives!();

        fn shape(t: &FloatTensor<Self>) -> Vec<usize> {
            t.layout().shape().to_vec()
        }

        fn values(t: &FloatTensor<Self>) -> Cow<'_, [f32]> {
            f32_storage(t);
            match t.as_slice::<f32>() {
                Some(slice) => Cow::Borrowed(slice),
                None => Cow::Owned(Self::into_values(t.clone())),
            }
        }

        fn into_values(t: FloatTensor<Self>) -> Vec<f32> {
            // Without a copy when the tensor is contiguous and its buffer not shared.
            t.into_data()
                .into_vec::<f32>()
                .expect("an f32 flex tensor holds f32 values")
        }

        fn strided(t: &FloatTensor<Self>) -> Strided<'_> {
            let layout = t.layout();
            let ptr = f32_storage(t)[layout.start_offset()..].as_ptr();
            Strided::new(ptr, layout.shape().to_vec(), layout.strides().to_vec())
        }

        fn new_tensor(shape: &[usize], values: Vec<f32>) -> FloatTensor<Self> {
            FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod flex_tests {
    use burn::tensor::{Distribution, Int};

    use super::*;
    use crate::tests::assert_close;

    fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device).require_grad()
    }

    /// The kernels reach flex tensors, plain and tracked, and compute their plain
    /// definitions there: values and gradients of matmul (also transposed and under
    /// bf16 autocast, against ndarray's), tanh-GELU, LayerNorm, RMSNorm and
    /// cross-entropy.
    #[test]
    fn kernels_run_on_flex_and_match_their_definitions() {
        let _rng = crate::tests::device_rng();
        let device = Device::flex().autodiff();
        assert!(is_on_cpu_backend(&Tensor::<1>::zeros([1], &device)));
        assert!(is_on_cpu_backend(&Tensor::<1>::zeros([1], &Device::flex())));
        let x = random([6, 40], &device);
        let w = random([30, 40], &device);
        let gamma = random([40], &device);
        let beta = random([40], &device);
        let targets = Tensor::<1, Int>::from_ints([0, 5, 29, 3, 3, 17], &device);

        // One loss through every kernel, one through the definitions.
        let fused = {
            let normed = crate::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5)
                + crate::rms_norm(x.clone(), gamma.clone(), 1e-6);
            let logits = crate::gelu_tanh(crate::matmul(normed, w.clone().transpose()));
            crate::cross_entropy(logits, targets.clone())
        };
        let reference = {
            let normed =
                crate::layer_norm_reference(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5)
                    + crate::rms_norm_reference(x.clone(), gamma.clone(), 1e-6);
            let logits = crate::gelu_tanh_reference(normed.matmul(w.clone().transpose()));
            crate::cross_entropy_reference(logits, targets)
        };
        assert_close(fused.clone(), reference.clone(), 1e-5);
        let (gf, gr) = (fused.sum().backward(), reference.sum().backward());
        assert_close(x.grad(&gf).unwrap(), x.grad(&gr).unwrap(), 1e-5);
        assert_close(w.grad(&gf).unwrap(), w.grad(&gr).unwrap(), 1e-5);
        assert_close(gamma.grad(&gf).unwrap(), gamma.grad(&gr).unwrap(), 1e-5);
        assert_close(beta.grad(&gf).unwrap(), beta.grad(&gr).unwrap(), 1e-5);

        // Dropout draws its seed from flex's generator (whose Int tensors are i32) and
        // keeps about half at p = 0.5, scaled by 2.
        let layer = burn::nn::DropoutConfig::new(0.5).init();
        let dropped = crate::dropout(&layer, Tensor::<2>::ones([64, 64], &device));
        let values = dropped.into_data().to_vec::<f32>().unwrap();
        let kept = values.iter().filter(|&&v| v == 2.0).count();
        assert_eq!(values.iter().filter(|&&v| v == 0.0).count() + kept, 64 * 64);
        assert!((1800..2300).contains(&kept), "{kept} of 4096 kept");

        // bf16 products on flex are ndarray's, bit for bit.
        let values = x.clone().detach().into_data();
        let weights = w.clone().detach().into_data();
        let bf16_on = |device: &Device| {
            let _bf16 = crate::autocast(crate::Dtype::Bf16);
            let a = Tensor::<2>::from_data(values.clone(), device);
            let b = Tensor::<2>::from_data(weights.clone(), device);
            crate::matmul(a, b.transpose()).into_data()
        };
        bf16_on(&Device::flex()).assert_eq(&bf16_on(&Device::ndarray()), true);
    }
}
