//! Table fusion: the bias, cp, the square, ap, batch norm and the next layer's activation
//! quantization, evaluated in floats over every table index, become one integer table per channel.

use super::quantize::{ActQuant, Chain, QuantizedLinear};

/// The tables of one layer, read from the `lut_bits` high bits of its `acc_bits`-bit accumulators
/// (windows already applied to `lin`), and the activation quantization they output, sized from
/// what the gained calibration `accumulators` stand for, clipping `act_clip` of them at each end.
pub(super) fn fuse_tables(
    lin: &QuantizedLinear,
    chain: &Chain,
    accumulators: &[Vec<i64>],
    acc_bits: u32,
    lut_bits: u32,
    act_bits: u32,
    act_clip: f64,
) -> (Vec<Vec<i64>>, ActQuant) {
    let layer = &lin.layer;
    let per_channel = layer.out_shape.per_channel();
    let shift = acc_bits - lut_bits;
    // Activation quantization from the float values the calibration accumulators stand for.
    let float_of = |c: usize, acc: f64| chain.apply(c, lin.weight_scale[c] * (acc - lin.zero_term[c]) + lin.bias[c]);
    let mut ys: Vec<f64> = accumulators
        .iter()
        .flat_map(|acc| {
            acc.iter()
                .enumerate()
                .map(|(idx, &v)| float_of(idx / per_channel, v as f64))
        })
        .collect();
    ys.sort_by(f64::total_cmp);
    // Clip the rarest values at each end: their levels are better spent on the bulk.
    let k = (act_clip * (ys.len() - 1) as f64).floor() as usize;
    let act = ActQuant::from_range(ys[k], ys[ys.len() - 1 - k], act_bits);
    let tables = (0..layer.out_shape.channels)
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
    (tables, act)
}
