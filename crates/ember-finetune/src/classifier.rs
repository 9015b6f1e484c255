//! The classification model of chapter 6: a language model (GPT-2, or any other
//! architecture Ember runs) whose output head is replaced by a `d_model → num_classes`
//! layer read at the last token, with the book's partial freezing.

use burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use ember_model::LanguageModel;

/// Which parameters train (section 6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Every parameter.
    All,
    /// The new head, the final LayerNorm and the last `n` transformer blocks (the book:
    /// `n = 1`).
    LastBlocks(usize),
    /// The new head only.
    HeadOnly,
}

/// A GPT with a classification head.
#[derive(Module, Debug)]
pub struct GptClassifier {
    /// The transformer (its language-model head is not used).
    pub gpt: LanguageModel,
    /// `[d_model, num_classes]`
    pub head: Linear,
}

impl GptClassifier {
    /// Puts a freshly initialised `d_model → num_classes` head on `gpt`.
    pub fn new(gpt: LanguageModel, num_classes: usize, device: &Device) -> Self {
        let d_model = gpt.hidden_size();
        Self {
            gpt,
            head: LinearConfig::new(d_model, num_classes).init(device),
        }
    }

    /// Stops gradients for everything that should not train.
    pub fn with_trainable(mut self, trainable: Trainable) -> Self {
        match trainable {
            Trainable::All => self,
            Trainable::HeadOnly => {
                self.gpt = self.gpt.no_grad();
                self
            }
            Trainable::LastBlocks(n) => {
                self.gpt = self.gpt.freeze_all_but_last_blocks(n);
                self
            }
        }
    }

    /// Class logits for every position.
    ///
    /// # Shapes
    /// - ids: `[batch, seq_len]` → `[batch, seq_len, num_classes]`
    pub fn forward_all(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.head.forward(self.gpt.forward_hidden(ids))
    }

    /// Class logits at the last position, which has attended to the whole text.
    ///
    /// # Shapes
    /// - ids: `[batch, seq_len]` → `[batch, num_classes]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let seq_len = ids.dims()[1];
        let all = self.forward_all(ids);
        let [batch, _, classes] = all.dims();
        all.slice(s![.., seq_len - 1..seq_len, ..])
            .reshape([batch, classes])
    }

    /// Appendix E: low-rank adapters (`base + alpha / rank · A·B`) on every linear layer
    /// of the blocks and on the head, through Burn's `Module::apply_lora`; every base
    /// parameter is frozen, so only the adapters train. Embeddings and LayerNorms get
    /// no adapter, as in the book.
    pub fn with_lora(self, rank: usize, alpha: f64) -> Self {
        let mut paths = vec!["head.weight".to_string()];
        paths.extend(self.gpt.lora_targets("gpt."));
        self.apply_lora(Lora::new(rank, alpha).set_param_group(ParamGroup::from_paths(paths)))
    }

    /// Folds the adapters into the weights (`W + alpha / rank · A·B`) for inference.
    pub fn merge_lora(self) -> Self {
        self.materialize()
    }

    /// Number of parameters that receive gradients.
    pub fn num_trainable_params(&self) -> usize {
        struct Count(usize);
        impl ModuleVisitor for Count {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.val().is_require_grad() {
                    self.0 += param.val().dims().iter().product::<usize>();
                }
            }
        }
        let mut count = Count(0);
        self.visit(&mut count);
        count.0
    }
}

/// Mean cross-entropy of class logits against labels (ember-kernels' cross-entropy,
/// every row counted).
///
/// # Shapes
/// - logits: `[batch, num_classes]`, labels: `[batch]` → `[1]`
pub fn classification_loss(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    ember_kernels::cross_entropy(logits, labels)
}

