//! Lookup tables as GLWE accumulators: each truncation step's, each channel's table, a split
//! table's halves, and the plaintext work around each step's bootstraps.

use tfhe::core_crypto::prelude::*;

use super::primitives::{big_lwe_size, shift_left, subtract};
use crate::circuit::{Requant, StepKind, StepRule, TruncStep};
use crate::encoding::{delta, encode, TORUS_QUARTER};
use crate::eval::clear::table_output;
use crate::params::{native_modulus, Bootstrap, FheParams};

/// The accumulator each ciphertext of a round of bootstraps is rotated with.
#[derive(Clone, Copy)]
pub enum Luts<'a> {
    /// The same for every ciphertext.
    Same(&'a GlweCiphertextOwned<u64>),
    /// Ciphertext j of the round, activation `first + j` of its layer, reads its channel's.
    ByChannel {
        tables: &'a [GlweCiphertextOwned<u64>],
        first: usize,
        per_channel: usize,
    },
}

impl<'a> Luts<'a> {
    /// The accumulator of ciphertext `j` of the round.
    pub fn of(&self, j: usize) -> &'a GlweCiphertextOwned<u64> {
        match *self {
            Luts::Same(lut) => lut,
            Luts::ByChannel {
                tables,
                first,
                per_channel,
            } => &tables[(first + j) / per_channel],
        }
    }
}

/// The accumulators one truncation step needs (built once per layer and step), and the plaintext
/// work around its bootstraps; the CPU [`Engine`] and the GPU engine both run steps through these.
pub struct StepLuts {
    rule: StepRule,
    sign: GlweCiphertextOwned<u64>,
    digit: Option<GlweCiphertextOwned<u64>>,
}

/// A requant layer's accumulators, built once per layer: each truncation step's, with the bits
/// held before it, and each output channel's table (direct), or its split table.
pub struct LayerLuts {
    pub steps: Vec<(u32, StepLuts)>,
    pub tables: Vec<GlweCiphertextOwned<u64>>,
    pub split: Option<SplitLuts>,
}

/// A split table of W bits (docs/circuit.md): with t = 2u + c, T[t] = M[u] + (-1)^c D[u], M and D
/// the half sum and half difference of the table's even and odd entries. The layer's last
/// truncation step (extended) reads c with its sign bootstrap and removes it, and the engine keeps
/// that output; M is read from what remains (u under the padding bit p), D from the same with c
/// moved to the top (p xor c), whose negacyclic bootstrap supplies the sign. Both are direct reads
/// of W - 1 bits, so the table outputs (-1)^p T[t mod 2^W], as a direct table does.
pub struct SplitLuts {
    lut_bits: u32,
    /// Half the weight of c in the accumulator before the last step.
    half: u64,
    /// 2D per channel (one more output bit), read with c at the top.
    pub signed: Vec<GlweCiphertextOwned<u64>>,
    /// 2M per channel, read without c.
    pub low: Vec<GlweCiphertextOwned<u64>>,
}

impl SplitLuts {
    /// The split table of `layer`, whose last step `step` starts with `held` bits.
    fn new(params: &FheParams, layer: &Requant, step: TruncStep, held: u32) -> SplitLuts {
        let half = 1usize << (layer.lut_bits - 1);
        let halves = |f: fn(i64, i64) -> i64| {
            let out = layer.output_encoding_bits + 1;
            layer
                .tables
                .iter()
                .map(|t| {
                    let h: Vec<i64> = (0..half).map(|u| f(t[2 * u], t[2 * u + 1])).collect();
                    table_accumulator(params.glwe_shape(layer.table_key), &h, out)
                })
                .collect()
        };
        SplitLuts {
            lut_bits: layer.lut_bits,
            half: half_weight(held, step.bits - 1),
            signed: halves(|a, b| a - b),
            low: halves(|a, b| a + b),
        }
    }

    /// What the signed half reads: `ct` (u under p) plus c at the top, from the last step's kept
    /// sign output (-/+ half the unit for c = 0/1).
    pub fn signed_input(&self, ct: &[u64], kept: &[u64], input: &mut [u64]) {
        for ((d, c), k) in input.iter_mut().zip(ct).zip(kept) {
            *d = c.wrapping_add(k << self.lut_bits);
        }
        let body = input.len() - 1;
        input[body] = input[body].wrapping_add(self.half << self.lut_bits);
    }
}

/// A lookup accumulator of GLWE shape `(k, N)`: coefficient j of the rotated table answers the
/// phases around j / 2N; `value(t)` is the already encoded output for table index t in
/// [0, 2^(bits + 1)).
pub fn accumulator((k, n): (usize, usize), bits: u32, value: impl Fn(usize) -> u64) -> GlweCiphertextOwned<u64> {
    let box_size = n >> bits;
    let mut acc = GlweCiphertext::new(0, GlweSize(k + 1), PolynomialSize(n), native_modulus());
    for (j, coef) in acc.get_mut_body().as_mut().iter_mut().enumerate() {
        *coef = value((j + box_size / 2) / box_size);
    }
    acc
}

/// Final lookup of a requant for a key of GLWE shape `shape`: table `table`, output encoded with
/// `output_bits`.
pub fn table_accumulator(shape: (usize, usize), table: &[i64], output_bits: u32) -> GlweCiphertextOwned<u64> {
    let lut_bits = table.len().trailing_zeros();
    accumulator(shape, lut_bits, |t| {
        encode(table_output(table, t % (2 * table.len())), output_bits)
    })
}

