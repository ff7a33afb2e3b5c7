//! Leveled layers: convolutions, dense products and sum pools on integer tensors, and the residual
//! adds they carry.

use serde::{Deserialize, Serialize};

use super::{Shape, TruncStep};

/// A leveled integer operation: every output is a weighted sum of inputs plus a per-channel offset.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LinearOp {
    /// Weights laid out [out][in][ky][kx], as in PyTorch.
    Conv2d {
        kernel: usize,
        stride: usize,
        padding: usize,
        /// Value of the padded border: the zero point of the input, so that padding means float 0.
        pad_value: i64,
    },
    /// Weights laid out [out][in]; the input is flattened in (c, y, x) order.
    Dense,
    /// Sum over each kernel x kernel window of each channel (average pooling, undivided).
    SumPool { kernel: usize, stride: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub name: String,
    /// The tensor it reads: 0 is the circuit's input, i + 1 the output of layer i.
    pub input: usize,
    pub op: LinearOp,
    pub in_shape: Shape,
    pub out_shape: Shape,
    pub weights: Vec<i64>,
    /// Added to every output of a channel (centring, folded zero points, integer bias).
    pub offsets: Vec<i64>,
    /// A residual (skip) connection added to the weighted sums.
    pub residual: Option<Residual>,
}

/// `output[o] += gains[c] * tensor[from][o]`, c the channel of o: the tensor has the output's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Residual {
    pub from: usize,
    pub gains: Vec<i64>,
}

impl Residual {
    /// Fewest trailing zero bits among the gains modulo 2^(acc_bits + 1): a deferred add needs the
    /// residual encoded with at least `acc_bits` minus this many bits.
    pub fn gain_trailing_zeros(&self, acc_bits: u32) -> u32 {
        self.gains
            .iter()
            .map(|&g| (g as u64 & low_mask(acc_bits + 1)).trailing_zeros().min(acc_bits + 1))
            .min()
            .unwrap_or(acc_bits + 1)
    }

    /// The add deferred into `requant`'s truncation (docs/circuit.md): for each stage (before each
    /// of `steps`, then before the table) and channel, the plaintext multiplier of the residual
    /// ciphertexts, encoded with `residual_bits`, to add to the accumulator. Stage j adds the bits of
    /// the gain that step j reads first, so that each piece of the residual's noise is only weighed
    /// against the bit it reaches, not against the accumulator's lowest.
    pub fn stage_multipliers(&self, acc_bits: u32, steps: &[TruncStep], residual_bits: u32) -> Vec<Vec<u64>> {
        let mut stages = Vec::with_capacity(steps.len() + 1);
        let mut position = 0;
        for step in steps.iter().map(Some).chain(std::iter::once(None)) {
            let width = step.map_or(acc_bits + 1 - position.min(acc_bits + 1), |s| s.bits);
            stages.push(
                self.gains
                    .iter()
                    .map(|&g| {
                        let gain = g as u64 & low_mask(acc_bits + 1);
                        let part = (gain >> position & low_mask(width)) << position;
                        if residual_bits >= acc_bits {
                            part << (residual_bits - acc_bits)
                        } else {
                            debug_assert_eq!(part & low_mask(acc_bits - residual_bits), 0);
                            part >> (acc_bits - residual_bits)
                        }
                    })
                    .collect(),
            );
            position += step.map_or(0, |s| s.bits);
        }
        stages
    }
}

