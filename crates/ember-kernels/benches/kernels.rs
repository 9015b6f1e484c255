//! Criterion micro-benchmarks of the kernels a gpt2-small training step spends its time
//! in, at the book's shapes (batch 2 × context 256 = 512 rows, width 768, 12 heads):
//! the matrix products of the projections and the output head, fused attention,
//! LayerNorm, tanh-GELU, softmax + cross-entropy over the vocabulary, and the output
//! head with the loss, fused or not. And, for inference, the products of packed bf16
//! weights (`packed_products`): decoding one sequence, a server's step of eight, a
//! prompt's chunk.
//!
//! Where ember-kernels replaces a Burn operation, both are measured: `burn` is the plain
//! tensor operation, `ember` the kernel the model uses on the CPU backend, `ember bf16`
//! the same kernel under bf16 autocast (`train.precision = "bf16"`).
//!
//! `cargo bench -p ember-kernels --bench kernels` (ndarray, the default CPU backend).
#![allow(deprecated)]

use burn::module::Module;
use burn::nn::LayerNormConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ember_kernels::packed_weights::{PackedMatrix, WeightFormat, linear_packed};

const ROWS: usize = 512;
const WIDTH: usize = 768;
const HEADS: usize = 12;
const VOCAB: usize = 50257;

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Forces the lazy work of `t` to run (reads one value back).
fn settle<const D: usize>(t: Tensor<D>) {
    let _: f32 = t.sum().into_scalar();
}

fn matmuls(c: &mut Criterion) {
    let device = Device::ndarray();
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    for (name, inner, outer) in [
        ("qkv 512x768x2304", WIDTH, 3 * WIDTH),
        ("attn_proj 512x768x768", WIDTH, WIDTH),
        ("mlp_fc 512x768x3072", WIDTH, 4 * WIDTH),
        ("mlp_proj 512x3072x768", 4 * WIDTH, WIDTH),
        ("lm_head 512x768x50257", WIDTH, VOCAB),
    ] {
        let a = random([ROWS, inner], &device);
        let b = random([inner, outer], &device);
        group.bench_function(format!("burn {name}"), |bench| {
            bench.iter(|| settle(a.clone().matmul(b.clone())))
        });
        group.bench_function(format!("ember {name}"), |bench| {
            bench.iter(|| settle(ember_kernels::matmul(a.clone(), b.clone())))
        });
        group.bench_function(format!("ember bf16 {name}"), |bench| {
            let _bf16 = ember_kernels::autocast(ember_kernels::Dtype::Bf16);
            bench.iter(|| settle(ember_kernels::matmul(a.clone(), b.clone())))
        });
    }
    // The head's input gradient in a backward pass: the weight is read transposed.
    let grad = random([ROWS, VOCAB], &device);
    let weight = random([WIDTH, VOCAB], &device);
    let name = "lm_head input gradient 512x50257x768 (transposed weight)";
    group.bench_function(format!("burn {name}"), |bench| {
        bench.iter(|| settle(grad.clone().matmul(weight.clone().transpose())))
    });
    group.bench_function(format!("ember {name}"), |bench| {
        bench.iter(|| {
            settle(ember_kernels::matmul(
                grad.clone(),
                weight.clone().transpose(),
            ))
        })
    });
    group.bench_function(format!("ember bf16 {name}"), |bench| {
        let _bf16 = ember_kernels::autocast(ember_kernels::Dtype::Bf16);
        bench.iter(|| {
            settle(ember_kernels::matmul(
                grad.clone(),
                weight.clone().transpose(),
            ))
        })
    });
    group.finish();
}

