//! The compiler: a loaded float [`Model`] and calibration images in, an integer [`Circuit`] out.
//!
//! Passes, each a function from one well-formed value to the next:
//! 1. quantize: weights per output channel (symmetric), activations per layer (asymmetric, from
//!    calibration), pixels as the client does;
//! 2. calibrate and plan precision: run the integer circuit built so far on the calibration images,
//!    measure every accumulator, choose the window of bits (calibrated plus a margin, or worst case)
//!    and the centring offsets;
//! 3. fuse: bias, cp, the square, ap, batch norm and requantization become one table per channel;
//! 4. choose parameters: the cheapest TFHE set whose every bootstrap meets p-fail <= 2^-64
//!    ([`noise`]). A circuit no set can run exactly keeps `params: None`: the clear evaluator can
//!    still study it, but every encrypted use is refused, naming the layer and its widths.

pub mod noise;
mod quantize;

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::circuit::{
    window_output, Circuit, InputSpec, Layer, Linear, LinearOp, OutputSpec, Requant, Shape, TruncStep, CIRCUIT_VERSION,
    DIRECT_TABLE_BITS, MAX_FHE_TABLE_BITS,
};
use crate::error::{Error, Result};
use crate::eval::clear;
use crate::model::{Model, Node, Widths};
use crate::params::{FheParams, LOG2_PFAIL_LIMIT};
use quantize::{quantize_weights, ActQuant, Chain};

/// Margin added to calibrated accumulator ranges when neither the options nor the model set one.
pub const DEFAULT_MARGIN: f64 = 0.25;
/// Fraction of activations clipped at each end when neither the options nor the model set one.
pub const DEFAULT_ACT_CLIP: f64 = 0.001;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompileOptions {
    /// Size every accumulator window by its worst case (no value ever leaves it) instead of the
    /// calibrated range plus a margin (values outside wrap, exactly as the clear evaluator defines).
    pub worst_case: bool,
    /// Margin on calibrated ranges (0.25 = 25 %); None: the model's `window_margin`, else 0.25.
    pub margin: Option<f64>,
    /// Bits read by each table (W); None: the model's `table_bits`, else 4 (one bootstrap per
    /// table; 5 is a split table of two).
    pub lut_bits: Option<u32>,
    /// Fraction of calibration activations left outside the activation range at each end (they
    /// saturate); None: the model's `activation_clip`, else 0.001.
    pub act_clip: Option<f64>,
}

/// Options with every default resolved against the model.
struct Resolved {
    margin: Option<f64>,
    /// Bits each table reads.
    table_bits: Widths,
    act_clip: f64,
}

/// Range [lo, hi] every element of a tensor is known to lie in.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    lo: i64,
    hi: i64,
}

/// The integer tensor being built, on every calibration image.
#[derive(Clone)]
struct State {
    /// Index of the circuit tensor that holds it.
    tensor: usize,
    shape: Shape,
    values: Vec<Vec<i64>>,
    bounds: Bounds,
    /// Float meaning of an integer q: scale * (q - zero_point).
    scale: f64,
    zero_point: i64,
}

