//! Direct Preference Optimization, the formulas of the book's bonus notebook
//! (`ch07/04_preference-tuning-with-dpo/dpo-from-scratch.ipynb`): the log-probability
//! a model gives each response, and the DPO loss with the rewards it implies.

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use ember_data::IGNORE_INDEX;
use serde::{Deserialize, Serialize};

/// How the token log-probabilities of one response become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogProbReduction {
    /// Their mean over the response's tokens: the notebook's `compute_logprobs`.
    #[default]
    Mean,
    /// Their sum: the sequence log-likelihood of the DPO paper (and TRL).
    Sum,
}

/// The log-probability the model gives each row's counted targets.
///
/// `log_softmax(logits)` taken at each target that is not [`IGNORE_INDEX`]
/// ([`ember_kernels::token_log_probs`]), summed over the row, and divided by the number
/// of counted targets for [`LogProbReduction::Mean`] (a row without any counts 0).
///
/// # Shapes
/// - logits: `[rows, seq_len, vocab]`
/// - targets: `[rows, seq_len]`
/// - returns `[rows]`
pub fn sequence_log_probs(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    reduction: LogProbReduction,
) -> Tensor<1> {
    let [rows, seq_len, vocab] = logits.dims();
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    // One pass over each row of logits (0 at ignored targets).
    let token_log_probs = ember_kernels::token_log_probs(
        logits.reshape([rows * seq_len, vocab]),
        targets.reshape([rows * seq_len]),
    )
    .reshape([rows, seq_len]);
    let weights = counted.float();
    let sums = token_log_probs.sum_dim(1).squeeze_dim::<1>(1);
    match reduction {
        LogProbReduction::Sum => sums,
        LogProbReduction::Mean => sums / weights.sum_dim(1).squeeze_dim::<1>(1).clamp_min(1.0),
    }
}

/// The log-probabilities of one batch of pairs under one model.
#[derive(Debug, Clone)]
pub struct PairLogProbs {
    /// Of the chosen responses, `[pairs]`.
    pub chosen: Tensor<1>,
    /// Of the rejected responses, `[pairs]`.
    pub rejected: Tensor<1>,
}

impl PairLogProbs {
    /// Splits the `[2 * pairs]` log-probabilities of a batch collated by
    /// [`ember_data::collate_preferences`] (chosen rows first).
    pub fn split(rows: Tensor<1>) -> Self {
        let [n] = rows.dims();
        Self {
            chosen: rows.clone().slice(0..n / 2),
            rejected: rows.slice(n / 2..n),
        }
    }
}

/// The DPO loss of a batch and what it implies.
#[derive(Debug, Clone)]
pub struct DpoLoss {
    /// `mean(-log sigmoid(beta * logits))`, `[1]`.
    pub loss: Tensor<1>,
    /// `policy_chosen - reference_chosen` per pair, `[pairs]`, detached (the notebook's
    /// reward, not multiplied by beta).
    pub chosen_rewards: Tensor<1>,
    /// `policy_rejected - reference_rejected` per pair, `[pairs]`, detached.
    pub rejected_rewards: Tensor<1>,
}

/// The notebook's `compute_dpo_loss`: with `logits = (policy_chosen -
/// policy_rejected) - (reference_chosen - reference_rejected)`, the loss is the mean of
/// `-log sigmoid(beta * logits)`.
pub fn dpo_loss(policy: &PairLogProbs, reference: &PairLogProbs, beta: f64) -> DpoLoss {
    let chosen_ratio = policy.chosen.clone() - reference.chosen.clone();
    let rejected_ratio = policy.rejected.clone() - reference.rejected.clone();
    let logits = chosen_ratio.clone() - rejected_ratio.clone();
    let loss = log_sigmoid(logits * beta).neg().mean();
    DpoLoss {
        loss,
        chosen_rewards: chosen_ratio.detach(),
        rejected_rewards: rejected_ratio.detach(),
    }
}

/// Means over many pairs of what DPO reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceStats {
    /// Mean DPO loss.
    pub loss: f64,
    /// Fraction of pairs whose chosen reward beats the rejected one (strictly; TRL's
    /// `rewards/accuracies`). 0 before training, where every reward is 0.
    pub reward_accuracy: f64,
    /// Mean chosen reward minus mean rejected reward (the notebook's margin).
    pub reward_margin: f64,
    /// Mean chosen reward.
    pub chosen_reward: f64,
    /// Mean rejected reward.
    pub rejected_reward: f64,
    /// Fraction of pairs where the model itself gives the chosen response the higher
    /// log-probability: meaningful before training too.
    pub logprob_accuracy: f64,
    /// Pairs measured.
    pub pairs: usize,
}

/// Per-pair values of one batch, collected on the host.
#[derive(Debug, Clone, Default)]
pub struct PreferenceTally {
    loss_sum: f64,
    batches: usize,
    chosen_rewards: Vec<f64>,
    rejected_rewards: Vec<f64>,
    policy_prefers_chosen: Vec<bool>,
}

impl PreferenceTally {
    /// Adds one batch.
    pub fn add(&mut self, policy: &PairLogProbs, loss: &DpoLoss) {
        let values = |t: &Tensor<1>| -> Vec<f64> {
            t.to_data().iter::<f32>().map(f64::from).collect::<Vec<_>>()
        };
        self.loss_sum += values(&loss.loss)[0];
        self.batches += 1;
        self.chosen_rewards.extend(values(&loss.chosen_rewards));
        self.rejected_rewards.extend(values(&loss.rejected_rewards));
        let chosen = values(&policy.chosen);
        let rejected = values(&policy.rejected);
        self.policy_prefers_chosen
            .extend(chosen.iter().zip(&rejected).map(|(c, r)| c > r));
    }

    /// The means: the loss over batches (as the notebook's loader averages), the rest
    /// over pairs.
    pub fn stats(&self) -> PreferenceStats {
        let pairs = self.chosen_rewards.len();
        let n = pairs.max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
        let wins = self
            .chosen_rewards
            .iter()
            .zip(&self.rejected_rewards)
            .filter(|(c, r)| c > r)
            .count();
        let (chosen, rejected) = (mean(&self.chosen_rewards), mean(&self.rejected_rewards));
        PreferenceStats {
            loss: self.loss_sum / self.batches.max(1) as f64,
            reward_accuracy: wins as f64 / n,
            reward_margin: chosen - rejected,
            chosen_reward: chosen,
            rejected_reward: rejected,
            logprob_accuracy: self.policy_prefers_chosen.iter().filter(|&&b| b).count() as f64 / n,
            pairs,
        }
    }
}