/// The `bits` lowest bits set (all 64 for `bits >= 64`).
fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Linear {
    /// Output channel of output element `out`.
    pub fn channel_of(&self, out: usize) -> usize {
        out / self.out_shape.per_channel()
    }

    /// Visit the terms of output `out`: `term(Some(input_index), weight)` for a ciphertext input,
    /// `term(None, constant)` for a plaintext constant (padding). The offset is not included.
    pub fn for_each_term(&self, out: usize, mut term: impl FnMut(Option<usize>, i64)) {
        let (ins, outs) = (self.in_shape, self.out_shape);
        let oc = out / outs.per_channel();
        let position = out % outs.per_channel();
        match self.op {
            LinearOp::SumPool { kernel, stride } => {
                let (oy, ox) = (position / outs.width, position % outs.width);
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let (y, x) = (oy * stride + ky, ox * stride + kx);
                        term(Some(oc * ins.per_channel() + y * ins.width + x), 1);
                    }
                }
            }
            LinearOp::Conv2d { pad_value, .. } => {
                let row = self.weight_row(oc);
                self.for_each_source(position, |k, idx| match idx {
                    Some(i) => term(Some(i), row[k]),
                    None => term(None, row[k] * pad_value),
                });
            }
            LinearOp::Dense => {
                let row = self.weight_row(oc);
                self.for_each_source(position, |k, idx| term(idx, row[k]));
            }
        }
    }

    /// The weights of output channel `oc` (convolutions and dense layers), in term order.
    pub fn weight_row(&self, oc: usize) -> &[i64] {
        let len = self.row_len();
        &self.weights[oc * len..(oc + 1) * len]
    }

    /// Every output channel's weight row, writable (the compiler scales rows by channel gains).
    pub fn weight_rows_mut(&mut self) -> std::slice::ChunksMut<'_, i64> {
        let len = self.row_len().max(1);
        self.weights.chunks_mut(len)
    }

    fn row_len(&self) -> usize {
        self.weights.len() / self.out_shape.channels
    }

    /// For a convolution or dense layer, the input read by term k of every output channel at
    /// spatial position `position`: `f(k, Some(input_index))`, or `f(k, None)` for padding.
    /// Every channel of such a layer reads the same inputs, in the order of its weight row.
    pub fn for_each_source(&self, position: usize, mut f: impl FnMut(usize, Option<usize>)) {
        let (ins, outs) = (self.in_shape, self.out_shape);
        let (oy, ox) = (position / outs.width, position % outs.width);
        match self.op {
            LinearOp::Dense => (0..ins.len()).for_each(|i| f(i, Some(i))),
            LinearOp::SumPool { .. } => unreachable!("a pool reads its own channel, not a shared patch"),
            LinearOp::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => {
                for ic in 0..ins.channels {
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let k = (ic * kernel + ky) * kernel + kx;
                            let y = (oy * stride + ky) as isize - padding as isize;
                            let x = (ox * stride + kx) as isize - padding as isize;
                            if y < 0 || x < 0 || y >= ins.height as isize || x >= ins.width as isize {
                                f(k, None);
                            } else {
                                f(k, Some(ic * ins.per_channel() + y as usize * ins.width + x as usize));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Output size of a sliding window along one axis.
pub fn window_output(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = padding.checked_mul(2)?.checked_add(size)?;
    (padded >= kernel && stride > 0).then(|| (padded - kernel) / stride + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_multipliers_add_up_to_the_gain() {
        let steps: Vec<TruncStep> = [3, 1, 4]
            .iter()
            .map(|&bits| TruncStep {
                bits,
                precise: false,
                narrow: false,
            })
            .collect();
        let wide = Residual {
            from: 0,
            gains: vec![2923, 1023, 448, 1, -5],
        };
        assert_eq!(wide.gain_trailing_zeros(14), 0);
        for residual_bits in [14, 16] {
            let stages = wide.stage_multipliers(14, &steps, residual_bits);
            assert_eq!(stages.len(), 4);
            for (c, &g) in wide.gains.iter().enumerate() {
                let sum = stages.iter().fold(0u64, |s, stage| s.wrapping_add(stage[c]));
                let want = ((g as u64) & ((1 << 15) - 1)) << (residual_bits - 14);
                assert_eq!(sum, want, "gain {g}");
            }
        }
        let narrow = Residual {
            from: 0,
            gains: vec![8 * 45, 64 * 5],
        };
        assert_eq!(narrow.gain_trailing_zeros(14), 3);
        let stages = narrow.stage_multipliers(14, &steps, 11);
        for (c, &g) in narrow.gains.iter().enumerate() {
            assert_eq!(stages.iter().map(|s| s[c]).sum::<u64>(), g as u64 >> 3);
        }
        assert_eq!(stages[0], vec![0, 0], "no gain bit below 3");
    }
}