/// Fraction of rows whose largest logit is the label.
pub fn accuracy(logits: Tensor<2>, labels: Tensor<1, Int>) -> f64 {
    let batch = labels.dims()[0];
    let predicted = logits.argmax(1).reshape([batch]);
    let correct: i64 = predicted.equal(labels).int().sum().into_scalar();
    correct as f64 / batch.max(1) as f64
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::tensor::Tolerance;
    use ember_model::weights::read_safetensors;
    use std::path::Path;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-gpt2-a")
    }

    /// The replaced head of cases.json → classification, on the reference model.
    #[test]
    fn head_matches_the_pytorch_fixture() {
        let device = Device::ndarray();
        let gpt = ember_model::load_model(&fixture(), None, &device)
            .unwrap()
            .model;
        let expected = read_safetensors(&fixture().join("expected.safetensors")).unwrap();
        let mut model = GptClassifier::new(gpt, 2, &device);
        // nn.Linear stores [out, in]; Burn's Linear is [in, out].
        let w = &expected["cls_head.weight"];
        let mut transposed = vec![0.0f32; w.data.len()];
        let (out, inp) = (w.shape[0], w.shape[1]);
        for o in 0..out {
            for i in 0..inp {
                transposed[i * out + o] = w.data[o * inp + i];
            }
        }
        model.head.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(transposed, [inp, out]),
            &device,
        ));
        model.head.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(expected["cls_head.bias"].data.clone(), [out]),
            &device,
        )));
        let prompts: [Vec<i64>; 2] = [
            vec![6109, 3626, 6100, 345, 3812, 262, 1657, 13],
            vec![
                15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
                286, 262,
            ],
        ];
        let mut last = Vec::new();
        for (i, ids) in prompts.iter().enumerate() {
            let n = ids.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &device);
            let all = model.forward_all(ids.clone()).reshape([n, 2]);
            let want = &expected[&format!("cls_logits_{i}")];
            all.into_data().assert_approx_eq::<f32>(
                &TensorData::new(want.data.clone(), [n, 2]),
                Tolerance::absolute(1e-4),
            );
            last.extend(
                model
                    .forward(ids)
                    .into_data()
                    .try_into_vec::<f32>()
                    .unwrap(),
            );
        }
        TensorData::new(last, [2, 2]).assert_approx_eq::<f32>(
            &TensorData::new(expected["cls_logits_last"].data.clone(), [2, 2]),
            Tolerance::absolute(1e-4),
        );
    }

    #[test]
    fn freezing_leaves_the_books_trainable_parts() {
        let device = Device::ndarray().autodiff();
        let config = ember_model::GptConfig {
            vocab_size: 100,
            context_length: 8,
            emb_dim: 16,
            n_heads: 2,
            n_layers: 3,
            drop_rate: 0.0,
            qkv_bias: false,
            tie_embeddings: true,
            weight_init: Default::default(),
        };
        let model = GptClassifier::new(LanguageModel::Gpt2(config.init(&device)), 2, &device);
        let all = model.num_trainable_params();
        assert_eq!(all, config.num_params() + 16 * 2 + 2);
        let LanguageModel::Gpt2(gpt) = &model.gpt else {
            unreachable!()
        };
        let block = gpt.h[2].num_params();
        let frozen = model.with_trainable(Trainable::LastBlocks(1));
        assert_eq!(frozen.num_trainable_params(), block + 2 * 16 + 16 * 2 + 2);
        let head_only = frozen.with_trainable(Trainable::HeadOnly);
        assert_eq!(head_only.num_trainable_params(), 16 * 2 + 2);
    }

    /// Trainable parameters with LoRA on a model of width `d`, `layers` blocks, rank `r`
    /// and `c` classes: per block the fused QKV (d→3d), the attention projection (d→d)
    /// and the two feed-forward layers (d→4d, 4d→d); plus the head (d→c).
    fn lora_params(d: usize, layers: usize, r: usize, c: usize) -> usize {
        let adapter = |i: usize, o: usize| r * (i + o);
        layers * (adapter(d, 3 * d) + adapter(d, d) + adapter(d, 4 * d) + adapter(4 * d, d))
            + adapter(d, c)
    }

    #[test]
    fn lora_trains_only_adapters_and_merges() {
        let device = Device::ndarray().autodiff();
        device.seed(3);
        let config = ember_model::GptConfig {
            vocab_size: 100,
            context_length: 8,
            emb_dim: 16,
            n_heads: 2,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: true,
            tie_embeddings: true,
            weight_init: Default::default(),
        };
        let model = GptClassifier::new(LanguageModel::Gpt2(config.init(&device)), 2, &device);
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 7, 3, 9], [1, 4]), &device);
        let before = model.forward(ids.clone()).into_data();
        let lora = model.with_lora(4, 8.0);
        assert_eq!(lora.num_trainable_params(), lora_params(16, 2, 4, 2));
        // B starts at zero: the adapted model computes the same function.
        lora.forward(ids.clone())
            .into_data()
            .assert_approx_eq::<f32>(&before, Tolerance::absolute(1e-6));
        // After a training step the adapters differ from zero; merging keeps the function.
        let loss = classification_loss(
            lora.forward(ids.clone()),
            Tensor::from_data(TensorData::new(vec![1i64], [1]), &device),
        );
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &lora);
        let mut optim = burn::optim::AdamWConfig::new().init();
        let lora = optim.step(1e-2, lora, grads);
        let adapted = lora.forward(ids.clone()).into_data();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            adapted.clone().try_into_vec().unwrap(),
            before.clone().try_into_vec().unwrap(),
        );
        assert!(
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-6),
            "the step changed nothing"
        );
        let merged = lora.merge_lora();
        merged
            .forward(ids)
            .into_data()
            .assert_approx_eq::<f32>(&adapted, Tolerance::absolute(1e-5));
        // The book's figure for gpt2-small at rank 16 is 2,666,528 with separate Q, K
        // and V projections (3 × 16·(768+768)); Ember's fused QKV adapter is 16·(768+2304).
        assert_eq!(lora_params(768, 12, 16, 2), 2_371_616);
        assert_eq!(
            2_371_616 + 12 * (3 * 16 * (768 + 768) - 16 * (768 + 2304)),
            2_666_528
        );
    }

    #[test]
    fn loss_and_accuracy() {
        let device = Device::ndarray();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, 0.0, 1.0, 3.0, 1.0], [3, 2]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 1], [3]), &device);
        assert!((accuracy(logits.clone(), labels.clone()) - 2.0 / 3.0).abs() < 1e-12);
        let l = |a: f64, b: f64, y: usize| -> f64 {
            let z = a.exp() + b.exp();
            -([a, b][y].exp() / z).ln()
        };
        let want = (l(2.0, 0.0, 0) + l(0.0, 1.0, 1) + l(3.0, 1.0, 1)) / 3.0;
        let got: f32 = classification_loss(logits, labels).into_scalar();
        assert!((got as f64 - want).abs() < 1e-6);
    }
}
