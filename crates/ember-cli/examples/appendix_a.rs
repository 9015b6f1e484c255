//! Appendix A, "Introduction to PyTorch", with Burn.
//!
//! Follows the appendix section by section: tensors and their types (A.2), a small
//! computation graph and its gradients by autograd (A.3, A.4), the multilayer network
//! `NeuralNetwork(50, 3)` (A.5), the toy data set and its batches (A.6), the training
//! loop with SGD (A.7), and saving and loading the model (A.8). A.9's training on
//! several devices is `ember pretrain --devices` (docs/backends.md).
//!
//! PyTorch's random numbers cannot be drawn in Rust, so the random starting weights,
//! the random input and the data loader's shuffled batch orders are read from
//! `tests/fixtures/appendix-a`, recorded from the appendix's own code
//! (scripts/reference/appendix_a_reference.py): every number printed here is then the
//! appendix's.
//!
//! Run: `cargo run -p ember-cli --example appendix_a`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::{sigmoid, softmax};
use ember_model::weights::{RawTensor, read_safetensors};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/appendix-a")
}

fn fmt(values: &[f32], digits: usize) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
    format!("[{}]", parts.join(", "))
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("float tensor")
}

/// Listing A.4: two hidden layers of 30 and 20 units with ReLU, then the output layer.
#[derive(Module, Debug)]
struct NeuralNetwork {
    layer_0: Linear,
    layer_2: Linear,
    layer_4: Linear,
    relu: Relu,
}

impl NeuralNetwork {
    fn new(num_inputs: usize, num_outputs: usize, device: &Device) -> Self {
        Self {
            layer_0: LinearConfig::new(num_inputs, 30).init(device),
            layer_2: LinearConfig::new(30, 20).init(device),
            layer_4: LinearConfig::new(20, num_outputs).init(device),
            relu: Relu::new(),
        }
    }

    /// # Shapes
    /// - x: `[batch, num_inputs]`
    /// - returns the logits `[batch, num_outputs]`
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.relu.forward(self.layer_0.forward(x));
        let x = self.relu.forward(self.layer_2.forward(x));
        self.layer_4.forward(x)
    }

    /// The weights PyTorch drew, from `prefix.layers.{0,2,4}.*` in the fixture.
    /// PyTorch's `nn.Linear` stores `[out, in]`; Burn's `Linear` stores `[in, out]`.
    fn with_weights(self, tensors: &BTreeMap<String, RawTensor>, prefix: &str) -> Result<Self> {
        let set = |layer: Linear, index: usize| -> Result<Linear> {
            let get = |name: &str| {
                let key = format!("{prefix}.layers.{index}.{name}");
                tensors.get(&key).with_context(|| format!("{key} missing"))
            };
            let device = layer.weight.val().device();
            let weight = get("weight")?;
            let weight = Tensor::<2>::from_data(
                TensorData::new(weight.data.clone(), weight.shape.clone()),
                &device,
            )
            .transpose();
            let bias = get("bias")?;
            let bias = Tensor::<1>::from_data(
                TensorData::new(bias.data.clone(), bias.shape.clone()),
                &device,
            );
            Ok(Linear {
                weight: Param::from_tensor(weight),
                bias: Some(Param::from_tensor(bias)),
            })
        };
        Ok(Self {
            layer_0: set(self.layer_0, 0)?,
            layer_2: set(self.layer_2, 2)?,
            layer_4: set(self.layer_4, 4)?,
            relu: self.relu,
        })
    }
}

/// The appendix's `compute_accuracy`: the share of `x`'s rows whose largest logit is
/// the label.
fn accuracy(model: &NeuralNetwork, x: Tensor<2>, labels: &[i64]) -> (f32, Vec<i64>) {
    let predictions: Vec<i64> = model
        .forward(x)
        .argmax(1)
        .into_data()
        .iter::<i64>()
        .collect();
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    (correct as f32 / labels.len() as f32, predictions)
}

