//! Quantization of weights and activations, and the element-wise chain fused into tables.

use super::range::Calibrated;
use crate::circuit::{window_output, Linear, LinearOp, Residual, Shape};
use crate::error::{Error, Result};
use crate::model::Node;

/// A linear layer with integer weights and the float scales that give them meaning.
pub(crate) struct QuantizedLinear {
    pub layer: Linear,
    /// Float pre-activation of channel c: weight_scale[c] * (acc - zero_term[c]) + bias[c].
    pub weight_scale: Vec<f64>,
    pub zero_term: Vec<f64>,
    pub bias: Vec<f64>,
}

/// Symmetric weight quantization: q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1) with
/// s = max|w| / (2^(b-1) - 1), per output channel (or one scale for the whole tensor).
fn quantize_rows(weights: &[f64], rows: usize, bits: u32, per_tensor: bool) -> (Vec<i64>, Vec<f64>) {
    let qmax = ((1i64 << (bits - 1)) - 1) as f64;
    let row_len = weights.len() / rows;
    let max_abs = |ws: &[f64]| ws.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-12);
    let global = max_abs(weights);
    let scales: Vec<f64> = weights
        .chunks(row_len)
        .map(|row| if per_tensor { global } else { max_abs(row) } / qmax)
        .collect();
    let q = weights
        .chunks(row_len)
        .zip(&scales)
        .flat_map(|(row, s)| row.iter().map(move |w| (w / s).round().clamp(-qmax, qmax) as i64))
        .collect();
    (q, scales)
}

/// Significant bits kept in a residual gain H_c: the rest are cleared, so that the deferred add
/// (docs/circuit.md) can read the residual tensor with `RESIDUAL_GAIN_BITS` fewer bits below the
/// gain's top than the accumulator holds, as coarsely as the next block's convolution reads it,
/// instead of multiplying that block input's noise by 2^(difference). Costs the branch's weights at
/// most 2^-(RESIDUAL_GAIN_BITS - 1) of their resolution.
pub const RESIDUAL_GAIN_BITS: u32 = 6;

/// Largest residual gain H_c, as a power of two. A branch whose weights are small next to the
/// residual would otherwise get a gain of up to 2^20 and an accumulator window about as wide as
/// log2(H_c) + 4 bits, every one of them paid in truncation steps and in the noise the window's
/// input may carry (a stride-2-stem resnet18-pkn's last block reached 20 bits, beyond any
/// parameter set). At 2^9 the branch keeps a resolution of 1/512 of one residual level, and the
/// residual alone spans 13 bits; a branch too weak for that resolution rounds to zero weights.
pub const RESIDUAL_GAIN_MAX_BITS: u32 = 9;

/// `gain` with all but its `bits` highest significant bits cleared.
fn keep_significant_bits(gain: i64, bits: u32) -> i64 {
    let drop = (64 - gain.leading_zeros()).saturating_sub(bits);
    gain >> drop << drop
}

/// Per-row weights in units of `unit / H_c` (`unit` = s_r / s_in), H_c the largest integer >= 1
/// that keeps them within b bits (unclamped when even H_c = 1 exceeds them), at most
/// 2^[`RESIDUAL_GAIN_MAX_BITS`], with only its [`RESIDUAL_GAIN_BITS`] highest bits kept. Returns the integer weights, their scales and the gains.
fn quantize_rows_for_residual(weights: &[f64], rows: usize, bits: u32, unit: f64) -> (Vec<i64>, Vec<f64>, Vec<i64>) {
    let qmax = ((1i64 << (bits - 1)) - 1) as f64;
    let row_len = weights.len() / rows;
    let mut gains = Vec::with_capacity(rows);
    let mut scales = Vec::with_capacity(rows);
    let mut q = Vec::with_capacity(weights.len());
    for row in weights.chunks(row_len) {
        let max_abs = row.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-12);
        let gain = keep_significant_bits(
            ((unit * qmax / max_abs).floor() as i64).clamp(1, 1 << RESIDUAL_GAIN_MAX_BITS),
            RESIDUAL_GAIN_BITS,
        );
        let scale = unit / gain as f64;
        q.extend(row.iter().map(|w| (w / scale).round() as i64));
        gains.push(gain);
        scales.push(scale);
    }
    (q, scales, gains)
}

/// Most values a layer may output: each is a 16 KB ciphertext, so 2^20 of them is 16 GB.
const MAX_LAYER_VALUES: usize = 1 << 20;
/// Most multiply-adds a layer may take per image: calibration runs them on every image.
const MAX_LAYER_TERMS: usize = 1 << 27;

