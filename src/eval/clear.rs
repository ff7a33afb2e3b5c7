//! The clear evaluator: the integer circuit on plaintext i64, the reference that FHE must equal.

use super::Tensors;
use crate::circuit::{Circuit, Layer, Linear, LinearOp, Requant};
use crate::encoding::wrap_signed;

/// A leveled layer: exact weighted sums plus per-channel offsets, plus the residual tensor if the
/// layer has one.
pub fn linear(layer: &Linear, input: &[i64], residual: Option<&[i64]>) -> Vec<i64> {
    let mut sums = match layer.op {
        LinearOp::SumPool { .. } => (0..layer.out_shape.len())
            .map(|out| {
                let mut acc = 0;
                layer.for_each_term(out, |idx, w| acc += w * idx.map_or(1, |i| input[i]));
                acc
            })
            .collect(),
        LinearOp::Conv2d { pad_value, .. } => patch_products(layer, input, pad_value),
        LinearOp::Dense => patch_products(layer, input, 0),
    };
    for (out, acc) in sums.iter_mut().enumerate() {
        let c = layer.channel_of(out);
        *acc += layer.offsets[c];
        if let (Some(r), Some(values)) = (&layer.residual, residual) {
            *acc += r.gains[c] * values[out];
        }
    }
    sums
}

/// Weighted sums of a convolution or dense layer as dot products: the input patch of each
/// position is gathered once (padding as `pad_value`) and shared by every output channel, and the
/// dot product is a loop the compiler vectorises. The same terms as [`Linear::for_each_term`],
/// about ten times faster, which matters for calibrating and evaluating the larger models.
fn patch_products(layer: &Linear, input: &[i64], pad_value: i64) -> Vec<i64> {
    let positions = layer.out_shape.per_channel();
    let row_len = layer.weight_row(0).len();
    let mut patches = vec![0i64; positions * row_len];
    for (position, patch) in patches.chunks_mut(row_len).enumerate() {
        layer.for_each_source(position, |k, idx| patch[k] = idx.map_or(pad_value, |i| input[i]));
    }
    let mut sums = vec![0i64; layer.out_shape.len()];
    for (oc, plane) in sums.chunks_mut(positions).enumerate() {
        let row = layer.weight_row(oc);
        for (acc, patch) in plane.iter_mut().zip(patches.chunks(row_len)) {
            *acc = row.iter().zip(patch).map(|(w, x)| w * x).sum();
        }
    }
    sums
}

/// Index read by the table: `(m >> s) mod 2^(W + 1)`, with a floor shift.
pub fn lut_index(acc: i64, shift: u32, lut_bits: u32) -> usize {
    (acc >> shift).rem_euclid(1i64 << (lut_bits + 1)) as usize
}

/// Table output for index `t`, including the negacyclic half.
pub fn table_output(table: &[i64], t: usize) -> i64 {
    match table.get(t) {
        Some(&v) => v,
        None => -table[t - table.len()],
    }
}

/// Exact truncation and table lookup of every activation.
pub fn requant(layer: &Requant, acc: &[i64]) -> Vec<i64> {
    let per_channel = layer.shape.per_channel();
    acc.iter()
        .enumerate()
        .map(|(i, &m)| {
            table_output(
                &layer.tables[i / per_channel],
                lut_index(m, layer.shift(), layer.lut_bits),
            )
        })
        .collect()
}

/// Run the whole circuit on quantized input integers; returns the output integers.
pub fn run(circuit: &Circuit, input: &[i64]) -> Vec<i64> {
    let last_uses = circuit.last_uses();
    let mut tensors = Tensors::start(circuit, input.to_vec());
    while tensors.next_layer < circuit.layers.len() {
        tensors.step(circuit, &last_uses, |layer, x, held| match layer {
            Layer::Linear(l) => linear(l, &x, l.residual.as_ref().map(|r| held.get(r.from).as_slice())),
            Layer::Requant(r) => requant(r, &x),
        });
    }
    tensors
        .output()
        .into_iter()
        .map(|v| wrap_signed(v, circuit.output.bits))
        .collect()
}

