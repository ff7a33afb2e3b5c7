//! The integer circuit: the closed set of operations that the clear and the FHE evaluators both run.
//!
//! Values are integers. A tensor flowing between two [`Requant`]s (or from the input, or to the
//! output) is held by ciphertexts with one common encoding `Delta = 2^(63 - B)`, where `B` is the
//! `acc_bits` of the [`Requant`] that consumes it (or `output_bits`). Such a ciphertext holds its
//! value modulo `2^(B + 1)`; the clear evaluator reduces the same way, so the two agree for every
//! input, including values that leave their window.

use serde::{Deserialize, Serialize};

mod linear;
mod requant;

pub use linear::{window_output, Linear, LinearOp, Residual};
pub use requant::{Requant, StepKind, StepRule, TruncStep, DIRECT_TABLE_BITS, MAX_FHE_TABLE_BITS};

use crate::error::{Error, Result};
use crate::params::FheParams;

/// Version of the serialised circuit (and of the compiler's output semantics). 3: 5-bit tables
/// are split tables, whose index wraps modulo 2^5 outside the window. 4: residual gains keep
/// their 6 highest bits (networks without residual adds compile to the same integers as in 3).
/// 5: a split table's last truncation step also removes the table's lowest bit, and the table
/// outputs what a direct one would (the sign of the padding bit included). 6: residual gains are
/// at most 2^9 (again, networks without residual adds compile to the same integers). 7: each
/// table layer names the key of its table's bootstraps (the same integers).
pub const CIRCUIT_VERSION: u32 = 7;

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
    /// Why `params` is None: the compiler's refusal, naming the layer and its widths. Derived
    /// from the rest, so not part of the serialised circuit or its id.
    #[serde(skip)]
    pub refusal: Option<String>,
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
    pub fn fhe_params(&self) -> Result<FheParams> {
        self.params.ok_or_else(|| {
            Error::Compile(
                self.refusal
                    .clone()
                    .unwrap_or_else(|| "the circuit has no parameter set for encrypted use".into()),
            )
        })
    }

    /// Whether the circuit is well formed: every layer reads earlier tensors of the shapes it
    /// expects, with weights, offsets and tables of the right sizes, and truncation steps (once
    /// planned) that remove exactly the bits the table does not read. The compiler checks it after
    /// every pass.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (i, layer) in self.layers.iter().enumerate() {
            let shape_of = |t: usize| {
                (t <= i)
                    .then(|| self.tensor_shape(t))
                    .flatten()
                    .ok_or_else(|| format!("layer {i} reads tensor {t}, which is not an earlier one"))
            };
            match layer {
                Layer::Linear(l) => {
                    // A dense layer reads its input flattened: only the length must agree.
                    let input = shape_of(l.input)?;
                    let fits = match l.op {
                        LinearOp::Dense => input.len() == l.in_shape.len(),
                        _ => input == l.in_shape,
                    };
                    if !fits {
                        return Err(format!("{} reads a tensor of another shape", l.name));
                    }
                    let channels = l.out_shape.channels;
                    let row = match l.op {
                        LinearOp::Conv2d { kernel, .. } => l.in_shape.channels * kernel * kernel,
                        LinearOp::Dense => l.in_shape.len(),
                        LinearOp::SumPool { .. } => 0,
                    };
                    if l.weights.len() != channels * row || l.offsets.len() != channels {
                        return Err(format!("{} has weights or offsets of the wrong size", l.name));
                    }
                    if let Some(r) = &l.residual {
                        if shape_of(r.from)? != l.out_shape || r.gains.len() != channels {
                            return Err(format!("{}'s residual does not have its shape", l.name));
                        }
                    }
                }
                Layer::Requant(r) => {
                    if i == 0 || shape_of(i)? != r.shape || !matches!(self.layers[i - 1], Layer::Linear(_)) {
                        return Err(format!("{} does not follow a linear layer of its shape", r.name));
                    }
                    let table_len = 1usize << r.lut_bits;
                    if r.acc_bits < r.lut_bits
                        || r.tables.len() != r.shape.channels
                        || r.tables.iter().any(|t| t.len() != table_len)
                    {
                        return Err(format!("{} has tables of the wrong size", r.name));
                    }
                    let removed: u32 = r.steps.iter().map(|s| s.bits).sum();
                    if !r.steps.is_empty() && removed != r.truncated_bits() {
                        return Err(format!(
                            "{}'s truncation steps remove {removed} bits, not {}",
                            r.name,
                            r.truncated_bits()
                        ));
                    }
                }
            }
        }
        match self.layers.last() {
            Some(Layer::Linear(l)) if l.out_shape.len() == self.output.classes.len() => Ok(()),
            _ => Err("the circuit does not end in a linear layer with one output per class".into()),
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
pub(crate) mod tests {
    use super::*;

    fn shape(channels: usize) -> Shape {
        Shape {
            channels,
            height: 1,
            width: 1,
        }
    }

    fn dense(name: &str, input: usize, ins: usize, outs: usize) -> Layer {
        Layer::Linear(Linear {
            name: name.into(),
            input,
            op: LinearOp::Dense,
            in_shape: shape(ins),
            out_shape: shape(outs),
            weights: vec![1; ins * outs],
            offsets: vec![0; outs],
            residual: None,
        })
    }

    /// Dense 2 -> 2, a table layer (B = 6, W = 4, two bits removed in one step), dense 2 -> 2.
    pub(crate) fn small_circuit() -> Circuit {
        Circuit {
            version: CIRCUIT_VERSION,
            name: "small".into(),
            input: InputSpec {
                shape: shape(2),
                bits: 4,
                encoding_bits: 6,
            },
            layers: vec![
                dense("fc1", 0, 2, 2),
                Layer::Requant(Requant {
                    name: "fc1".into(),
                    shape: shape(2),
                    acc_bits: 6,
                    lut_bits: 4,
                    tables: vec![vec![0; 16]; 2],
                    output_encoding_bits: 8,
                    output_bits: 4,
                    steps: vec![TruncStep {
                        bits: 2,
                        precise: false,
                        narrow: false,
                    }],
                    table_key: crate::params::Bootstrap::Precise,
                }),
                dense("fc2", 2, 2, 2),
            ],
            output: OutputSpec {
                bits: 8,
                scale: 1.0,
                classes: vec!["a".into(), "b".into()],
            },
            params: None,
            refusal: None,
        }
    }

    #[test]
    fn check_accepts_a_well_formed_circuit_and_names_what_is_wrong_in_others() {
        assert_eq!(small_circuit().check(), Ok(()));
        let broken = |edit: fn(&mut Circuit)| {
            let mut c = small_circuit();
            edit(&mut c);
            c.check().unwrap_err()
        };
        fn requant(c: &mut Circuit) -> &mut Requant {
            match &mut c.layers[1] {
                Layer::Requant(r) => r,
                Layer::Linear(_) => unreachable!("layer 1 is the table layer"),
            }
        }
        assert!(broken(|c| requant(c).tables[1].pop().map_or((), drop)).contains("tables of the wrong size"));
        assert!(broken(|c| requant(c).steps[0].bits = 3).contains("remove 3 bits, not 2"));
        assert!(broken(|c| c.layers[0] = dense("fc1", 1, 2, 2)).contains("not an earlier one"));
        assert!(broken(|c| c.layers[2] = dense("fc2", 2, 3, 2)).contains("fc2 reads a tensor of another shape"));
        assert!(broken(|c| c.output.classes.pop().map_or((), drop)).contains("one output per class"));
        assert!(broken(|c| c.layers.swap(0, 1)).contains("does not follow a linear layer"));
    }

    #[test]
    fn a_circuit_without_parameters_gives_the_compilers_refusal() {
        let mut c = small_circuit();
        c.refusal = Some("layer fc1 reaches p-fail 2^-10".into());
        assert_eq!(
            c.fhe_params().unwrap_err().to_string(),
            "compile: layer fc1 reaches p-fail 2^-10"
        );
        c.params = Some(FheParams::stock_2_2_with_pbs(12, 3));
        assert_eq!(c.fhe_params().unwrap(), FheParams::stock_2_2_with_pbs(12, 3));
    }
}
