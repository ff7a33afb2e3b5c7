//! The integer circuit: the closed set of operations that the clear and the FHE evaluators both run.
//!
//! Values are integers. A tensor flowing between two [`Requant`]s (or from the input, or to the
//! output) is held by ciphertexts with one common encoding `Delta = 2^(63 - B)`, where `B` is the
//! `acc_bits` of the [`Requant`] that consumes it (or `output_bits`). Such a ciphertext holds its
//! value modulo `2^(B + 1)`; the clear evaluator reduces the same way, so the two agree for every
//! input, including values that leave their window.

use serde::{Deserialize, Serialize};

use crate::params::{Bootstrap, FheParams};

/// Version of the serialised circuit (and of the compiler's output semantics). 3: 5-bit tables
/// are split tables, whose index wraps modulo 2^5 outside the window. 4: residual gains keep
/// their 6 highest bits (networks without residual adds compile to the same integers as in 3).
/// 5: a split table's last truncation step also removes the table's lowest bit, and the table
/// outputs what a direct one would (the sign of the padding bit included).
pub const CIRCUIT_VERSION: u32 = 5;

/// Channels, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn per_channel(&self) -> usize {
        self.height * self.width
    }
}

/// How the client turns pixels into integers and encodes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub shape: Shape,
    /// Pixels p in [0, 255] become round(p / 255 * (2^bits - 1)).
    pub bits: u32,
    /// B of the encoding `Delta = 2^(63 - B)` of the input ciphertexts.
    pub encoding_bits: u32,
}

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

/// Widest table one bootstrap reads at 2^-64 (4 bits plus the padding bit, N = 2048).
pub const DIRECT_TABLE_BITS: u32 = 4;
/// Widest table the FHE evaluator runs: 5 bits, as a split table of two bootstraps after its
/// lowest bit is read by the last truncation step.
pub const MAX_FHE_TABLE_BITS: u32 = 5;

/// Exact truncation followed by one table lookup per activation.
///
/// With `m` the accumulator, `s = acc_bits - lut_bits` and `t = (m >> s) mod 2^(lut_bits + 1)`
/// (floor shift), a direct table (W <= 4) outputs `tables[c][t]` if `t < 2^lut_bits`, else
/// `-tables[c][t - 2^lut_bits]` (the negacyclic half of the bootstrap; reached only when m left
/// its window). A split table (W = 5, docs/circuit.md) outputs the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requant {
    pub name: String,
    pub shape: Shape,
    /// B: bits held by the accumulator ciphertexts (plus one padding bit).
    pub acc_bits: u32,
    /// W: bits read by the final table.
    pub lut_bits: u32,
    /// One table of 2^W entries per channel.
    pub tables: Vec<Vec<i64>>,
    /// B of the encoding of the output (the next consumer's `acc_bits`, or the circuit's `output_bits`).
    pub output_encoding_bits: u32,
    /// Width of the output activations (unsigned).
    pub output_bits: u32,
    /// How the low bits are removed, lowest first ([`Requant::truncated_bits`] of them); set by
    /// the parameter choice. Affects cost and noise only, never the result.
    pub steps: Vec<TruncStep>,
}

/// One exact truncation step: removes `bits` (1 to 5) low bits of the accumulator ([`StepKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncStep {
    pub bits: u32,
    /// Whether the bootstrap whose output stays in the accumulator for later steps (a digit's
    /// table, an extended step's sign) uses the precise key.
    pub precise: bool,
}

/// How a step removes its bits (docs/circuit.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A digit of 2 to 4 bits: a sign bootstrap (cheap key) reads the bit above the digit only to
    /// clear it from the digit's input; a table (the step's key) returns the digit.
    Digit(u32),
    /// `digit` bits (0 to 4) and the bit above them: a sign bootstrap (the step's key) reads that
    /// bit and its output, at the accumulator's scale, removes it; then a table (cheap key)
    /// returns the digit, if any. A single bit is `Extended(0)`; 5 bits are `Extended(4)`; the last
    /// step before a split table is always extended, and its sign's output also serves the table.
    Extended(u32),
}

impl TruncStep {
    pub fn bootstraps(&self) -> u64 {
        if self.bits == 1 {
            1
        } else {
            2
        }
    }

    /// The step's kind; `keeps_bit` for the last step before a split table.
    pub fn kind(&self, keeps_bit: bool) -> StepKind {
        if keeps_bit || self.bits == 1 || self.bits == 5 {
            StepKind::Extended(self.bits - 1)
        } else {
            StepKind::Digit(self.bits)
        }
    }
}

impl Requant {
    /// Number of low bits removed by exact truncation.
    pub fn shift(&self) -> u32 {
        self.acc_bits - self.lut_bits
    }

