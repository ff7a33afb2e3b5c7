//! Lowering: the model's nodes, in order, to the circuit's layers. Each convolution or dense
//! layer with its element-wise chain becomes a linear layer and a table layer through the
//! per-layer passes (range, window, fuse); pools become sum pools; residual adds are folded into
//! the accumulator; the last layer becomes the output.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::fuse::fuse_tables;
use super::options::ResolvedOptions;
use super::output::output_layer;
use super::quantize::{quantize_weights, Chain, QuantizedLinear};
use super::range::{measure, Bounds, Calibrated};
use super::window::{apply_window, plan_window};
use crate::circuit::{window_output, InputSpec, Layer, Linear, LinearOp, OutputSpec, Requant, Shape};
use crate::encoding::quantize_pixels;
use crate::error::{Error, Result};
use crate::eval::clear;
use crate::model::{Model, Node, Widths};
use crate::params::Bootstrap;

/// The model's nodes as circuit layers, each window planned and each table fused on the way
/// (a layer's calibration values depend on the tables before it); the output layer last.
pub(super) fn lower(model: &Model, calibration: &[Vec<u8>], options: &ResolvedOptions) -> Result<Lowered> {
    let arch = &model.arch;
    let q = &arch.quantization;
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
    let input_state = Calibrated {
        tensor: 0,
        shape,
        values: calibration
            .iter()
            .map(|img| quantize_pixels(img, q.input_bits))
            .collect(),
        bounds: Bounds { lo: 0, hi: levels },
        scale: 1.0 / levels as f64,
        zero_point: 0,
    };
    let mut lowering = Lowering {
        model,
        options,
        layers: Vec::new(),
        saved: HashMap::new(),
        referenced: referenced_names(&model.nodes),
        output: None,
    };
    lowering.lower_nodes(&model.nodes, input_state, true)?;
    let Lowering { mut layers, output, .. } = lowering;
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
    Ok(Lowered {
        input: InputSpec {
            shape,
            bits: q.input_bits,
            encoding_bits: 0,
        },
        layers,
        output: output_spec,
    })
}

/// What lowering produces: everything of the circuit but its encodings and parameters.
pub(super) struct Lowered {
    pub input: InputSpec,
    pub layers: Vec<Layer>,
    pub output: OutputSpec,
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
pub(super) struct Lowering<'m> {
    model: &'m Model,
    options: &'m ResolvedOptions,
    layers: Vec<Layer>,
    /// Tensors that a later residual add reads, by the name of the layer that produced them.
    saved: HashMap<String, Calibrated>,
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

impl Lowering<'_> {
    /// Compile `nodes` from `state`; only the top level (`top`) may end in the output layer.
    fn lower_nodes(&mut self, nodes: &[Node], mut state: Calibrated, top: bool) -> Result<Calibrated> {
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
                        residual = Some(self.lower_nodes(shortcut, source, false)?);
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
                        self.output = Some(output_layer(
                            lin,
                            &state,
                            &self.model.arch.classes,
                            self.options.margin,
                        )?);
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

/// A sum pool (average pooling, undivided) over `state`.
fn sum_pool(state: &Calibrated, kernel: usize, stride: usize) -> Result<Linear> {
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

/// One linear layer and its element-wise chain as a linear layer and a table layer: the ranges of
/// its accumulators, their window, the fused tables; advances the calibration state through both.
fn requantize(
    mut lin: QuantizedLinear,
    chain: Chain,
    state: &mut Calibrated,
    residual: Option<&Calibrated>,
    act_bits: u32,
    options: &ResolvedOptions,
) -> Result<(Linear, Requant)> {
    let ranges = measure(&lin.layer, state, residual);
    let lut_bits = options.table_bits.of(&lin.layer.name);
    let window = plan_window(&lin.layer.name, &ranges, options.margin, lut_bits)?;
    let accs = apply_window(&mut lin, &window, ranges.accumulators);
    let acc_bits = window.acc_bits;
    let (tables, act) = fuse_tables(&lin, &chain, &accs, acc_bits, lut_bits, act_bits, options.act_clip);
    let shape = lin.layer.out_shape;
    let per_channel = shape.per_channel();
    let requant = Requant {
        name: lin.layer.name.clone(),
        shape,
        acc_bits,
        lut_bits,
        tables,
        output_encoding_bits: 0,
        output_bits: act_bits,
        steps: Vec::new(),
        table_key: Bootstrap::Precise,
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
