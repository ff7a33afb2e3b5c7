//! The float model as trained: a sequence of layers with PyTorch tensor names.

mod load;

pub use load::{load_model, parse_model};

use std::collections::BTreeMap;

use serde::Deserialize;

/// Architecture description stored as JSON in the safetensors metadata (docs/model-format.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub name: String,
    /// [channels, height, width]
    pub input: [usize; 3],
    pub classes: Vec<String>,
    pub quantization: Quantization,
    pub layers: Vec<LayerSpec>,
}

/// Width of every layer a per-layer map of widths does not name.
pub const DEFAULT_WIDTH: u32 = 4;

/// A bit width: one for every layer, or widths by layer name (the others `DEFAULT_WIDTH`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Widths {
    All(u32),
    PerLayer(BTreeMap<String, u32>),
}

impl Widths {
    /// The width of one layer.
    pub fn of(&self, layer: &str) -> u32 {
        match self {
            Widths::All(bits) => *bits,
            Widths::PerLayer(bits) => bits.get(layer).copied().unwrap_or(DEFAULT_WIDTH),
        }
    }

    /// Every width some layer may get.
    pub fn values(&self) -> Vec<u32> {
        match self {
            Widths::All(bits) => vec![*bits],
            Widths::PerLayer(bits) => bits.values().copied().chain([DEFAULT_WIDTH]).collect(),
        }
    }

    /// The layers a map names (none for one width).
    pub fn named(&self) -> Vec<&str> {
        match self {
            Widths::All(_) => Vec::new(),
            Widths::PerLayer(bits) => bits.keys().map(String::as_str).collect(),
        }
    }
}

/// Bit widths the model was trained for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    pub input_bits: u32,
    /// Bits of each linear layer's weights.
    pub weight_bits: Widths,
    /// Bits of each table's output (the activations the next layer reads).
    pub activation_bits: Widths,
    /// Margin on calibrated accumulator ranges the model was trained with (compile default 0.25).
    #[serde(default)]
    pub window_margin: Option<f64>,
    /// Fraction of activations clipped at each end the model was trained with (default 0.001).
    #[serde(default)]
    pub activation_clip: Option<f64>,
    /// Bits read by the tables the model was trained with (compile default 4).
    #[serde(default)]
    pub table_bits: Option<Widths>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Conv2d {
        name: String,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
    },
    Dense {
        name: String,
        in_features: usize,
        out_features: usize,
    },
    Pkn {
        name: String,
    },
    BatchNorm {
        name: String,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    AvgPool {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    Flatten,
    /// Residual add: the output of the layer before it plus the tensor named `from` (the output
    /// of that earlier layer or add), passed through the `shortcut` layers if any.
    Add {
        name: String,
        from: String,
        #[serde(default)]
        shortcut: Vec<LayerSpec>,
    },
}

fn one() -> usize {
    1
}

fn default_eps() -> f64 {
    1e-5
}

/// One layer with its weights loaded and checked.
#[derive(Clone, Debug)]
pub enum Node {
    Conv2d {
        name: String,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        /// [out][in][ky][kx]
        weight: Vec<f64>,
        bias: Vec<f64>,
    },
    Dense {
        name: String,
        in_features: usize,
        out_features: usize,
        /// [out][in]
        weight: Vec<f64>,
        bias: Vec<f64>,
    },
    /// y = ap * (cp + z)^2 (ap = 1 for plain PKN, learnable for R-PKN).
    Pkn {
        name: String,
        cp: f64,
        ap: f64,
    },
    /// Batch norm folded to a per-channel affine map y = scale * x + shift.
    Affine {
        name: String,
        scale: Vec<f64>,
        shift: Vec<f64>,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    Flatten,
    Add {
        name: String,
        from: String,
        shortcut: Vec<Node>,
    },
}

impl Node {
    /// Whether this node acts element-wise (and so fuses into a lookup table).
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Node::Pkn { .. } | Node::Affine { .. })
    }

    /// The layer's name (pooling and flatten have none).
    pub fn name(&self) -> Option<&str> {
        match self {
            Node::Conv2d { name, .. }
            | Node::Dense { name, .. }
            | Node::Pkn { name, .. }
            | Node::Affine { name, .. }
            | Node::Add { name, .. } => Some(name),
            Node::AvgPool { .. } | Node::Flatten => None,
        }
    }
}

/// A loaded model.
#[derive(Clone, Debug)]
pub struct Model {
    pub arch: Architecture,
    pub nodes: Vec<Node>,
}
