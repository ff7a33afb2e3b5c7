//! Window planning: which bits of each accumulator the table reads. The window is the calibrated
//! range plus a margin (or the worst case), every channel stretched by an integer gain to fill
//! it, and centred in [0, 2^B) by an offset.

use super::quantize::QuantizedLinear;
use super::range::{bits_for, Bounds, Ranges};
use crate::error::{Error, Result};

/// Widest accumulator the compiler plans (the circuit's encodings hold a dozen bits or so).
const MAX_ACC_BITS: u32 = 40;

/// The window of one layer's accumulators.
pub(super) struct Window {
    /// B: bits the accumulator holds.
    pub acc_bits: u32,
    /// Integer gain of each channel.
    pub gains: Vec<i64>,
    /// Each channel's range after its gain.
    pub bounds: Vec<Bounds>,
}

/// The window of layer `name`'s accumulators, read by a table of `lut_bits`: sized by the
/// calibrated ranges times (1 + `margin`) when that is narrower than the worst case.
pub(super) fn plan_window(name: &str, ranges: &Ranges, margin: Option<f64>, lut_bits: u32) -> Result<Window> {
    // The width each channel's window must hold, and the bits of the widest.
    let widest_bits = |needs: &[i64]| needs.iter().map(|&w| bits_for(w)).max().unwrap_or(1);
    let worst_needs: Vec<i64> = ranges.worst.iter().map(|b| b.hi - b.lo + 1).collect();
    let worst_bits = widest_bits(&worst_needs);
    let calibrated_needs: Option<Vec<i64>> = margin.map(|m| {
        ranges
            .calibrated
            .iter()
            .map(|b| ((b.hi - b.lo + 1) as f64 * (1.0 + m)).ceil() as i64)
            .collect()
    });
    let (windows, needs, acc_bits) = match calibrated_needs {
        Some(needs) if widest_bits(&needs) < worst_bits => {
            let bits = widest_bits(&needs);
            (&ranges.calibrated, needs, bits)
        }
        _ => (&ranges.worst, worst_needs, worst_bits),
    };
    let acc_bits = acc_bits.max(lut_bits);
    if acc_bits > MAX_ACC_BITS {
        return Err(Error::Compile(format!(
            "layer {name}: accumulator needs {acc_bits} bits (worst case {worst_bits}); at most {MAX_ACC_BITS} are supported"
        )));
    }
    // Stretch narrow channels by an integer gain so that every channel fills the window: exact
    // (the gain multiplies integer weights) and without extra bootstraps; it costs noise, which the
    // parameter choice accounts for.
    let gains: Vec<i64> = needs
        .iter()
        .map(|need| ((1i64 << acc_bits) / need.max(&1)).max(1))
        .collect();
    let bounds = windows
        .iter()
        .zip(&gains)
        .map(|(b, &gain)| Bounds {
            lo: b.lo * gain,
            hi: b.hi * gain,
        })
        .collect();
    Ok(Window {
        acc_bits,
        gains,
        bounds,
    })
}

/// Applies `window` to `lin`: every channel's weights, residual gain and scales by its gain, and
/// the offsets that centre it. Returns the calibration `accumulators` with the gains applied
/// (offsets still excluded).
pub(super) fn apply_window(lin: &mut QuantizedLinear, window: &Window, accumulators: Vec<Vec<i64>>) -> Vec<Vec<i64>> {
    let layer = &mut lin.layer;
    let per_channel = layer.out_shape.per_channel();
    for (row, &gain) in layer.weight_rows_mut().zip(&window.gains) {
        row.iter_mut().for_each(|w| *w *= gain);
    }
    for (c, &gain) in window.gains.iter().enumerate() {
        if let Some(r) = &mut layer.residual {
            r.gains[c] *= gain;
        }
        lin.zero_term[c] *= gain as f64;
        lin.weight_scale[c] /= gain as f64;
    }
    // Centre each channel's window in [0, 2^B).
    layer.offsets = window
        .bounds
        .iter()
        .map(|b| (1i64 << (window.acc_bits - 1)) - (b.lo + b.hi + 1).div_euclid(2))
        .collect();
    // Every term of channel c scales by its gain.
    accumulators
        .into_iter()
        .map(|acc| {
            acc.iter()
                .enumerate()
                .map(|(i, &v)| v * window.gains[i / per_channel])
                .collect()
        })
        .collect()
}
