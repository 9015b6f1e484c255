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
    /// A 2-D primitive as a strided matrix.
    fn matrix(t: &FloatTensor<Self>) -> MatrixView<'_>;
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

/// A unary kernel: forward on the values, backward from the saved input.
pub(crate) trait UnaryKernel: Send + Sync + std::fmt::Debug + Clone + 'static {
    /// `f(x)` element-wise.
    fn forward(&self, x: &[f32]) -> Vec<f32>;
    /// `grad · f'(x)` element-wise.
    fn backward(&self, x: &[f32], grad: &[f32]) -> Vec<f32>;
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
        fn tracked<const D: usize>(x: &Tensor<D>) -> Option<FloatTensor<Autodiff<Self>>> {
            x.clone().try_into_primitive::<Autodiff<NdArray>>().ok()
        }

        fn plain<const D: usize>(x: &Tensor<D>) -> Option<FloatTensor<Self>> {
            x.clone().try_into_primitive::<NdArray>().ok()
        }

        fn into_plain<const D: usize>(x: Tensor<D>) -> Option<FloatTensor<Self>> {
            x.try_into_primitive::<NdArray>().ok()
        }

        fn from_tracked<const D: usize>(t: FloatTensor<Autodiff<Self>>) -> Tensor<D> {
            Tensor::from_primitive::<Autodiff<NdArray>>(t)
        }

        fn from_plain<const D: usize>(t: FloatTensor<Self>) -> Tensor<D> {
            Tensor::from_primitive::<NdArray>(t)
        }

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

        fn matrix(t: &FloatTensor<Self>) -> MatrixView<'_> {
            let view = storage(t);
            let (dims, strides) = (view.shape(), view.strides());
            assert_eq!(dims.len(), 2, "a matrix, got shape {dims:?}");
            MatrixView::new(view.as_ptr(), (dims[0], dims[1]), strides[0], strides[1])
        }

        fn new_tensor(shape: &[usize], values: Vec<f32>) -> FloatTensor<Self> {
            let array =
                ArcArray::from_shape_vec(IxDyn(shape), values).expect("values fill the shape");
            NdArrayTensor::from(array)
        }
    }
}
