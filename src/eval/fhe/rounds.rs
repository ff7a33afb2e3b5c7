//! The rounds of bootstraps of a table layer, backend-neutral: each truncation step in turn, then
//! the table, every bootstrap of a step or table one round. The CPU [`Engine`] runs a round per
//! batch and thread, the GPU engine a round per layer.

use indicatif::ProgressBar;
use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

use super::luts::{LayerLuts, Luts, SplitLuts, StepLuts};
use super::primitives::{batch_size, big_lwe_size, subtract, Engine};
use super::Ciphertexts;
use crate::circuit::{Requant, Residual};
use crate::params::{native_modulus, Bootstrap};

/// A round of bootstraps: big-key ciphertexts, the accumulator of each, the key; returns the
/// outputs in the same layout. The CPU runs a batch per thread, the GPU a whole layer.
pub trait Round: FnMut(&[u64], Luts, Bootstrap) -> Vec<u64> {}

impl<F: FnMut(&[u64], Luts, Bootstrap) -> Vec<u64>> Round for F {}

/// One truncation step of every accumulator in `acc` (big-key ciphertexts); `inputs`, as long as
/// `acc`, is working space. Returns the sign outputs when the step keeps them for a split table.
pub(super) fn step_rounds(
    luts: &StepLuts,
    held: u32,
    acc: &mut [u64],
    inputs: &mut [u64],
    round: &mut impl Round,
) -> Option<Vec<u64>> {
    let (lut, which) = luts.sign();
    let size = big_lwe_size(lut);
    for (ct, input) in acc.chunks(size).zip(inputs.chunks_mut(size)) {
        luts.sign_input(ct, input, held);
    }
    let out = round(inputs, Luts::Same(lut), which);
    for ((ct, input), o) in acc.chunks_mut(size).zip(inputs.chunks_mut(size)).zip(out.chunks(size)) {
        luts.after_sign(ct, input, o, held);
    }
    if let Some((lut, which)) = luts.digit_table() {
        subtract(acc, &round(inputs, Luts::Same(lut), which));
    }
    luts.keeps_bit().then_some(out)
}

/// A split table (activations `first..` of a layer with `per_channel` per channel) of every
/// accumulator in `acc`, written over it: the low half read from it, plus the signed half read
/// with the last step's kept sign output `kept` at the top, both on key `key`.
#[allow(clippy::too_many_arguments)]
pub(super) fn split_table_rounds(
    split: &SplitLuts,
    key: Bootstrap,
    acc: &mut [u64],
    inputs: &mut [u64],
    first: usize,
    per_channel: usize,
    kept: &[u64],
    round: &mut impl Round,
) {
    let by_channel = |tables| Luts::ByChannel {
        tables,
        first,
        per_channel,
    };
    let mut out = round(acc, by_channel(&split.low), key);
    let size = big_lwe_size(&split.low[0]);
    for ((ct, k), input) in acc.chunks(size).zip(kept.chunks(size)).zip(inputs.chunks_mut(size)) {
        split.signed_input(ct, k, input);
    }
    let signed = round(inputs, by_channel(&split.signed), key);
    for (o, s) in out.iter_mut().zip(&signed) {
        *o = o.wrapping_add(*s);
    }
    acc.copy_from_slice(&out);
}

/// A residual tensor added inside a requant's truncation, stage by stage (before each step, then
/// before the table): [`crate::circuit::Residual::stage_multipliers`].
pub struct DeferredAdd<'a> {
    values: &'a [u64],
    multipliers: Vec<Vec<u64>>,
    per_channel: usize,
}

impl<'a> DeferredAdd<'a> {
    /// `residual` added inside `requant`'s planned steps; `values` are its ciphertexts, encoded
    /// with `residual_bits`.
    pub fn new(residual: &Residual, requant: &Requant, values: &'a Ciphertexts, residual_bits: u32) -> Self {
        DeferredAdd {
            values: values.as_ref(),
            multipliers: residual.stage_multipliers(requant.acc_bits, &requant.steps, residual_bits),
            per_channel: requant.shape.per_channel(),
        }
    }