/// Constant -`half`: returns -`half` or +`half` for a top bit 0 or 1.
fn sign_accumulator(shape: (usize, usize), half: u64) -> GlweCiphertextOwned<u64> {
    accumulator(shape, 0, |_| half.wrapping_neg())
}

/// Returns -1/4 or +1/4 for the bit above a digit.
fn quarter_sign(shape: (usize, usize)) -> GlweCiphertextOwned<u64> {
    sign_accumulator(shape, TORUS_QUARTER)
}

/// Half the weight, in an accumulator holding `held` bits, of the bit above `digit_bits` low bits.
fn half_weight(held: u32, digit_bits: u32) -> u64 {
    (delta(held) << digit_bits) / 2
}

/// The table of a `bits`-bit digit: the digit d times Delta_held; index 2^bits (the negacyclic
/// boundary) is unreachable.
fn digit_accumulator(shape: (usize, usize), held: u32, bits: u32) -> GlweCiphertextOwned<u64> {
    let digits = 1usize << bits;
    accumulator(shape, bits, |t| {
        if t < digits {
            (t as u64).wrapping_mul(delta(held))
        } else {
            0
        }
    })
}

/// `input` holds a centred digit of `bits` bits under the bit above it at the top of the torus;
/// `out`, the quarter-sign bootstrap of it, returned -/+ 1/4 for that bit 0 or 1. Clears the bit
/// and the centring, leaving the digit with a zero padding bit.
fn clear_bit_above(input: &mut [u64], out: &[u64], bits: u32) {
    subtract(input, out);
    let body = input.len() - 1;
    input[body] = input[body].wrapping_sub(TORUS_QUARTER.wrapping_add(TORUS_QUARTER >> bits));
}

impl StepLuts {
    /// Accumulators for a step that runs as `rule` while `held` bits are held.
    pub fn new(params: &FheParams, held: u32, rule: StepRule) -> StepLuts {
        let sign_shape = params.glwe_shape(rule.sign_key);
        let sign = match rule.kind {
            StepKind::Digit(_) => quarter_sign(sign_shape),
            StepKind::Extended(bits) => sign_accumulator(sign_shape, half_weight(held, bits)),
        };
        let digit = rule
            .digit_key
            .map(|key| digit_accumulator(params.glwe_shape(key), held, rule.digit_bits()));
        StepLuts { rule, sign, digit }
    }

    /// Whether the step keeps its sign output for a split table.
    pub fn keeps_bit(&self) -> bool {
        self.rule.keeps_bit
    }

    /// The step's sign bootstrap: its accumulator and key.
    pub fn sign(&self) -> (&GlweCiphertextOwned<u64>, Bootstrap) {
        (&self.sign, self.rule.sign_key)
    }

    /// The step's digit table, if it has one: its accumulator and key.
    pub fn digit_table(&self) -> Option<(&GlweCiphertextOwned<u64>, Bootstrap)> {
        self.digit.as_ref().zip(self.rule.digit_key)
    }

    /// Writes into `input` what the sign bootstrap reads from accumulator `ct` (`held` bits): the
    /// digit (none for a single bit) and the bit above it at the top of the torus, centred in their
    /// slots (phase 1/4 or 3/4 for a single bit).
    pub fn sign_input(&self, ct: &[u64], input: &mut [u64], held: u32) {
        let bits = self.rule.digit_bits();
        shift_left(ct, input, held - bits);
        let body = input.len() - 1;
        input[body] = input[body].wrapping_add(TORUS_QUARTER >> bits);
    }

    /// After the sign bootstrap returned `out`: a plain digit's input loses the bit above the
    /// digit; an extended step removes that bit from `ct` (which ends a single-bit step) and
    /// writes the digit's input, the digit now under a zero bit.
    pub fn after_sign(&self, ct: &mut [u64], input: &mut [u64], out: &[u64], held: u32) {
        match self.rule.kind {
            StepKind::Digit(bits) => clear_bit_above(input, out, bits),
            StepKind::Extended(bits) => {
                subtract(ct, out);
                let body = ct.len() - 1;
                ct[body] = ct[body].wrapping_sub(half_weight(held, bits));
                if bits > 0 {
                    shift_left(ct, input, held - bits);
                }
            }
        }
    }
}

impl LayerLuts {
    /// Words of a big-key ciphertext, from the layer's tables (every layer has one per channel).
    pub(super) fn big_lwe_size(&self) -> usize {
        let lut = self
            .tables
            .first()
            .or_else(|| self.split.as_ref().and_then(|s| s.low.first()));
        big_lwe_size(lut.expect("a requant layer has tables"))
    }

    pub fn new(params: &FheParams, layer: &Requant) -> LayerLuts {
        let mut held = layer.acc_bits;
        let steps: Vec<(u32, StepLuts)> = layer
            .steps
            .iter()
            .zip(layer.step_rules(&layer.steps))
            .map(|(step, rule)| {
                let before = held;
                held -= step.bits;
                (before, StepLuts::new(params, before, rule))
            })
            .collect();
        if layer.split_table() {
            let (step, &(before, _)) = layer
                .steps
                .last()
                .zip(steps.last())
                .expect("a split table's layer has a truncation step");
            return LayerLuts {
                split: Some(SplitLuts::new(params, layer, *step, before)),
                steps,
                tables: Vec::new(),
            };
        }
        let tables = layer
            .tables
            .iter()
            .map(|t| table_accumulator(params.glwe_shape(layer.table_key), t, layer.output_encoding_bits))
            .collect();
        LayerLuts {
            steps,
            tables,
            split: None,
        }
    }
}
