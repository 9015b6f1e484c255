//! One LoRA training step on the tiny Qwen3 against PyTorch (tests/fixtures/tiny-qwen3-lora,
//! made by scripts/reference/qwen3_lora_reference.py): adapters of rank 4 (alpha 8) on
//! every projection of both blocks, set to the reference's starting values, one AdamW
//! step on them alone. The loss before and after, the adapters' gradient norm, the
//! updated adapters, and the merged model's logits must agree.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Lora, Module, ModuleMapper, Param, ParamGroup};
use burn::optim::GradientsParams;
use burn::prelude::*;
use ember_model::weights::{RawTensor, read_safetensors};
use ember_model::{CausalLm, LanguageModel, load_model};
use ember_train::{AdamWSettings, cross_entropy, grad_norm};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Gives every LoRA factor its value from the reference, by path.
struct SetFactors<'a> {
    values: &'a BTreeMap<String, RawTensor>,
    prefix: &'a str,
    path: Vec<String>,
    set: usize,
}

impl ModuleMapper for SetFactors<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // `Llama.model.layers.0.self_attn.q_proj.weight.lora.a` → the reference's
        // `model.layers.0.self_attn.q_proj.lora_a`.
        let path = self.path.join(".");
        let Some(rest) = path.strip_prefix("Llama.") else {
            return param;
        };
        let name = rest
            .replace(".weight.lora.a", ".lora_a")
            .replace(".weight.lora.b", ".lora_b");
        let Some(value) = self.values.get(&format!("{}{name}", self.prefix)) else {
            return param;
        };
        self.set += 1;
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(
            TensorData::new(value.data.clone(), value.shape.clone()),
            &device,
        );
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// The adapters' current values, under the reference's names.
fn factors(model: &LanguageModel) -> BTreeMap<String, Vec<f32>> {
    struct Collect(Vec<String>, BTreeMap<String, Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self.0.join(".");
            if path.contains(".lora.") {
                let name = path
                    .trim_start_matches("Llama.")
                    .replace(".weight.lora.a", ".lora_a")
                    .replace(".weight.lora.b", ".lora_b");
                self.1
                    .insert(name, param.val().into_data().to_vec::<f32>().unwrap());
            }
        }
    }
    let mut collect = Collect(Vec::new(), BTreeMap::new());
    model.visit(&mut collect);
    collect.1
}

#[test]
fn a_lora_step_on_qwen3_matches_pytorch() {
    let dir = fixtures().join("tiny-qwen3-lora");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tensors = read_safetensors(&dir.join("tensors.safetensors")).unwrap();
    let device = Device::ndarray().autodiff();
    let model = load_model(&fixtures().join("tiny-qwen3"), None, &device)
        .unwrap()
        .model;
    let targets = ParamGroup::from_paths(model.lora_targets(""));
    let model = model.apply_lora(Lora::new(4, 8.0).set_param_group(targets));
    let mut setter = SetFactors {
        values: &tensors,
        prefix: "",
        path: Vec::new(),
        set: 0,
    };
    let model = model.map(&mut setter);
    assert_eq!(setter.set, 28, "every A and B of both blocks");

    let batch: Value = reference["batch"].clone();
    let rows: Vec<Vec<i64>> = serde_json::from_value(batch["input_ids"].clone()).unwrap();
    let targets: Vec<Vec<i64>> = serde_json::from_value(batch["targets"].clone()).unwrap();
    let as_tensor = |rows: &[Vec<i64>], device: &Device| {
        Tensor::<2, Int>::from_data(
            TensorData::new(rows.concat(), [rows.len(), rows[0].len()]),
            device,
        )
    };
    let (inputs, labels) = (as_tensor(&rows, &device), as_tensor(&targets, &device));
    let relative = |got: f64, want: f64| (got - want).abs() / want.abs();

    let loss = cross_entropy(model.logits(inputs.clone()), labels.clone());
    let before: f32 = loss.clone().into_scalar();
    let want = reference["loss_before"].as_f64().unwrap();
    assert!(
        relative(before as f64, want) < 1e-5,
        "loss before {before} vs {want}"
    );

    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let norm = grad_norm(&model, &mut grads);
    let want = reference["adapter_grad_global_l2_norm"].as_f64().unwrap();
    assert!(relative(norm, want) < 1e-4, "grad norm {norm} vs {want}");
    let optimizer = &reference["optimizer"];
    let mut adamw = AdamWSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: optimizer["eps"].as_f64().unwrap(),
        weight_decay: optimizer["weight_decay"].as_f64().unwrap(),
    }
    .init();
    let model = adamw.step(optimizer["lr"].as_f64().unwrap(), model, grads);

    let after: f32 = cross_entropy(model.logits(inputs.clone()), labels).into_scalar();
    let want = reference["loss_after"].as_f64().unwrap();
    assert!(
        relative(after as f64, want) < 1e-5,
        "loss after {after} vs {want}"
    );
    for (name, got) in factors(&model) {
        let want = &tensors[&format!("after_step.{name}")].data;
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name}: updated values differ by {worst}");
    }

    // Merged into the weights, the adapters give the same logits (row 0).
    let merged = model.valid().materialize();
    let row0 = Tensor::<2, Int>::from_data(
        TensorData::new(rows[0].clone(), [1, rows[0].len()]),
        &device.clone().inner(),
    );
    let logits = merged.logits(row0).into_data().to_vec::<f32>().unwrap();
    let want = &tensors["logits_row0_merged_after"].data;
    let worst = logits
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "merged logits differ by {worst}");
}