/// Index of the largest output (the predicted class).
pub fn argmax(scores: &[i64]) -> usize {
    scores
        .iter()
        .enumerate()
        .max_by_key(|&(i, &v)| (v, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lut_index_wraps_into_the_negacyclic_half() {
        // W = 2, s = 3: window [0, 32) maps to t in [0, 4); 32..64 to the negacyclic half.
        assert_eq!(lut_index(0, 3, 2), 0);
        assert_eq!(lut_index(31, 3, 2), 3);
        assert_eq!(lut_index(32, 3, 2), 4);
        assert_eq!(lut_index(64, 3, 2), 0);
        assert_eq!(lut_index(-1, 3, 2), 7);
        let table = [5, 6, 7, 8];
        assert_eq!(table_output(&table, 3), 8);
        assert_eq!(table_output(&table, 5), -6);
    }

    #[test]
    fn a_split_table_wraps_like_a_direct_one_and_costs_two_bootstraps_after_its_steps() {
        use crate::circuit::Shape;
        let table: Vec<i64> = (0..32).map(|t| t - 10).collect();
        let layer = Requant {
            name: "split".into(),
            shape: Shape {
                channels: 1,
                height: 1,
                width: 5,
            },
            acc_bits: 7,
            lut_bits: 5,
            tables: vec![table],
            output_encoding_bits: 6,
            output_bits: 4,
            steps: vec![crate::circuit::TruncStep {
                bits: 3,
                precise: false,
                narrow: false,
            }],
            table_key: crate::params::Bootstrap::Precise,
        };
        // s = 2: 0 -> t 0; 127 -> t 31; 128 -> t 32, the negacyclic half: -T[0]; -1 -> t 63: -T[31].
        assert_eq!(requant(&layer, &[0, 127, 128, -1, 70]), vec![-10, 21, 10, -21, 7]);
        assert!(layer.split_table());
        assert_eq!(layer.truncated_bits(), 3);
        assert_eq!(layer.pbs_per_activation(), 2 + 2);
        assert_eq!(layer.truncation_pbs_per_activation(), 2);
    }

    /// The per-term walk that the FHE evaluator and the noise rule use, as the reference.
    fn linear_by_terms(layer: &Linear, input: &[i64], residual: &[i64]) -> Vec<i64> {
        (0..layer.out_shape.len())
            .map(|out| {
                let c = layer.channel_of(out);
                let mut acc = layer.offsets[c] + layer.residual.as_ref().map_or(0, |r| r.gains[c] * residual[out]);
                layer.for_each_term(out, |idx, w| acc += idx.map_or(w, |i| w * input[i]));
                acc
            })
            .collect()
    }

    #[test]
    fn dot_products_equal_the_per_term_walk() {
        use crate::circuit::{Residual, Shape};
        let shape = |channels, height, width| Shape {
            channels,
            height,
            width,
        };
        let mut seed = 12345u64;
        let mut next = move |range: i64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as i64).rem_euclid(2 * range + 1) - range
        };
        let conv = |kernel, stride, padding, pad_value| LinearOp::Conv2d {
            kernel,
            stride,
            padding,
            pad_value,
        };
        let ops = [
            (conv(3, 1, 1, 5), shape(3, 7, 6), shape(4, 7, 6)),
            (conv(3, 2, 1, -2), shape(2, 7, 7), shape(3, 4, 4)),
            (conv(5, 1, 0, 0), shape(2, 9, 8), shape(2, 5, 4)),
            (conv(1, 2, 0, 0), shape(3, 6, 6), shape(5, 3, 3)),
            (LinearOp::Dense, shape(20, 1, 1), shape(6, 1, 1)),
            (
                LinearOp::SumPool { kernel: 2, stride: 2 },
                shape(3, 6, 4),
                shape(3, 3, 2),
            ),
        ];
        for (op, in_shape, out_shape) in ops {
            let row = match op {
                LinearOp::Conv2d { kernel, .. } => in_shape.channels * kernel * kernel,
                LinearOp::Dense => in_shape.len(),
                LinearOp::SumPool { .. } => 0,
            };
            let layer = Linear {
                name: "l".into(),
                input: 0,
                op,
                in_shape,
                out_shape,
                weights: (0..row * out_shape.channels).map(|_| next(7)).collect(),
                offsets: (0..out_shape.channels).map(|_| next(100)).collect(),
                residual: Some(Residual {
                    from: 0,
                    gains: (0..out_shape.channels).map(|_| next(3)).collect(),
                }),
            };
            let input: Vec<i64> = (0..in_shape.len()).map(|_| next(15)).collect();
            let residual: Vec<i64> = (0..out_shape.len()).map(|_| next(15)).collect();
            let fast = linear(&layer, &input, Some(&residual));
            assert_eq!(fast, linear_by_terms(&layer, &input, &residual), "{op:?}");
            assert!(fast.iter().any(|&v| v != 0));
        }
    }

    #[test]
    fn argmax_prefers_first_on_ties() {
        assert_eq!(argmax(&[1, 3, 3, 2]), 1);
    }
}