fn layers(c: &mut Criterion) {
    let device = Device::ndarray();
    let mut group = c.benchmark_group("layers");
    group.sample_size(10);
    let head_dim = WIDTH / HEADS;
    let q = random([2, HEADS, 256, head_dim], &device);
    let k = random([2, HEADS, 256, head_dim], &device);
    let v = random([2, HEADS, 256, head_dim], &device);
    group.bench_function("causal attention 2x12x256x64", |bench| {
        bench.iter(|| {
            settle(attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                },
            ))
        })
    });
    let x = random([2, 256, WIDTH], &device);
    let norm = LayerNormConfig::new(WIDTH).with_epsilon(1e-5).init(&device);
    let norm = norm.valid();
    group.bench_function("layer norm 512x768", |bench| {
        bench.iter(|| settle(norm.forward(x.clone())))
    });
    let h = random([2, 256, 4 * WIDTH], &device);
    group.bench_function("burn tanh-GELU 512x3072", |bench| {
        bench.iter(|| settle(gelu_approximate(h.clone())))
    });
    group.bench_function("ember tanh-GELU 512x3072", |bench| {
        bench.iter(|| settle(ember_kernels::gelu_tanh(h.clone())))
    });
    let flat_logits = random([2 * 256, VOCAB], &device);
    let flat_targets =
        Tensor::<1, Int>::random([2 * 256], Distribution::Uniform(0.0, VOCAB as f64), &device);
    group.bench_function("burn log-softmax + cross-entropy 512x50257", |bench| {
        bench.iter(|| {
            settle(ember_kernels::cross_entropy_reference(
                flat_logits.clone(),
                flat_targets.clone(),
            ))
        })
    });
    group.bench_function("ember log-softmax + cross-entropy 512x50257", |bench| {
        bench.iter(|| {
            settle(ember_kernels::cross_entropy(
                flat_logits.clone(),
                flat_targets.clone(),
            ))
        })
    });
    group.finish();
}

/// The output head and the loss, forward and backward (the gradients of the hidden
/// states and of the head's weight), at the tiny preset's width (64) and gpt2-small's
/// (768): the product followed by the cross-entropy, against `linear_cross_entropy`.
fn head_and_loss(c: &mut Criterion) {
    let device = Device::ndarray().autodiff();
    let mut group = c.benchmark_group("head + loss, forward and backward");
    group.sample_size(10);
    let targets =
        Tensor::<1, Int>::random([ROWS], Distribution::Uniform(0.0, VOCAB as f64), &device);
    for width in [64, WIDTH] {
        let hidden = random([ROWS, width], &device).require_grad();
        let weight = (random([width, VOCAB], &device) * 0.02)
            .detach()
            .require_grad();
        for precision in [ember_kernels::Dtype::F32, ember_kernels::Dtype::Bf16] {
            let step = |fused: bool| {
                let _precision = ember_kernels::autocast(precision);
                let loss = if fused {
                    ember_kernels::linear_cross_entropy(
                        hidden.clone(),
                        weight.clone(),
                        targets.clone(),
                    )
                } else {
                    ember_kernels::cross_entropy(
                        ember_kernels::matmul(hidden.clone(), weight.clone()),
                        targets.clone(),
                    )
                };
                let grads = loss.backward();
                settle(weight.grad(&grads).expect("a weight gradient"));
            };
            let shape = format!("{ROWS}x{width}x{VOCAB} {precision}");
            group.bench_function(format!("product then loss {shape}"), |bench| {
                bench.iter(|| step(false))
            });
            group.bench_function(format!("linear_cross_entropy {shape}"), |bench| {
                bench.iter(|| step(true))
            });
        }
    }
    group.finish();
}

/// Products of packed bf16 weights, as a model of Qwen3-0.6B's size decodes: 200
/// matrices of 3,072 × 1,024 (1.2 GB, far more than any cache), against 1 token, 8 (a
/// server's step of eight sequences) and 36 (a prompt), with f32 and with bf16
/// products. Throughput is the weights' bytes read per second (`cargo bench -p
/// ember-kernels --bench kernels -- packed`).
fn packed_products(c: &mut Criterion) {
    let device = Device::ndarray();
    let (rows, k, count) = (3072, 1024, 200);
    let values: Vec<f32> = random([rows, k], &device).into_data().to_vec().unwrap();
    let matrices: Vec<PackedMatrix> = (0..count)
        .map(|_| PackedMatrix::from_f32(WeightFormat::Bf16, rows, k, &values))
        .collect();
    let mut group = c.benchmark_group("packed_products");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(
        matrices.iter().map(|m| m.size_bytes() as u64).sum(),
    ));
    for tokens in [1, 8, 36] {
        let x = random([tokens, k], &device);
        for precision in [ember_kernels::Dtype::F32, ember_kernels::Dtype::Bf16] {
            let name = format!("{tokens} tokens, {precision} products");
            group.bench_function(name, |bench| {
                let _precision = ember_kernels::autocast(precision);
                bench.iter(|| {
                    for m in &matrices {
                        settle(linear_packed(x.clone(), m, None));
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matmuls, layers, head_and_loss, packed_products);
criterion_main!(benches);