pub fn compile(model: &Model, calibration: &[Vec<u8>], options: &CompileOptions) -> Result<Circuit> {
    if calibration.is_empty() {
        return Err(Error::Compile("no calibration images".into()));
    }
    let arch = &model.arch;
    let q = &arch.quantization;
    let table_bits = match (options.lut_bits, &q.table_bits) {
        (Some(bits), _) => Widths::All(bits),
        (None, Some(bits)) => bits.clone(),
        (None, None) => Widths::All(DIRECT_TABLE_BITS),
    };
    let options = &Resolved {
        margin: (!options.worst_case).then(|| options.margin.or(q.window_margin).unwrap_or(DEFAULT_MARGIN)),
        table_bits,
        act_clip: options.act_clip.or(q.activation_clip).unwrap_or(DEFAULT_ACT_CLIP),
    };
    if !(0.0..0.5).contains(&options.act_clip) {
        return Err(Error::Compile(format!(
            "activation clip {} must be in [0, 0.5)",
            options.act_clip
        )));
    }
    if options.margin.is_some_and(|m| !(0.0..=4.0).contains(&m)) {
        return Err(Error::Compile("the window margin must be between 0 and 4".into()));
    }
    for bits in options.table_bits.values() {
        if !(1..=MAX_FHE_TABLE_BITS).contains(&bits) {
            return Err(Error::Compile(format!(
                "table input of {bits} bits is not supported (1..={MAX_FHE_TABLE_BITS})"
            )));
        }
    }
    let shape = Shape {
        channels: arch.input[0],
        height: arch.input[1],
        width: arch.input[2],
    };
    for (i, img) in calibration.iter().enumerate() {
        if img.len() != shape.len() {
            return Err(Error::Compile(format!(
                "calibration image {i} has {} pixels, the model takes {}",
                img.len(),
                shape.len()
            )));
        }
    }
    let levels = (1i64 << q.input_bits) - 1;
    let input_state = State {
        tensor: 0,
        shape,
        values: calibration
            .iter()
            .map(|img| clear::quantize_pixels(img, q.input_bits))
            .collect(),
        bounds: Bounds { lo: 0, hi: levels },
        scale: 1.0 / levels as f64,
        zero_point: 0,
    };
    let mut ctx = Builder {
        model,
        options,
        layers: Vec::new(),
        saved: HashMap::new(),
        referenced: referenced_names(&model.nodes),
        output: None,
    };
    ctx.nodes(&model.nodes, input_state, true)?;
    let Builder { mut layers, output, .. } = ctx;
    let (out_layer, output_spec) = output
        .ok_or_else(|| Error::Compile("the model has no output layer (a dense or conv without activation)".into()))?;
    layers.push(Layer::Linear(out_layer));
    if output_spec.classes.len() != layers_output_len(&layers) {
        return Err(Error::Compile(format!(
            "the model has {} classes but {} outputs",
            output_spec.classes.len(),
            layers_output_len(&layers)
        )));
    }
    check_width_names(&layers, &q.weight_bits, &q.activation_bits, &options.table_bits)?;
    let mut circuit = Circuit {
        version: CIRCUIT_VERSION,
        name: arch.name.clone(),
        input: InputSpec {
            shape,
            bits: q.input_bits,
            encoding_bits: 0,
        },
        layers,
        output: output_spec,
        params: None,
    };
    link_encodings(&mut circuit);
    circuit.params = choose_params(&mut circuit).ok();
    Ok(circuit)
}

