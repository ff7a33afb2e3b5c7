//! Range analysis: what each tensor holds on the calibration images, and the worst-case and
//! calibrated range of every accumulator.

use rayon::prelude::*;

use crate::circuit::{Linear, Shape};
use crate::eval::clear;

/// Range [lo, hi] every element of a tensor is known to lie in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    pub lo: i64,
    pub hi: i64,
}

/// The integer tensor being built, on every calibration image.
#[derive(Clone)]
pub(super) struct Calibrated {
    /// Index of the circuit tensor that holds it.
    pub tensor: usize,
    pub shape: Shape,
    pub values: Vec<Vec<i64>>,
    pub bounds: Bounds,
    /// Float meaning of an integer q: scale * (q - zero_point).
    pub scale: f64,
    pub zero_point: i64,
}

/// A linear layer's accumulators on every calibration image (offsets excluded), and their range
/// per channel: the worst case over every input, and the calibrated one.
pub(super) struct Ranges {
    pub accumulators: Vec<Vec<i64>>,
    pub worst: Vec<Bounds>,
    pub calibrated: Vec<Bounds>,
}

/// The ranges of `layer`'s accumulators when it reads `state` (and `residual`, if any).
pub(super) fn measure(layer: &Linear, state: &Calibrated, residual: Option<&Calibrated>) -> Ranges {
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
    Ranges {
        accumulators: raw_accs,
        worst,
        calibrated,
    }
}

/// Number of bits needed to hold `width` distinct values.
pub(super) fn bits_for(width: i64) -> u32 {
    64 - (width.max(1) - 1).leading_zeros()
}

/// Worst-case per-channel range of a linear layer's outputs (offsets excluded), its residual
/// tensor within `residual`.
pub(super) fn worst_case(layer: &Linear, input: Bounds, residual: Option<Bounds>) -> Vec<Bounds> {
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