    /// Whether the table is wider than one bootstrap reads, and so split (docs/circuit.md).
    pub fn split_table(&self) -> bool {
        self.lut_bits > DIRECT_TABLE_BITS
    }

    /// Bits the truncation steps remove: [`Requant::shift`], and a split table's lowest bit.
    pub fn truncated_bits(&self) -> u32 {
        self.shift() + u32::from(self.split_table())
    }

    /// Whether step `i` of `count` keeps its sign output: the last one before a split table.
    pub fn step_keeps_bit(&self, i: usize, count: usize) -> bool {
        self.split_table() && i + 1 == count
    }

    /// The kind of each of `steps` in this layer (the last one keeps its bit before a split table).
    pub fn step_kinds(&self, steps: &[TruncStep]) -> Vec<StepKind> {
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| s.kind(self.step_keeps_bit(i, steps.len())))
            .collect()
    }

    /// Bootstraps of the table itself: one, or two for a split table (its halves).
    pub fn table_pbs_per_activation(&self) -> u64 {
        if self.split_table() {
            2
        } else {
            1
        }
    }

    /// Bootstraps per activation: the truncation steps' plus the table's.
    pub fn pbs_per_activation(&self) -> u64 {
        self.truncation_pbs_per_activation() + self.table_pbs_per_activation()
    }

    /// Bootstraps of the whole layer.
    pub fn bootstraps(&self) -> u64 {
        self.shape.len() as u64 * self.pbs_per_activation()
    }

    /// Bootstraps per activation spent on truncation.
    pub fn truncation_pbs_per_activation(&self) -> u64 {
        self.steps.iter().map(TruncStep::bootstraps).sum()
    }

    /// Relative cost of one activation in stock bootstraps.
    pub fn relative_cost(&self, params: &FheParams) -> f64 {
        let precise = params.relative_pbs_cost(Bootstrap::Precise);
        relative_steps_cost(&self.steps, params) + precise * self.table_pbs_per_activation() as f64
    }

    /// The cost model's estimate of this layer's encrypted time on 2 cores, in seconds.
    pub fn estimated_seconds(&self, params: &FheParams) -> f64 {
        FheParams::estimated_seconds(self.shape.len() as f64 * self.relative_cost(params))
    }
}

/// Relative cost of truncation steps in stock bootstraps.
pub fn relative_steps_cost(steps: &[TruncStep], params: &FheParams) -> f64 {
    let cost = |precise| params.relative_pbs_cost(if precise { Bootstrap::Precise } else { Bootstrap::Cheap });
    steps
        .iter()
        .map(|st| cost(st.precise) + if st.bits > 1 { cost(false) } else { 0.0 })
        .sum()
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

/// A layer; layer i reads earlier tensors and produces tensor i + 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Layer {
    Linear(Linear),
    /// Reads tensor i, the output of the linear layer before it.
    Requant(Requant),
}

impl Layer {
    /// The tensors layer `index` reads.
    pub fn inputs(&self, index: usize) -> Vec<usize> {
        match self {
            Layer::Linear(l) => std::iter::once(l.input)
                .chain(l.residual.as_ref().map(|r| r.from))
                .collect(),
            Layer::Requant(_) => vec![index],
        }
    }

    pub fn output_shape(&self) -> Shape {
        match self {
            Layer::Linear(l) => l.out_shape,
            Layer::Requant(r) => r.shape,
        }
    }
}

/// How the client reads the decrypted output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Outputs are signed integers in [-2^bits, 2^bits), encoded with `Delta = 2^(63 - bits)`.
    pub bits: u32,
    /// Multiply an output by this to get the float logit.
    pub scale: f64,
    pub classes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    pub version: u32,
    pub name: String,
    pub input: InputSpec,
    pub layers: Vec<Layer>,
    pub output: OutputSpec,
    /// The cheapest parameter set that runs every bootstrap at p-fail <= 2^-64; None if none does.
    pub params: Option<FheParams>,
}

