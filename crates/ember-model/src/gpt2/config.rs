//! Model configuration and presets.

use serde::{Deserialize, Serialize};

/// Errors in a model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A preset name that does not exist.
    #[error("unknown preset \"{0}\" (known: {known})", known = GptConfig::PRESETS.join(", "))]
    UnknownPreset(String),
    /// A value that cannot work.
    #[error("invalid model config: {0}")]
    Invalid(String),
}

/// The architecture of a GPT model (the book's `GPT_CONFIG_124M` dictionary).
///
/// Unknown keys are rejected when read from JSON or TOML, so a typo never passes
/// silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size (50257 for GPT-2's BPE).
    pub vocab_size: usize,
    /// Maximum number of positions (the size of the position embedding).
    pub context_length: usize,
    /// Embedding width, `d_model`.
    pub emb_dim: usize,
    /// Attention heads per block; divides `emb_dim`.
    pub n_heads: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Dropout probability (embeddings, attention weights, residual branches).
    pub drop_rate: f64,
    /// Whether the query/key/value projection has a bias (GPT-2's weights have one).
    pub qkv_bias: bool,
    /// Whether the output head reuses the token embedding (GPT-2's weight tying).
    #[serde(default)]
    pub tie_embeddings: bool,
    /// How a new model's weights are drawn (loaded weights replace them).
    #[serde(default)]
    pub weight_init: WeightInit,
}

/// The random initialisation of a new model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightInit {
    /// GPT-2's (and nanoGPT's): every weight matrix and embedding normal(0, 0.02),
    /// zero biases.
    #[default]
    Gpt2,
    /// PyTorch's layer defaults, which the book's code uses: embeddings normal(0, 1),
    /// linear layers uniform(±1/√fan_in) for weights and biases. The large embeddings
    /// make a small text memorised much sooner (chapter 5's curve).
    Torch,
}

impl GptConfig {
    /// Names accepted by [`GptConfig::preset`].
    pub const PRESETS: [&'static str; 6] = [
        "gpt2-small",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "book",
        "tiny",
    ];

    /// The GPT-2 shape with the book's defaults (context 1024, dropout 0.1, no QKV bias,
    /// untied head).
    fn gpt2(emb_dim: usize, n_layers: usize, n_heads: usize) -> Self {
        Self {
            vocab_size: 50257,
            context_length: 1024,
            emb_dim,
            n_heads,
            n_layers,
            drop_rate: 0.1,
            qkv_bias: false,
            tie_embeddings: false,
            weight_init: WeightInit::Gpt2,
        }
    }

    /// GPT-2 small, 124M parameters (163M with an untied head).
    pub fn gpt2_small() -> Self {
        Self::gpt2(768, 12, 12)
    }

    /// GPT-2 medium, 355M.
    pub fn gpt2_medium() -> Self {
        Self::gpt2(1024, 24, 16)
    }

    /// GPT-2 large, 774M.
    pub fn gpt2_large() -> Self {
        Self::gpt2(1280, 36, 20)
    }

    /// GPT-2 XL, 1558M.
    pub fn gpt2_xl() -> Self {
        Self::gpt2(1600, 48, 25)
    }

    /// The book's chapter 5 training model: GPT-2 small with a 256-token context, drawn
    /// with PyTorch's layer defaults as the book's code draws it.
    pub fn book() -> Self {
        Self {
            context_length: 256,
            weight_init: WeightInit::Torch,
            ..Self::gpt2_small()
        }
    }

    /// A small model that trains in minutes on two CPU cores.
    pub fn tiny() -> Self {
        Self {
            context_length: 128,
            emb_dim: 128,
            n_heads: 4,
            n_layers: 4,
            ..Self::gpt2_small()
        }
    }

    /// Look a preset up by name (see [`GptConfig::PRESETS`]).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        Ok(match name {
            "gpt2-small" | "gpt2" | "124M" => Self::gpt2_small(),
            "gpt2-medium" | "355M" => Self::gpt2_medium(),
            "gpt2-large" | "774M" => Self::gpt2_large(),
            "gpt2-xl" | "1558M" => Self::gpt2_xl(),
            "book" => Self::book(),
            "tiny" => Self::tiny(),
            other => return Err(ConfigError::UnknownPreset(other.to_string())),
        })
    }

    /// Checks the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("emb_dim", self.emb_dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be positive")));
        }
        if !self.emb_dim.is_multiple_of(self.n_heads) {
            return Err(ConfigError::Invalid(format!(
                "emb_dim {} is not divisible by n_heads {}",
                self.emb_dim, self.n_heads
            )));
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(ConfigError::Invalid(format!(
                "drop_rate {} is not in [0, 1)",
                self.drop_rate
            )));
        }
        Ok(())
    }

    /// Number of parameters, computed from the shapes (no model is built).
    pub fn num_params(&self) -> usize {
        let (v, c, d, l) = (
            self.vocab_size,
            self.context_length,
            self.emb_dim,
            self.n_layers,
        );
        let qkv_bias = if self.qkv_bias { 3 * d } else { 0 };
        let attention = d * 3 * d + qkv_bias + d * d + d;
        let mlp = d * 4 * d + 4 * d + 4 * d * d + d;
        let norms = 2 * 2 * d;
        let head = if self.tie_embeddings { 0 } else { v * d };
        v * d + c * d + l * (attention + mlp + norms) + 2 * d + head
    }

    /// Size of the float32 parameters in MiB (the book's "total size of the model").
    pub fn size_mb(&self) -> f64 {
        self.num_params() as f64 * 4.0 / (1024.0 * 1024.0)
    }

    /// This config with the other head setting.
    pub fn with_tied_embeddings(mut self, tied: bool) -> Self {
        self.tie_embeddings = tied;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_book() {
        let small = GptConfig::gpt2_small();
        // Book, section 4.6.
        assert_eq!(small.num_params(), 163_009_536);
        assert_eq!(
            small.clone().with_tied_embeddings(true).num_params(),
            124_412_160
        );
        assert!((small.size_mb() - 621.83).abs() < 0.01);
        // With QKV bias and tying, the Hugging Face GPT-2 sizes.
        let hf = |c: GptConfig| GptConfig {
            qkv_bias: true,
            tie_embeddings: true,
            ..c
        };
        assert_eq!(hf(GptConfig::gpt2_small()).num_params(), 124_439_808);
        assert_eq!(hf(GptConfig::gpt2_medium()).num_params(), 354_823_168);
        assert_eq!(hf(GptConfig::gpt2_large()).num_params(), 774_030_080);
        assert_eq!(hf(GptConfig::gpt2_xl()).num_params(), 1_557_611_200);
    }

    #[test]
    fn presets_and_validation() {
        assert_eq!(GptConfig::preset("book").unwrap().context_length, 256);
        let err = GptConfig::preset("gpt5").unwrap_err().to_string();
        assert!(err.contains("unknown preset \"gpt5\""), "{err}");
        let bad = GptConfig {
            n_heads: 5,
            ..GptConfig::tiny()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("not divisible")
        );
        for name in GptConfig::PRESETS {
            GptConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let json = r#"{"vocab_size":10,"context_length":4,"emb_dim":4,"n_heads":1,"n_layers":1,"drop_rate":0.0,"qkv_bias":false,"n_embed":3}"#;
        let err = serde_json::from_str::<GptConfig>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `n_embed`"), "{err}");
    }
}