/// Refuse a layer too large to calibrate or run before anything is allocated by its size.
fn check_size(name: &str, out: Shape, terms_per_value: usize) -> Result<()> {
    let values = out
        .channels
        .checked_mul(out.height)
        .and_then(|v| v.checked_mul(out.width));
    let terms = values.and_then(|v| v.checked_mul(terms_per_value));
    match (values, terms) {
        (Some(v), Some(t)) if v <= MAX_LAYER_VALUES && t <= MAX_LAYER_TERMS => Ok(()),
        _ => Err(Error::Compile(format!(
            "layer {name} is too large: {}x{}x{} outputs of {terms_per_value} terms each (at most {MAX_LAYER_VALUES} \
             outputs and {MAX_LAYER_TERMS} terms)",
            out.channels, out.height, out.width
        ))),
    }
}

/// Quantize a conv or dense node against the current tensor. `per_tensor` gives every output
/// the same scale (the output layer, whose raw integers are compared by argmax). With a
/// `residual` tensor (scale s_r), channel c counts in units of s_r / H_c, with the integer
/// H_c = max(1, floor(s_r (2^(b-1) - 1) / (s_in max|w_c|))) the residual's gain: the weights get
/// the scale s_r / (H_c s_in), as fine as b bits allow, and the sum `acc + H_c r` is exact.
pub(crate) fn quantize_weights(
    node: &Node,
    state: &Calibrated,
    residual: Option<&Calibrated>,
    bits: u32,
    per_tensor: bool,
) -> Result<QuantizedLinear> {
    let s = state.shape;
    let (name, op, out_shape, weights, bias) = match node {
        Node::Conv2d {
            name,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            bias,
        } => {
            if *in_channels != s.channels {
                return Err(Error::Compile(format!(
                    "layer {name} expects {in_channels} input channels, it receives {}",
                    s.channels
                )));
            }
            let (Some(h), Some(w)) = (
                window_output(s.height, *kernel, *stride, *padding),
                window_output(s.width, *kernel, *stride, *padding),
            ) else {
                return Err(Error::Compile(format!(
                    "layer {name}: kernel {kernel} does not fit its {}x{} input",
                    s.height, s.width
                )));
            };
            let op = LinearOp::Conv2d {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
                pad_value: state.zero_point,
            };
            let shape = Shape {
                channels: *out_channels,
                height: h,
                width: w,
            };
            (name, op, shape, weight, bias)
        }
        Node::Dense {
            name,
            in_features,
            out_features,
            weight,
            bias,
        } => {
            if *in_features != s.len() {
                return Err(Error::Compile(format!(
                    "layer {name} expects {in_features} inputs, it receives {} ({}x{}x{}); flatten first?",
                    s.len(),
                    s.channels,
                    s.height,
                    s.width
                )));
            }
            let shape = Shape {
                channels: *out_features,
                height: 1,
                width: 1,
            };
            (name, LinearOp::Dense, shape, weight, bias)
        }
        _ => unreachable!("quantize_weights is called on linear nodes only"),
    };
    let rows = out_shape.channels;
    check_size(name, out_shape, weights.len() / rows.max(1))?;
    let (q, scales, residual) = match residual {
        None => {
            let (q, scales) = quantize_rows(weights, rows, bits, per_tensor);
            (q, scales, None)
        }
        Some(r) => {
            if r.shape != out_shape {
                return Err(Error::Compile(format!(
                    "layer {name} gives {}x{}x{}, but its residual add brings {}x{}x{}",
                    out_shape.channels,
                    out_shape.height,
                    out_shape.width,
                    r.shape.channels,
                    r.shape.height,
                    r.shape.width
                )));
            }
            let (q, scales, gains) = quantize_rows_for_residual(weights, rows, bits, r.scale / state.scale);
            let residual = Residual { from: r.tensor, gains };
            (q, scales, Some((residual, r.zero_point)))
        }
    };
    let row_len = q.len() / rows;
    let zero_term = q
        .chunks(row_len)
        .enumerate()
        .map(|(c, row)| {
            let skip = residual.as_ref().map_or(0, |(r, zp)| r.gains[c] * zp);
            state.zero_point as f64 * row.iter().sum::<i64>() as f64 + skip as f64
        })
        .collect();
    Ok(QuantizedLinear {
        layer: Linear {
            name: name.clone(),
            input: state.tensor,
            op,
            in_shape: s,
            out_shape,
            weights: q,
            offsets: vec![0; rows],
            residual: residual.map(|(r, _)| r),
        },
        weight_scale: scales.iter().map(|ws| ws * state.scale).collect(),
        zero_term,
        bias: bias.clone(),
    })
}