impl Circuit {
    pub fn requants(&self) -> impl Iterator<Item = &Requant> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Requant(r) => Some(r),
            Layer::Linear(_) => None,
        })
    }

    /// Relative cost of the circuit's bootstraps, in units of one stock 2^23 x 1 bootstrap.
    pub fn relative_cost(&self, params: &FheParams) -> f64 {
        self.requants()
            .map(|r| r.shape.len() as f64 * r.relative_cost(params))
            .sum()
    }

    /// The most ciphertexts the encrypted evaluation holds at once, and the layer that holds them:
    /// while layer i runs, every tensor read at or after i, a copy of its input when a later
    /// layer reads that too, and the output of a linear layer (a requant writes its table
    /// outputs over its accumulators).
    pub fn peak_live_ciphertexts(&self) -> (usize, usize) {
        let last_uses = self.last_uses();
        let len = |t: usize| self.tensor_shape(t).map_or(0, |s| s.len());
        (0..self.layers.len())
            .map(|i| {
                let live: usize = (0..=i).filter(|&t| last_uses[t] >= i).map(len).sum();
                let first = self.layers[i].inputs(i)[0];
                let copy = if last_uses[first] > i { len(first) } else { 0 };
                let output = match self.layers[i] {
                    Layer::Linear(_) => len(i + 1),
                    Layer::Requant(_) => 0,
                };
                (live + copy + output, i)
            })
            .max()
            .unwrap_or((len(0), 0))
    }

    /// Shape of tensor `t` (0: the input, i + 1: the output of layer i).
    pub fn tensor_shape(&self, t: usize) -> Option<Shape> {
        match t {
            0 => Some(self.input.shape),
            _ => self.layers.get(t - 1).map(Layer::output_shape),
        }
    }

    /// For every tensor, the last layer that reads it (the output tensor: `layers.len()`); a
    /// deferred residual is read by the requant after its linear layer.
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = self.direct_last_uses();
        for (i, deferred) in self.deferred_residuals().into_iter().enumerate() {
            if let Some(r) = deferred {
                last[r.from] = last[r.from].max(i + 1);
            }
        }
        last
    }

    fn direct_last_uses(&self) -> Vec<usize> {
        let mut last = vec![0; self.layers.len() + 1];
        for (i, layer) in self.layers.iter().enumerate() {
            for t in layer.inputs(i) {
                last[t] = i;
            }
        }
        last[self.layers.len()] = self.layers.len();
        last
    }

    /// For every layer i, the residual of linear layer i when the encrypted evaluation adds it
    /// inside the truncation of the requant that follows (the only reader of the layer's output)
    /// rather than in the linear layer: the same integers, with less noise (docs/circuit.md).
    pub fn deferred_residuals(&self) -> Vec<Option<&Residual>> {
        let last = self.direct_last_uses();
        (0..self.layers.len())
            .map(|i| match (&self.layers[i], self.layers.get(i + 1)) {
                (Layer::Linear(l), Some(Layer::Requant(_))) if last[i + 1] == i + 1 => l.residual.as_ref(),
                _ => None,
            })
            .collect()
    }

    /// The encoding (B of `Delta = 2^(63 - B)`) of every tensor. A requant reads its accumulator
    /// with its `acc_bits`; the output is decrypted with `output.bits`; a deferred residual needs
    /// `acc_bits` less its gains' trailing zeros; a tensor read by several layers takes the largest
    /// width they need, and a reader needing fewer bits multiplies it by 2^(difference) (exact,
    /// since it only drops high bits the reader's window does not hold).
    pub fn tensor_encodings(&self) -> Vec<u32> {
        let n = self.layers.len();
        let mut enc = vec![0u32; n + 1];
        enc[n] = self.output.bits;
        let deferred = self.deferred_residuals();
        for i in (0..n).rev() {
            let (t, needs) = match &self.layers[i] {
                Layer::Requant(r) => (i, r.acc_bits),
                Layer::Linear(l) => (l.input, enc[i + 1]),
            };
            enc[t] = enc[t].max(needs);
            if let Layer::Linear(Linear { residual: Some(r), .. }) = &self.layers[i] {
                let need = match deferred[i] {
                    Some(_) => needs.saturating_sub(r.gain_trailing_zeros(needs)).max(1),
                    None => needs,
                };
                enc[r.from] = enc[r.from].max(need);
            }
        }
        enc
    }

    /// Total bootstraps, and how many of them are truncation steps.
    pub fn pbs_counts(&self) -> (u64, u64) {
        self.requants().fold((0, 0), |(all, trunc), r| {
            let n = r.shape.len() as u64;
            (all + r.bootstraps(), trunc + n * r.truncation_pbs_per_activation())
        })
    }

    /// The parameters for encrypted use, or the compiler's refusal naming the layer and widths.
    pub fn fhe_params(&self) -> crate::Result<FheParams> {
        match self.params {
            Some(p) => Ok(p),
            None => crate::compile::choose_params(&mut self.clone()),
        }
    }

    /// Stable 16-byte identifier: a hash of the serialised circuit.
    pub fn id(&self) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let bytes = bincode::serialize(self).expect("a circuit always serialises");
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_multipliers_add_up_to_the_gain() {
        let steps: Vec<TruncStep> = [3, 1, 4]
            .iter()
            .map(|&bits| TruncStep { bits, precise: false })
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
