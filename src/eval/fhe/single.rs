//! One ciphertext at a time through the same rounds as a layer: what the truncation edge tests
//! and the benchmarks drive.

use tfhe::core_crypto::prelude::*;

use super::luts::{table_accumulator, Luts, SplitLuts, StepLuts};
use super::primitives::{Engine, Scratch};
use super::rounds::{split_table_rounds, step_rounds};
use crate::circuit::TruncStep;
use crate::params::Bootstrap;

impl Engine<'_> {
    /// Accumulators for `step` (of a layer with a direct table) while `held` bits are held.
    pub fn step_luts(&self, held: u32, step: TruncStep) -> StepLuts {
        StepLuts::new(&self.key.params, held, step.rule(false))
    }

    /// One exact truncation step of one ciphertext: `ct` holds m with `held` bits (Delta =
    /// 2^(63 - held)); afterwards it holds m >> step.bits with `held - step.bits` bits. `luts` is
    /// [`Engine::step_luts`] (or a layer's). Before a split table, the sign bootstrap's output stays
    /// in the scratch for [`Engine::split_lookup`].
    pub fn truncation_step(&self, scratch: &mut Scratch, ct: &mut [u64], held: u32, luts: &StepLuts) {
        let mut input = vec![0u64; ct.len()];
        let kept = step_rounds(luts, held, ct, &mut input, &mut |inputs, l, which| {
            self.bootstrap_batch(scratch, inputs, l, which)
        });
        scratch.kept = kept;
    }

    /// Final lookup of a requant on the precise key: table `table`, output encoded with
    /// `output_bits`.
    pub fn table_accumulator(&self, table: &[i64], output_bits: u32) -> GlweCiphertextOwned<u64> {
        table_accumulator(self.key.params.glwe_shape(Bootstrap::Precise), table, output_bits)
    }

    /// Bootstrap a ciphertext holding W bits through `lut` (precise key) into `out`.
    pub fn lookup(&self, scratch: &mut Scratch, ct: &[u64], lut: &GlweCiphertextOwned<u64>, out: &mut [u64]) {
        out.copy_from_slice(&self.bootstrap_batch(scratch, ct, Luts::Same(lut), Bootstrap::Precise));
    }

    /// A split table of channel `channel` after the last [`Engine::truncation_step`] kept its sign
    /// output, into `out`.
    pub fn split_lookup(&self, scratch: &mut Scratch, ct: &[u64], split: &SplitLuts, channel: usize, out: &mut [u64]) {
        let kept = scratch
            .kept
            .take()
            .expect("the last truncation step keeps its sign output");
        out.copy_from_slice(ct);
        let mut input = vec![0u64; ct.len()];
        split_table_rounds(
            split,
            Bootstrap::Precise,
            out,
            &mut input,
            channel,
            1,
            &kept,
            &mut |inputs, l, which| self.bootstrap_batch(scratch, inputs, l, which),
        );
    }
}