/// Asymmetric activation quantization: q = clamp(round(y / scale) + zero_point, 0, 2^bits - 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActQuant {
    pub scale: f64,
    pub zero_point: i64,
    max: i64,
}

impl ActQuant {
    pub fn from_range(lo: f64, hi: f64, bits: u32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let max = (1i64 << bits) - 1;
        let scale = ((hi - lo) / max as f64).max(1e-12);
        let zero_point = ((-lo / scale).round() as i64).clamp(0, max);
        ActQuant { scale, zero_point, max }
    }

    /// Clamped in floating point: a huge (yet finite) `y` saturates instead of overflowing.
    pub fn quantize(&self, y: f64) -> i64 {
        ((y / self.scale).round() + self.zero_point as f64).clamp(0.0, self.max as f64) as i64
    }
}

/// The element-wise operations after an accumulator: PKN activations and folded batch norms.
pub(crate) struct Chain<'a> {
    nodes: &'a [Node],
}

impl<'a> Chain<'a> {
    pub fn new(nodes: &'a [Node]) -> Self {
        Chain { nodes }
    }

    /// Channel count the chain's batch norms imply, if any.
    pub fn channels(&self) -> Option<usize> {
        self.nodes.iter().find_map(|n| match n {
            Node::Affine { scale, .. } => Some(scale.len()),
            _ => None,
        })
    }

    /// Evaluate the chain on channel `c` of pre-activation `z`.
    pub fn apply(&self, c: usize, z: f64) -> f64 {
        self.nodes.iter().fold(z, |y, n| match n {
            Node::Pkn { cp, ap, .. } => ap * (cp + y) * (cp + y),
            Node::Affine { scale, shift, .. } => scale[c] * y + shift[c],
            _ => unreachable!("chains hold element-wise nodes only"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_gains_keep_their_highest_bits() {
        assert_eq!(keep_significant_bits(0b1011_0111, 6), 0b1011_0100);
        assert_eq!(keep_significant_bits(45, 6), 45);
        assert_eq!(keep_significant_bits(1, 6), 1);
        assert_eq!(keep_significant_bits(1 << 20, 6), 1 << 20);
        let (q, scales, gains) = quantize_rows_for_residual(&[0.05, -0.025, 0.001, 0.002], 2, 4, 1.0);
        assert_eq!(gains, vec![keep_significant_bits(140, 6), 1 << RESIDUAL_GAIN_MAX_BITS]);
        assert!(q.iter().all(|w| w.abs() <= 7), "{q:?}");
        assert_eq!(scales[0], 1.0 / gains[0] as f64);
        // The capped row keeps the resolution the cap allows: 0.001 / (1 / 512) = 0.512, rounded.
        assert_eq!(&q[2..], &[1, 1]);
    }

    #[test]
    fn activation_quantization_saturates_at_any_magnitude() {
        let act = ActQuant::from_range(-1.0, 1.0, 4);
        assert_eq!(act.quantize(0.0), act.zero_point);
        assert_eq!(act.quantize(3e38), 15);
        assert_eq!(act.quantize(f64::MAX), 15);
        assert_eq!(act.quantize(-3e38), 0);
    }

    #[test]
    fn oversized_layers_are_refused() {
        let shape = |channels, height, width| Shape {
            channels,
            height,
            width,
        };
        check_size("c", shape(4, 14, 14), 9).unwrap();
        let err = check_size("c", shape(1 << 12, 1 << 12, 1), 1).unwrap_err().to_string();
        assert!(err.contains("layer c is too large: 4096x4096x1 outputs"), "{err}");
        assert!(check_size("c", shape(10, 10, 10), 1 << 20).is_err());
        assert!(check_size("c", shape(usize::MAX, 2, 1), 1).is_err());
    }

    #[test]
    fn weights_quantize_per_row() {
        let (q, s) = quantize_rows(&[1.0, -0.5, 0.1, 0.2], 2, 3, false);
        assert_eq!(q, vec![3, -2, 2, 3]);
        assert!((s[0] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn activation_range_contains_zero() {
        let a = ActQuant::from_range(0.5, 3.5, 2);
        assert_eq!(a.zero_point, 0);
        assert_eq!(a.quantize(3.5), 3);
        assert_eq!(a.quantize(-1.0), 0);
    }
}