    /// Adds stage `stage`'s part of the residual to accumulator `index`.
    pub fn add(&self, stage: usize, index: usize, ct: &mut [u64]) {
        let factor = self.multipliers[stage][index / self.per_channel];
        if factor != 0 {
            let size = ct.len();
            for (c, r) in ct.iter_mut().zip(&self.values[index * size..(index + 1) * size]) {
                *c = c.wrapping_add(r.wrapping_mul(factor));
            }
        }
    }
}

/// Runs the bootstraps of a requant layer (adding a deferred residual along the way). The CPU
/// [`Engine`] is one; a GPU backend is another.
pub trait Bootstrapper {
    /// Requant activations `first..` of `layer` (all of them, or a process's slice), held in
    /// `input`.
    fn requant(
        &self,
        layer: &Requant,
        input: Ciphertexts,
        first: usize,
        residual: Option<&DeferredAdd>,
        progress: Option<&ProgressBar>,
    ) -> Ciphertexts;
}

impl Bootstrapper for Engine<'_> {
    fn requant(
        &self,
        layer: &Requant,
        input: Ciphertexts,
        first: usize,
        residual: Option<&DeferredAdd>,
        progress: Option<&ProgressBar>,
    ) -> Ciphertexts {
        let size = input.lwe_size().0;
        let luts = LayerLuts::new(&self.key.params, layer);
        // Each table output replaces its accumulator: the layer holds one tensor, not two.
        let mut acc = input.into_container();
        let batch = batch_size(acc.len() / size, rayon::current_num_threads());
        acc.par_chunks_mut(size * batch).enumerate().for_each_init(
            || self.scratch(),
            |scratch, (k, chunk)| {
                requant_rounds(
                    layer,
                    &luts,
                    chunk,
                    first + k * batch,
                    residual,
                    &mut |inputs, l, which| {
                        let out = self.bootstrap_batch(scratch, inputs, l, which);
                        if let Some(bar) = progress {
                            bar.inc((inputs.len() / size) as u64);
                        }
                        out
                    },
                );
            },
        );
        LweCiphertextList::from_container(acc, LweSize(size), native_modulus())
    }
}

/// Requant layer `layer` (accumulators `luts`) on the accumulators `acc`, activations `first..` of
/// the layer, written over them: each truncation step in turn (the deferred residual added stage
/// by stage), then the table, every bootstrap of a step or table one round.
pub fn requant_rounds(
    layer: &Requant,
    luts: &LayerLuts,
    acc: &mut [u64],
    first: usize,
    residual: Option<&DeferredAdd>,
    round: &mut impl Round,
) {
    let mut inputs = vec![0u64; acc.len()];
    let size = luts.big_lwe_size();
    let add_residual = |acc: &mut [u64], stage: usize| {
        if let Some(r) = residual {
            for (j, ct) in acc.chunks_mut(size).enumerate() {
                r.add(stage, first + j, ct);
            }
        }
    };
    let mut kept = None;
    for (stage, (held, step_luts)) in luts.steps.iter().enumerate() {
        add_residual(acc, stage);
        kept = step_rounds(step_luts, *held, acc, &mut inputs, round);
    }
    add_residual(acc, luts.steps.len());
    let per_channel = layer.shape.per_channel();
    match &luts.split {
        Some(split) => {
            let kept = kept.expect("a split table's last step keeps its sign outputs");
            split_table_rounds(
                split,
                layer.table_key,
                acc,
                &mut inputs,
                first,
                per_channel,
                &kept,
                round,
            );
        }
        None => {
            let tables = Luts::ByChannel {
                tables: &luts.tables,
                first,
                per_channel,
            };
            let out = round(acc, tables, layer.table_key);
            acc.copy_from_slice(&out);
        }
    }
}