fn main() -> Result<()> {
    let device = ember_cli::backend::device(None)?;
    let dir = fixture_dir();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).context("reference.json")?,
    )?;
    let tensors = read_safetensors(&dir.join("tensors.safetensors"))?;
    let tensor2 = |name: &str, device: &Device| -> Result<Tensor<2>> {
        let raw = tensors
            .get(name)
            .with_context(|| format!("{name} missing"))?;
        Ok(Tensor::from_data(
            TensorData::new(raw.data.clone(), raw.shape.clone()),
            device,
        ))
    };

    println!("== A.2 tensors");
    let tensor0d = Tensor::<1, Int>::from_data([1], &device);
    let tensor1d = Tensor::<1, Int>::from_data([1, 2, 3], &device);
    let tensor2d = Tensor::<2, Int>::from_data([[1, 2], [3, 4]], &device);
    let tensor3d = Tensor::<3, Int>::from_data([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], &device);
    println!(
        "0d {:?}, 1d {:?}, 2d {:?}, 3d {:?}",
        tensor0d.dims(),
        tensor1d.dims(),
        tensor2d.dims(),
        tensor3d.dims()
    );
    // Integers are 64-bit and floats 32-bit, as PyTorch's defaults.
    let int_dtype = tensor1d.dtype();
    let float_dtype = tensor1d.clone().float().dtype();
    println!("integer dtype {int_dtype:?}, float dtype {float_dtype:?}");
    let matrix = Tensor::<2>::from_data([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &device);
    let reshaped = matrix.clone().reshape([3, 2]);
    let product = matrix.clone().matmul(matrix.clone().transpose());
    println!(
        "tensor2d {:?} reshaped to {:?}",
        matrix.dims(),
        reshaped.dims()
    );
    let product_values = values(product);
    println!("tensor2d @ tensor2d.T = {}", fmt(&product_values, 0));

    println!("\n== A.3/A.4 a computation graph and its gradients");
    let graph = &reference["autograd"];
    let autodiff = device.clone().autodiff();
    let scalar = |v: f32| Tensor::<1>::from_data([v], &autodiff);
    let y = scalar(1.0);
    let x1 = scalar(1.1);
    let w1 = scalar(2.2).require_grad();
    let b = scalar(0.0).require_grad();
    let z = x1 * w1.clone() + b.clone();
    let a = sigmoid(z.clone());
    // Binary cross-entropy of one prediction: -(y log a + (1 - y) log(1 - a)).
    let loss = -(y.clone() * a.clone().log() + (-y + 1.0) * (-a.clone() + 1.0).log());
    let grads = loss.backward();
    let grad_w1 = values(w1.grad(&grads).context("w1 has a gradient")?)[0];
    let grad_b = values(b.grad(&grads).context("b has a gradient")?)[0];
    let (z, a, loss) = (values(z)[0], values(a)[0], values(loss)[0]);
    println!("z = {z:.4}, a = {a:.8}, loss = {loss:.8}");
    println!("dL/dw1 = {grad_w1:.8}, dL/db = {grad_b:.8}");
    let close =
        |got: f32, key: &str| (got as f64 - graph[key].as_f64().unwrap_or(f64::NAN)).abs() < 1e-6;
    let autograd_matches = close(a, "a")
        && close(loss, "loss")
        && close(grad_w1, "grad_w1")
        && close(grad_b, "grad_b");

    println!("\n== A.5 NeuralNetwork(50, 3)");
    let model = NeuralNetwork::new(50, 3, &device).with_weights(&tensors, "nn50x3")?;
    let num_params = model.num_params();
    let small_params = NeuralNetwork::new(2, 2, &device).num_params();
    println!(
        "trainable parameters: {num_params} (NeuralNetwork(2, 2), exercise A.3: {small_params})"
    );
    let x = tensor2("nn50x3.X", &device)?;
    let logits = model.forward(x);
    let probas = values(softmax(logits.clone(), 1));
    let logits = values(logits);
    println!("logits {}", fmt(&logits, 4));
    println!("softmax {}", fmt(&probas, 4));
    let want = |key: &str| -> Vec<f32> {
        serde_json::from_value::<Vec<Vec<f32>>>(reference["network_50_3"][key].clone())
            .map(|rows| rows.concat())
            .unwrap_or_default()
    };
    let max_diff = |got: &[f32], want: &[f32]| {
        if got.len() != want.len() {
            return f32::INFINITY;
        }
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    let logits_diff = max_diff(&logits, &want("logits")).max(max_diff(&probas, &want("softmax")));

    println!("\n== A.6 the toy data set");
    let toy = &reference["toy_training"];
    let labels = |key: &str| -> Result<Vec<i64>> {
        serde_json::from_value(toy[key].clone()).with_context(|| format!("{key} missing"))
    };
    let (y_train, y_test) = (labels("y_train")?, labels("y_test")?);
    println!("X_train [5, 2], y_train {y_train:?}; X_test [2, 2], y_test {y_test:?}");
    // The DataLoader's batches (batch 2, shuffled, the last incomplete batch dropped),
    // in the order PyTorch drew them.
    let orders: Vec<Vec<Vec<usize>>> = serde_json::from_value(toy["batch_indices"].clone())?;

    println!("\n== A.7 training with SGD (lr 0.5), 3 epochs");
    let x_train = tensor2("toy.X_train", &autodiff)?;
    let mut model = NeuralNetwork::new(2, 2, &autodiff).with_weights(&tensors, "toy.init")?;
    let mut optimizer = SgdConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let mut losses = Vec::new();
    for (epoch, batches) in orders.iter().enumerate() {
        for (batch, rows) in batches.iter().enumerate() {
            let index = Tensor::<1, Int>::from_data(
                TensorData::new(
                    rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                    [rows.len()],
                ),
                &autodiff,
            );
            let features = x_train.clone().select(0, index);
            let targets = Tensor::<1, Int>::from_data(
                TensorData::new(
                    rows.iter().map(|&r| y_train[r]).collect::<Vec<_>>(),
                    [rows.len()],
                ),
                &autodiff,
            );
            let loss = loss_fn.forward(model.forward(features), targets);
            let value = values(loss.clone())[0];
            losses.push(value);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(0.5, model, grads);
            println!(
                "Epoch: {:03}/{:03} | Batch {batch:03}/{:03} | Train Loss: {value:.2}",
                epoch + 1,
                orders.len(),
                batches.len()
            );
        }
    }
    let want_losses: Vec<f32> = serde_json::from_value(toy["batch_losses"].clone())?;
    let losses_diff = max_diff(&losses, &want_losses);
    let model = model.valid();
    let (train_accuracy, train_predictions) =
        accuracy(&model, tensor2("toy.X_train", &device)?, &y_train);
    let (test_accuracy, test_predictions) =
        accuracy(&model, tensor2("toy.X_test", &device)?, &y_test);
    let final_logits = values(model.forward(tensor2("toy.X_train", &device)?));
    let final_diff = max_diff(
        &final_logits,
        &values(tensor2("toy.final_logits_train", &device)?),
    );
    println!("predictions: train {train_predictions:?}, test {test_predictions:?}");
    println!("accuracy: train {train_accuracy:.2}, test {test_accuracy:.2}");

    println!("\n== A.8 saving and loading the model");
    let path = std::env::temp_dir().join(format!("appendix-a-{}.bpk", std::process::id()));
    let bytes = model.clone().into_record().into_bytes()?;
    std::fs::write(&path, &bytes[..]).with_context(|| path.display().to_string())?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(std::fs::read(&path)?))?;
    let loaded = NeuralNetwork::new(2, 2, &device).try_load_record(record)?;
    std::fs::remove_file(&path).ok();
    let reloaded = values(loaded.forward(tensor2("toy.X_train", &device)?));
    let reload_same = reloaded == final_logits;
    println!(
        "saved {} bytes to {}, reloaded: same logits {reload_same}",
        bytes.len(),
        path.display()
    );

    println!(
        "\nKEY NUMBERS: product={} autograd_matches={autograd_matches} grad_w1={grad_w1:.6} grad_b={grad_b:.6} params={num_params} params_2_2={small_params} logits_diff={logits_diff:.2e} losses={} losses_diff={losses_diff:.2e} final_logits_diff={final_diff:.2e} train_accuracy={train_accuracy:.2} test_accuracy={test_accuracy:.2} reload_same={reload_same}",
        fmt(&product_values, 0),
        fmt(&losses, 4)
    );
    Ok(())
}
