//! Output sizing: the last layer's accumulators are the scores, decrypted directly.

use rayon::prelude::*;

use super::quantize::QuantizedLinear;
use super::range::{bits_for, worst_case, Calibrated};
use crate::circuit::{Linear, OutputSpec};
use crate::error::Result;
use crate::eval::clear;

/// The last layer: its accumulators are the outputs, decrypted directly (no bootstrap).
///
/// The scores are held signed in `bits` bits plus a sign: enough for the worst case, or, when
/// windows are calibrated, for twice the largest calibrated |score| times (1 + margin) if that is
/// narrower. Every bit saved halves the noise the decryption must tolerate (cnn-pkn: 12 bits
/// instead of 15); a score beyond the window wraps, in both evaluators alike.
pub(super) fn output_layer(
    mut lin: QuantizedLinear,
    state: &Calibrated,
    classes: &[String],
    margin: Option<f64>,
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
    let calibrated_abs = margin.map(|margin| {
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