/// Refuses per-layer widths that name a layer without the thing they set.
fn check_width_names(layers: &[Layer], weights: &Widths, activations: &Widths, tables: &Widths) -> Result<()> {
    let names = |with_table: bool| -> Vec<&str> {
        layers
            .iter()
            .filter_map(|l| match l {
                Layer::Linear(l) if !with_table => Some(l.name.as_str()),
                Layer::Requant(r) if with_table => Some(r.name.as_str()),
                _ => None,
            })
            .collect()
    };
    let (linear, tabled) = (names(false), names(true));
    let settings = [
        ("weight_bits", weights, &linear, "weights", "weights"),
        ("activation_bits", activations, &tabled, "table", "tables"),
        ("table_bits", tables, &tabled, "table", "tables"),
    ];
    for (setting, widths, known, one, many) in settings {
        if let Some(name) = widths.named().into_iter().find(|n| !known.contains(n)) {
            return Err(Error::Compile(format!(
                "{setting} names layer {name}, which has no {one} (layers with {many}: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Tensors and layers built so far.
struct Builder<'m> {
    model: &'m Model,
    options: &'m Resolved,
    layers: Vec<Layer>,
    /// Tensors that a later residual add reads, by the name of the layer that produced them.
    saved: HashMap<String, State>,
    referenced: HashSet<String>,
    output: Option<(Linear, OutputSpec)>,
}

/// Names that residual adds read (`from`), anywhere in the model.
fn referenced_names(nodes: &[Node]) -> HashSet<String> {
    let mut names = HashSet::new();
    for node in nodes {
        if let Node::Add { from, shortcut, .. } = node {
            names.insert(from.clone());
            names.extend(referenced_names(shortcut));
        }
    }
    names
}

impl Builder<'_> {
    /// Compile `nodes` from `state`; only the top level (`top`) may end in the output layer.
    fn nodes(&mut self, nodes: &[Node], mut state: State, top: bool) -> Result<State> {
        let q = &self.model.arch.quantization;
        let mut i = 0;
        while i < nodes.len() {
            let node = &nodes[i];
            i += 1;
            match node {
                Node::AvgPool { kernel, stride } => {
                    let layer = sum_pool(&state, *kernel, *stride)?;
                    let k2 = (kernel * kernel) as i64;
                    state.bounds = Bounds {
                        lo: state.bounds.lo * k2,
                        hi: state.bounds.hi * k2,
                    };
                    state.scale /= k2 as f64;
                    state.zero_point *= k2;
                    state.values = state
                        .values
                        .par_iter()
                        .map(|v| clear::linear(&layer, v, None))
                        .collect();
                    state.shape = layer.out_shape;
                    state.tensor = self.push(Layer::Linear(layer));
                }
                Node::Flatten => {
                    state.shape = Shape {
                        channels: state.shape.len(),
                        height: 1,
                        width: 1,
                    };
                }
                Node::Add { name, .. } => {
                    return Err(Error::Compile(format!(
                        "residual add {name} must follow a convolution or dense layer (and its batch norm)"
                    )))
                }
                Node::Pkn { name, .. } | Node::Affine { name, .. } => {
                    return Err(Error::Compile(format!(
                        "layer {name} is element-wise but follows no convolution or dense layer"
                    )))
                }
                Node::Conv2d { .. } | Node::Dense { .. } => {
                    let chain_len = nodes[i..].iter().take_while(|n| n.is_elementwise()).count();
                    let mut group = &nodes[i..i + chain_len];
                    i += chain_len;
                    let mut node = node.clone();
                    let layer_name = node.name().unwrap_or_default().to_string();
                    let mut residual = None;
                    if let Some(Node::Add { name, from, shortcut }) = nodes.get(i) {
                        // The add happens in the accumulator: fold the affine chain before it
                        // into the weights; the chain after it becomes the table.
                        fold_affine_chain(&mut node, group, name)?;
                        let source = self.saved.get(from).cloned().ok_or_else(|| {
                            Error::Compile(format!(
                                "residual add {name} reads {from}, which is not an earlier layer's output \
                                 (name the last layer of a group, or an earlier add)"
                            ))
                        })?;
                        residual = Some(self.nodes(shortcut, source, false)?);
                        i += 1;
                        let after = nodes[i..].iter().take_while(|n| n.is_elementwise()).count();
                        group = &nodes[i..i + after];
                        i += after;
                    }
                    let chain = Chain::new(group);
                    let is_last = top
                        && !nodes[i..]
                            .iter()
                            .any(|n| !matches!(n, Node::AvgPool { .. } | Node::Flatten));
                    let is_output = is_last && chain_len == 0 && residual.is_none();
                    let lin = quantize_weights(
                        &node,
                        &state,
                        residual.as_ref(),
                        q.weight_bits.of(&layer_name),
                        is_output,
                    )?;
                    if is_output {
                        if i < nodes.len() {
                            return Err(Error::Compile(format!(
                                "layers after the output layer {} are not supported",
                                lin.layer.name
                            )));
                        }
                        self.output = Some(output_layer(lin, &state, &self.model.arch.classes, self.options)?);
                        return Ok(state);
                    }
                    let channels = lin.layer.out_shape.channels;
                    if chain.channels().is_some_and(|c| c != channels) {
                        return Err(Error::Compile(format!(
                            "batch norm after {} has {} channels, the layer has {channels}",
                            lin.layer.name,
                            chain.channels().unwrap_or(0)
                        )));
                    }
                    let (linear, requant) = requantize(
                        lin,
                        chain,
                        &mut state,
                        residual.as_ref(),
                        q.activation_bits.of(&layer_name),
                        self.options,
                    )?;
                    self.push(Layer::Linear(linear));
                    state.tensor = self.push(Layer::Requant(requant));
                }
            }
            if let Some(name) = nodes[..i].last().and_then(Node::name) {
                if self.referenced.contains(name) {
                    self.saved.insert(name.to_string(), state.clone());
                }
            }
        }
        Ok(state)
    }

    /// Append a layer; returns the index of the tensor it produces.
    fn push(&mut self, layer: Layer) -> usize {
        self.layers.push(layer);
        self.layers.len()
    }
}

/// Fold the batch norms between a linear layer and a residual add into the layer's weights and
/// bias (exact in floats); a polynomial there is refused.
fn fold_affine_chain(node: &mut Node, chain: &[Node], add: &str) -> Result<()> {
    let (weight, bias) = match node {
        Node::Conv2d { weight, bias, .. } | Node::Dense { weight, bias, .. } => (weight, bias),
        _ => unreachable!("called on linear nodes only"),
    };
    let row_len = weight.len() / bias.len().max(1);
    for n in chain {
        match n {
            Node::Affine { scale, shift, name } => {
                if scale.len() != bias.len() {
                    return Err(Error::Compile(format!(
                        "batch norm {name} has {} channels, the layer before it has {}",
                        scale.len(),
                        bias.len()
                    )));
                }
                for (c, (a, b)) in scale.iter().zip(shift).enumerate() {
                    weight[c * row_len..(c + 1) * row_len].iter_mut().for_each(|w| *w *= a);
                    bias[c] = a * bias[c] + b;
                }
            }
            other => {
                return Err(Error::Compile(format!(
                    "{} comes before residual add {add}: only batch norm may (the add happens in the accumulator)",
                    other.name().unwrap_or("an element-wise layer")
                )))
            }
        }
    }
    Ok(())
}

fn layers_output_len(layers: &[Layer]) -> usize {
    match layers.last() {
        Some(Layer::Linear(l)) => l.out_shape.len(),
        Some(Layer::Requant(r)) => r.shape.len(),
        None => 0,
    }
}

/// Set the input's and each table's output encoding to the width its readers need.
fn link_encodings(circuit: &mut Circuit) {
    let enc = circuit.tensor_encodings();
    circuit.input.encoding_bits = enc[0];
    for (i, layer) in circuit.layers.iter_mut().enumerate() {
        if let Layer::Requant(r) = layer {
            r.output_encoding_bits = enc[i + 1];
        }
    }
}

fn sum_pool(state: &State, kernel: usize, stride: usize) -> Result<Linear> {
    let s = state.shape;
    let (h, w) = match (
        window_output(s.height, kernel, stride, 0),
        window_output(s.width, kernel, stride, 0),
    ) {
        (Some(h), Some(w)) => (h, w),
        _ => {
            return Err(Error::Compile(format!(
                "avg_pool kernel {kernel} does not fit the {}x{} input",
                s.height, s.width
            )))
        }
    };
    Ok(Linear {
        name: "avg_pool".into(),
        input: state.tensor,
        op: LinearOp::SumPool { kernel, stride },
        in_shape: s,
        out_shape: Shape {
            channels: s.channels,
            height: h,
            width: w,
        },
        weights: Vec::new(),
        offsets: vec![0; s.channels],
        residual: None,
    })
}

/// Number of bits needed to hold `width` distinct values.
fn bits_for(width: i64) -> u32 {
    64 - (width.max(1) - 1).leading_zeros()
}

/// Worst-case per-channel range of a linear layer's outputs (offsets excluded), its residual
/// tensor within `residual`.
fn worst_case(layer: &Linear, input: Bounds, residual: Option<Bounds>) -> Vec<Bounds> {
    let per_channel = layer.out_shape.per_channel();
    (0..layer.out_shape.channels)
        .map(|c| {
            let mut channel = Bounds {
                lo: i64::MAX,
                hi: i64::MIN,
            };
            // Every position of a channel uses the same weights, but padding differs: visit all.
            for out in c * per_channel..(c + 1) * per_channel {
                let (mut lo, mut hi) = (0i64, 0i64);
                layer.for_each_term(out, |idx, w| match idx {
                    Some(_) => {
                        lo += (w * input.lo).min(w * input.hi);
                        hi += (w * input.lo).max(w * input.hi);
                    }
                    None => {
                        lo += w;
                        hi += w;
                    }
                });
                if let (Some(r), Some(b)) = (&layer.residual, residual) {
                    let g = r.gains[c];
                    lo += (g * b.lo).min(g * b.hi);
                    hi += (g * b.lo).max(g * b.hi);
                }
                channel.lo = channel.lo.min(lo);
                channel.hi = channel.hi.max(hi);
            }
            channel
        })
        .collect()
}

/// A linear layer with integer weights and the float scales that give them meaning.
pub(crate) struct QuantizedLinear {
    pub layer: Linear,
    /// Float pre-activation of channel c: weight_scale[c] * (acc - zero_term[c]) + bias[c].
    pub weight_scale: Vec<f64>,
    pub zero_term: Vec<f64>,
    pub bias: Vec<f64>,
}

/// Plan the window of one accumulator, fuse its element-wise chain into tables, and advance
/// the calibration state through the new layers.
fn requantize(
    mut lin: QuantizedLinear,
    chain: Chain,
    state: &mut State,
    residual: Option<&State>,
    act_bits: u32,
    options: &Resolved,
) -> Result<(Linear, Requant)> {
    let layer = &mut lin.layer;
    let shape = layer.out_shape;
    let worst = worst_case(layer, state.bounds, residual.map(|r| r.bounds));
    let per_channel = shape.per_channel();
    let residual_values = |image: usize| residual.map(|r| r.values[image].as_slice());
    let raw_accs: Vec<Vec<i64>> = state
        .values
        .par_iter()
        .enumerate()
        .map(|(image, v)| clear::linear(layer, v, residual_values(image)))
        .collect();
    let calibrated: Vec<Bounds> = (0..shape.channels)
        .map(|c| {
            let mut b = Bounds {
                lo: i64::MAX,
                hi: i64::MIN,
            };
            for acc in &raw_accs {
                for &v in &acc[c * per_channel..(c + 1) * per_channel] {
                    b.lo = b.lo.min(v);
                    b.hi = b.hi.max(v);
                }
            }
            b
        })
        .collect();
    // The width each channel's window must hold, and the bits of the widest.
    let widest_bits = |needs: &[i64]| needs.iter().map(|&w| bits_for(w)).max().unwrap_or(1);
    let worst_needs: Vec<i64> = worst.iter().map(|b| b.hi - b.lo + 1).collect();
    let worst_bits = widest_bits(&worst_needs);
    let calibrated_needs: Option<Vec<i64>> = options.margin.map(|m| {
        calibrated
            .iter()
            .map(|b| ((b.hi - b.lo + 1) as f64 * (1.0 + m)).ceil() as i64)
            .collect()
    });
    let (mut windows, needs, acc_bits) = match calibrated_needs {
        Some(needs) if widest_bits(&needs) < worst_bits => {
            let bits = widest_bits(&needs);
            (calibrated, needs, bits)
        }
        _ => (worst, worst_needs, worst_bits),
    };
    let lut_bits = options.table_bits.of(&layer.name);
    let acc_bits = acc_bits.max(lut_bits);
    if acc_bits > 40 {
        return Err(Error::Compile(format!(
            "layer {}: accumulator needs {acc_bits} bits (worst case {worst_bits}); at most 40 are supported",
            layer.name
        )));
    }
    // Stretch narrow channels by an integer gain so that every channel fills the window: exact
    // (the gain multiplies integer weights) and without extra bootstraps; it costs noise, which the
    // parameter choice accounts for.
    let gains: Vec<i64> = needs
        .iter()
        .map(|need| ((1i64 << acc_bits) / need.max(&1)).max(1))
        .collect();
    for (row, &gain) in layer.weight_rows_mut().zip(&gains) {
        row.iter_mut().for_each(|w| *w *= gain);
    }
    for (c, &gain) in gains.iter().enumerate() {
        if let Some(r) = &mut layer.residual {
            r.gains[c] *= gain;
        }
        lin.zero_term[c] *= gain as f64;
        lin.weight_scale[c] /= gain as f64;
        windows[c] = Bounds {
            lo: windows[c].lo * gain,
            hi: windows[c].hi * gain,
        };
    }
    // The gained accumulators (offsets still zero): every term of channel c scales by its gain.
    let accs: Vec<Vec<i64>> = raw_accs
        .iter()
        .map(|acc| {
            acc.iter()
                .enumerate()
                .map(|(i, &v)| v * gains[i / per_channel])
                .collect()
        })
        .collect();
    // Centre each channel's window in [0, 2^B).
    layer.offsets = windows
        .iter()
        .map(|b| (1i64 << (acc_bits - 1)) - (b.lo + b.hi + 1).div_euclid(2))
        .collect();
    let shift = acc_bits - lut_bits;
    // Activation quantization from the float values the calibration accumulators stand for.
    let float_of = |c: usize, acc: f64| chain.apply(c, lin.weight_scale[c] * (acc - lin.zero_term[c]) + lin.bias[c]);
    let mut ys: Vec<f64> = accs
        .iter()
        .flat_map(|acc| {
            acc.iter()
                .enumerate()
                .map(|(idx, &v)| float_of(idx / per_channel, v as f64))
        })
        .collect();
    ys.sort_by(f64::total_cmp);
    // Clip the rarest values at each end: their levels are better spent on the bulk.
    let k = (options.act_clip * (ys.len() - 1) as f64).floor() as usize;
    let act = ActQuant::from_range(ys[k], ys[ys.len() - 1 - k], act_bits);
    let tables = (0..shape.channels)
        .map(|c| {
            (0..1i64 << lut_bits)
                .map(|t| {
                    // Centre of the bin of accumulator values that index t.
                    let centre = (t << shift) as f64 + ((1i64 << shift) - 1) as f64 / 2.0 - layer.offsets[c] as f64;
                    act.quantize(float_of(c, centre))
                })
                .collect()
        })
        .collect();
    let requant = Requant {
        name: layer.name.clone(),
        shape,
        acc_bits,
        lut_bits,
        tables,
        output_encoding_bits: 0,
        output_bits: act_bits,
        steps: Vec::new(),
    };
    let linear = lin.layer;
    // What the clear evaluator computes on each calibration image: the gained accumulators plus
    // the offsets, through the tables.
    state.values = accs
        .into_par_iter()
        .map(|mut acc| {
            acc.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += linear.offsets[i / per_channel]);
            clear::requant(&requant, &acc)
        })
        .collect();
    state.shape = shape;
    state.bounds = Bounds {
        lo: 0,
        hi: (1i64 << act_bits) - 1,
    };
    state.scale = act.scale;
    state.zero_point = act.zero_point;
    Ok((linear, requant))
}

/// The last layer: its accumulators are the outputs, decrypted directly (no bootstrap).
///
/// The scores are held signed in `bits` bits plus a sign: enough for the worst case, or, when
/// windows are calibrated, for twice the largest calibrated |score| times (1 + margin) if that is
/// narrower. Every bit saved halves the noise the decryption must tolerate (cnn-pkn: 12 bits
/// instead of 15); a score beyond the window wraps, in both evaluators alike.
fn output_layer(
    mut lin: QuantizedLinear,
    state: &State,
    classes: &[String],
    options: &Resolved,
) -> Result<(Linear, OutputSpec)> {
    let scale = lin.weight_scale[0];
    lin.layer.offsets = (0..lin.layer.out_shape.channels)
        .map(|c| (lin.bias[c] / scale).round() as i64 - lin.zero_term[c].round() as i64)
        .collect();
    let mut worst = worst_case(&lin.layer, state.bounds, None);
    for (b, &off) in worst.iter_mut().zip(&lin.layer.offsets) {
        b.lo += off;
        b.hi += off;
    }
    let worst_abs = worst.iter().map(|b| b.lo.abs().max(b.hi.abs())).max().unwrap_or(0);
    let per_channel = lin.layer.out_shape.per_channel();
    let calibrated_abs = options.margin.map(|margin| {
        let largest = state
            .values
            .par_iter()
            .map(|v| {
                let scores = clear::linear(&lin.layer, v, None);
                scores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s + lin.layer.offsets[i / per_channel]).abs())
                    .max()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        (2.0 * largest as f64 * (1.0 + margin)).ceil() as i64
    });
    let max_abs = calibrated_abs.map_or(worst_abs, |c| c.min(worst_abs));
    let bits = bits_for(max_abs + 1);
    Ok((
        lin.layer,
        OutputSpec {
            bits,
            scale,
            classes: classes.to_vec(),
        },
    ))
}

/// One candidate parameter set judged on a circuit.
pub struct Candidate {
    pub params: FheParams,
    /// Noise with the truncation steps planned for this set.
    pub report: noise::NoiseReport,
    /// Relative cost in stock bootstraps.
    pub cost: f64,
    plan: Vec<(usize, Vec<TruncStep>)>,
}

impl Candidate {
    /// The circuit with this candidate's truncation plan and parameters.
    pub fn planned(&self, circuit: &Circuit) -> Circuit {
        let mut c = circuit.clone();
        apply_plan(&mut c, &self.plan);
        c.params = Some(self.params);
        c
    }
}

/// Every candidate set, each with its own plan of precise truncation steps.
pub fn candidates(circuit: &Circuit) -> Vec<Candidate> {
    FheParams::candidates()
        .into_iter()
        .map(|params| {
            let mut trial = circuit.clone();
            let plan = noise::plan_truncation(&trial, &params);
            apply_plan(&mut trial, &plan);
            Candidate {
                params,
                report: noise::analyse(&trial, &params),
                cost: trial.relative_cost(&params),
                plan,
            }
        })
        .collect()
}

/// The cheapest parameter set under which every bootstrap of the circuit meets the limit, with
/// the truncation steps that need the precise key marked in the circuit.
pub fn choose_params(circuit: &mut Circuit) -> Result<FheParams> {
    let all = candidates(circuit);
    if let Some(best) = all
        .iter()
        .filter(|c| c.report.worst_log2_pfail() <= LOG2_PFAIL_LIMIT)
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
    {
        apply_plan(circuit, &best.plan);
        return Ok(best.params);
    }
    let best_failure = all.into_iter().last().map(|c| c.report);
    let report = best_failure.expect("there is at least one candidate");
    let worst = report.worst();
    if report.output_is_worst() {
        return Err(Error::Compile(format!(
            "no parameter set runs this circuit exactly: decrypting the {}-bit scores of the output layer \
             reaches p-fail 2^{:.1} > 2^{LOG2_PFAIL_LIMIT} even with the most precise bootstrap; \
             use fewer weight bits in the output layer or fewer activation bits in the layer before it",
            circuit.output.bits, report.output_log2_pfail
        )));
    }
    Err(Error::Compile(format!(
        "no parameter set runs this circuit exactly: layer {} ({} accumulator bits, {} read by the table) \
         reaches p-fail 2^{:.1} > 2^{LOG2_PFAIL_LIMIT} even with the most precise bootstrap; \
         use fewer weight or activation bits or a narrower window",
        worst.name, worst.acc_bits, worst.lut_bits, worst.log2_pfail
    )))
}

fn apply_plan(circuit: &mut Circuit, plan: &[(usize, Vec<TruncStep>)]) {
    for (i, steps) in plan {
        if let Layer::Requant(r) = &mut circuit.layers[*i] {
            r.steps = steps.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn weights() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights")
    }

    /// The first 100 shipped calibration images.
    fn calibration() -> Vec<Vec<u8>> {
        let mut images = crate::io::idx::read_images(&weights().join("calibration-images.idx")).unwrap();
        images.truncate(100);
        images
    }

    fn shipped(name: &str, options: &CompileOptions) -> Circuit {
        let model = crate::model::load_model(&weights().join(format!("{name}.safetensors"))).unwrap();
        compile(&model, &calibration(), options).unwrap()
    }

    #[test]
    fn peak_live_ciphertexts_are_a_linear_layers_input_and_output() {
        // tiny-pkn: the 784 encrypted pixels and conv1's 784 accumulators; its tables then write
        // over the accumulators, and conv2 reads 784 and writes 392.
        let tiny = shipped("tiny-pkn", &CompileOptions::default());
        assert_eq!(tiny.layers[0].output_shape().len(), 784);
        assert_eq!(tiny.peak_live_ciphertexts(), (784 + 784, 0));
        // cnn-pkn: conv1's 9,216 table outputs and the 2,304 sums of the pool that reads them.
        let cnn = shipped("cnn-pkn", &CompileOptions::default());
        assert_eq!(cnn.peak_live_ciphertexts(), (9216 + 2304, 2));
    }

    #[test]
    fn calibrated_output_window_keeps_twice_the_calibrated_scores() {
        let calibrated = shipped("cnn-pkn", &CompileOptions::default());
        let worst = shipped(
            "cnn-pkn",
            &CompileOptions {
                worst_case: true,
                ..Default::default()
            },
        );
        assert!(
            calibrated.output.bits < worst.output.bits,
            "calibrated {} bits, worst case {}",
            calibrated.output.bits,
            worst.output.bits
        );
        let half = 1i64 << (calibrated.output.bits - 1);
        for image in &calibration() {
            let input = clear::quantize_pixels(image, calibrated.input.bits);
            for score in clear::run(&calibrated, &input) {
                assert!(
                    score.abs() <= half,
                    "score {score} beyond half the {}-bit window",
                    calibrated.output.bits
                );
            }
        }
    }
}
