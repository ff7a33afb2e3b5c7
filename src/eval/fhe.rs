//! The FHE evaluator: the circuit on LWE ciphertexts, with the evaluation key only.
//!
//! Linear layers are leveled integer sums of ciphertexts. A [`Requant`] first removes the low
//! `s` bits of each accumulator, lowest first, by exact steps (DESIGN 4b): a single bit costs one
//! sign bootstrap, a digit of 2 to 4 bits costs a sign bootstrap that clears the bit above it and a
//! table that returns it; then it bootstraps the remaining W bits through the channel's table (a
//! 5-bit table as a split table of three bootstraps, [`SplitLuts`]). A layer's activations run in
//! batches of [`BATCH`], spread over rayon's threads; each round of a batch's bootstraps walks the
//! keyswitch key and the bootstrap key once for the whole batch ([`keyswitch_batch`], tfhe's
//! batched blind rotation), so that each piece of key is used [`BATCH`] times while it is in cache.

use indicatif::ProgressBar;
use rayon::prelude::*;
use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use tfhe::core_crypto::fft_impl::fft64::math::fft::{Fft, FftView};
use tfhe::core_crypto::prelude::*;

use super::Tensors;
use crate::circuit::{Circuit, Layer, Linear, Requant, Residual, StepKind, TruncStep};
use crate::keys::{delta, encode, EvaluationKey};
use crate::params::{Bootstrap, FheParams};

pub type Ciphertexts = LweCiphertextListOwned<u64>;

/// Most activations one CPU thread takes through a requant layer together: each round of their
/// bootstraps reads every block of the keyswitch key and every GGSW of the bootstrap key once for
/// all of them (docs/benchmarks.md: 1.3 to 1.5 times the throughput of one at a time).
pub const BATCH: usize = 32;

/// The batch size for a layer of `count` activations on `threads` threads: at most [`BATCH`], and
/// as even as can be, so that every thread gets the same number of equal batches.
pub fn batch_size(count: usize, threads: usize) -> usize {
    let per_thread = count.div_ceil(threads.max(1) * BATCH);
    count.div_ceil(threads.max(1) * per_thread).max(1)
}

/// Per-thread buffers for a batch of up to [`BATCH`] keyswitches and bootstraps.
pub struct Scratch {
    /// The batch's small-key ciphertexts.
    small: Vec<u64>,
    /// The batch's GLWE accumulators.
    rotated: Vec<u64>,
    buffers: ComputationBuffers,
    /// The sign outputs the last [`Engine::truncation_step`] kept for a split table.
    kept: Option<Vec<u64>>,
}

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

/// tfhe's centred modulus switch of one ciphertext, computed once: the batched blind rotation reads
/// mask element i of every ciphertext at GGSW i, which tfhe's lazy switch would recompute by
/// walking the mask from its start.
struct SwitchedLwe {
    mask: Vec<usize>,
    body: usize,
    log_modulus: CiphertextModulusLog,
}

impl SwitchedLwe {
    fn new(ct: LweCiphertextView<'_, u64>, log_modulus: CiphertextModulusLog) -> Self {
        let lazy = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(ct, log_modulus);
        SwitchedLwe {
            mask: lazy.mask().collect(),
            body: lazy.body(),
            log_modulus,
        }
    }
}

impl ModulusSwitchedLweCiphertext<usize> for SwitchedLwe {
    fn log_modulus(&self) -> CiphertextModulusLog {
        self.log_modulus
    }

    fn lwe_dimension(&self) -> LweDimension {
        LweDimension(self.mask.len())
    }

    fn body(&self) -> usize {
        self.body
    }

    fn mask(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.mask.iter().copied()
    }
}

/// tfhe's keyswitch (`keyswitch_lwe_ciphertext`, native modulus: the same signed decomposition and
/// wrapping products, so the same result) of every big-key ciphertext in `inputs` into `outputs`,
/// with the loops turned inside out: each block of the key (one input coefficient, every level)
/// serves the whole batch while it is in cache, instead of the whole key streaming from memory
/// once per ciphertext.
pub fn keyswitch_batch(ksk: &LweKeyswitchKeyOwned<u64>, inputs: &[u64], outputs: &mut [u64]) {
    let big = ksk.input_key_lwe_dimension().to_lwe_size().0;
    let small = ksk.output_key_lwe_dimension().to_lwe_size().0;
    outputs.fill(0);
    for (out, input) in outputs.chunks_mut(small).zip(inputs.chunks(big)) {
        out[small - 1] = input[big - 1];
    }
    let decomposer = SignedDecomposer::<u64>::new(ksk.decomposition_base_log(), ksk.decomposition_level_count());
    for (coefficient, block) in ksk.iter().enumerate() {
        for (out, input) in outputs.chunks_mut(small).zip(inputs.chunks(big)) {
            for (level, digit) in block.iter().zip(decomposer.decompose(input[coefficient])) {
                slice_wrapping_sub_scalar_mul_assign(out, level.as_ref(), digit.value());
            }
        }
    }
}

/// The accumulators one truncation step needs (built once per layer and step), and the plaintext
/// work around its bootstraps; the CPU [`Engine`] and the GPU engine both run steps through these.
pub struct StepLuts {
    kind: StepKind,
    sign: GlweCiphertextOwned<u64>,
    digit: Option<GlweCiphertextOwned<u64>>,
    /// The last step before a split table: its sign output is kept for the table.
    keeps_bit: bool,
}

/// A requant layer's accumulators, built once per layer: each truncation step's, with the bits
/// held before it, and each output channel's table (direct), or its split table.
pub struct LayerLuts {
    pub steps: Vec<(TruncStep, u32, StepLuts)>,
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
                    table_accumulator(params, &h, out)
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

/// Words of a big-key ciphertext: what the bootstrap of accumulator `lut` extracts into.
fn big_lwe_size(lut: &GlweCiphertextOwned<u64>) -> usize {
    lut.glwe_size().to_glwe_dimension().0 * lut.polynomial_size().0 + 1
}

/// `input = ct * 2^shift`, coefficient-wise.
fn shift_left(ct: &[u64], input: &mut [u64], shift: u32) {
    for (d, s) in input.iter_mut().zip(ct) {
        *d = s << shift;
    }
}

/// The evaluation key with its FFT plan: what every bootstrap needs.
pub struct Engine<'k> {
    key: &'k EvaluationKey,
    fft: Fft,
}

fn native() -> CiphertextModulus<u64> {
    CiphertextModulus::new_native()
}

fn key_of(step: TruncStep) -> Bootstrap {
    if step.precise {
        Bootstrap::Precise
    } else {
        Bootstrap::Cheap
    }
}

impl<'k> Engine<'k> {
    pub fn new(key: &'k EvaluationKey) -> Self {
        Engine {
            key,
            fft: Fft::new(PolynomialSize(key.params.polynomial_size)),
        }
    }

    fn fft(&self) -> FftView<'_> {
        self.fft.as_view()
    }

    pub fn scratch(&self) -> Scratch {
        let p = self.key.params;
        let glwe_size = GlweSize(p.glwe_dimension + 1);
        let poly = PolynomialSize(p.polynomial_size);
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            batch_blind_rotate_assign_scratch::<u64>(glwe_size, poly, CiphertextCount(BATCH), self.fft())
                .unaligned_bytes_required(),
        );
        Scratch {
            small: vec![0; BATCH * (p.lwe_dimension + 1)],
            rotated: vec![0; BATCH * glwe_size.0 * poly.0],
            buffers,
            kept: None,
        }
    }

    /// Keyswitch, centred modulus switch, blind rotation with key `which` and sample extraction of
    /// the big-key ciphertexts `inputs` (at most [`BATCH`]), ciphertext j rotating `luts.of(j)`:
    /// the bootstrap outputs, in the same layout.
    pub fn bootstrap_batch(&self, scratch: &mut Scratch, inputs: &[u64], luts: Luts, which: Bootstrap) -> Vec<u64> {
        let p = &self.key.params;
        let big = p.big_lwe_dimension() + 1;
        let small = p.lwe_dimension + 1;
        let glwe_size = GlweSize(p.glwe_dimension + 1);
        let poly = PolynomialSize(p.polynomial_size);
        let glwe_len = glwe_size.0 * poly.0;
        let count = inputs.len() / big;
        assert!(count <= BATCH, "a batch holds at most {BATCH} ciphertexts, not {count}");
        let small_cts = &mut scratch.small[..count * small];
        keyswitch_batch(&self.key.keyswitch_key, inputs, small_cts);
        let log_modulus = CiphertextModulusLog(p.log2_modswitch_modulus());
        let switched: Vec<SwitchedLwe> = small_cts
            .chunks(small)
            .map(|ct| SwitchedLwe::new(LweCiphertext::from_container(ct, native()), log_modulus))
            .collect();
        let rotated = &mut scratch.rotated[..count * glwe_len];
        for (j, acc) in rotated.chunks_mut(glwe_len).enumerate() {
            acc.copy_from_slice(luts.of(j).as_ref());
        }
        self.key.bootstrap_key(which).as_view().batch_blind_rotate_assign(
            GlweCiphertextList::from_container(&mut *rotated, glwe_size, poly, native()),
            &switched,
            self.fft(),
            scratch.buffers.stack(),
        );
        let mut out = vec![0u64; inputs.len()];
        for (acc, o) in rotated.chunks(glwe_len).zip(out.chunks_mut(big)) {
            extract_lwe_sample_from_glwe_ciphertext(
                &GlweCiphertext::from_container(acc, poly, native()),
                &mut LweCiphertext::from_container(o, native()),
                MonomialDegree(0),
            );
        }
        out
    }

    /// Accumulators for `step` (of a layer with a direct table) while `held` bits are held.
    pub fn step_luts(&self, held: u32, step: TruncStep) -> StepLuts {
        StepLuts::new(&self.key.params, held, step, false)
    }

    /// One exact truncation step of one ciphertext: `ct` holds m with `held` bits (Delta =
    /// 2^(63 - held)); afterwards it holds m >> step.bits with `held - step.bits` bits. `luts` is
    /// [`Engine::step_luts`] (or a layer's). Before a split table, the sign bootstrap's output stays
    /// in the scratch for [`Engine::split_lookup`].
    pub fn truncation_step(&self, scratch: &mut Scratch, ct: &mut [u64], held: u32, step: TruncStep, luts: &StepLuts) {
        let mut input = vec![0u64; ct.len()];
        let kept = step_rounds(luts, step, held, ct, &mut input, &mut |inputs, l, which| {
            self.bootstrap_batch(scratch, inputs, l, which)
        });
        scratch.kept = kept;
    }

    /// Final lookup of a requant: table `table`, output encoded with `output_bits`.
    pub fn table_accumulator(&self, table: &[i64], output_bits: u32) -> GlweCiphertextOwned<u64> {
        table_accumulator(&self.key.params, table, output_bits)
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
        split_table_rounds(split, out, &mut input, channel, 1, &kept, &mut |inputs, l, which| {
            self.bootstrap_batch(scratch, inputs, l, which)
        });
    }
}

/// A round of bootstraps: big-key ciphertexts, the accumulator of each, the key; returns the
/// outputs in the same layout. The CPU runs a batch per thread, the GPU a whole layer.
pub trait Round: FnMut(&[u64], Luts, Bootstrap) -> Vec<u64> {}

impl<F: FnMut(&[u64], Luts, Bootstrap) -> Vec<u64>> Round for F {}

/// One truncation step of every accumulator in `acc` (big-key ciphertexts); `inputs`, as long as
/// `acc`, is working space. Returns the sign outputs when the step keeps them for a split table.
fn step_rounds(
    luts: &StepLuts,
    step: TruncStep,
    held: u32,
    acc: &mut [u64],
    inputs: &mut [u64],
    round: &mut impl Round,
) -> Option<Vec<u64>> {
    let size = big_lwe_size(&luts.sign);
    for (ct, input) in acc.chunks(size).zip(inputs.chunks_mut(size)) {
        luts.first_input(ct, input, held);
    }
    let (lut, which) = luts.first(step);
    let out = round(inputs, Luts::Same(lut), which);
    for ((ct, input), o) in acc.chunks_mut(size).zip(inputs.chunks_mut(size)).zip(out.chunks(size)) {
        luts.after_first(ct, input, o, held);
    }
    if let Some((lut, which)) = luts.second(step) {
        subtract(acc, &round(inputs, Luts::Same(lut), which));
    }
    luts.keeps_bit.then_some(out)
}

/// A split table (activations `first..` of a layer with `per_channel` per channel) of every
/// accumulator in `acc`, written over it: the low half read from it, plus the signed half read
/// with the last step's kept sign output `kept` at the top.
fn split_table_rounds(
    split: &SplitLuts,
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
    let mut out = round(acc, by_channel(&split.low), Bootstrap::Precise);
    let size = big_lwe_size(&split.low[0]);
    for ((ct, k), input) in acc.chunks(size).zip(kept.chunks(size)).zip(inputs.chunks_mut(size)) {
        split.signed_input(ct, k, input);
    }
    let signed = round(inputs, by_channel(&split.signed), Bootstrap::Precise);
    for (o, s) in out.iter_mut().zip(&signed) {
        *o = o.wrapping_add(*s);
    }
    acc.copy_from_slice(&out);
}

/// A lookup accumulator: coefficient j of the rotated table answers the phases around
/// j / 2N; `value(t)` is the already encoded output for table index t in [0, 2^(bits + 1)).
pub fn accumulator(params: &FheParams, bits: u32, value: impl Fn(usize) -> u64) -> GlweCiphertextOwned<u64> {
    let n = params.polynomial_size;
    let box_size = n >> bits;
    let mut acc = GlweCiphertext::new(0, GlweSize(params.glwe_dimension + 1), PolynomialSize(n), native());
    for (j, coef) in acc.get_mut_body().as_mut().iter_mut().enumerate() {
        *coef = value((j + box_size / 2) / box_size);
    }
    acc
}

/// Final lookup of a requant: table `table`, output encoded with `output_bits`.
pub fn table_accumulator(params: &FheParams, table: &[i64], output_bits: u32) -> GlweCiphertextOwned<u64> {
    let lut_bits = table.len().trailing_zeros();
    accumulator(params, lut_bits, |t| {
        encode(
            crate::eval::clear::table_output(table, t % (2 * table.len())),
            output_bits,
        )
    })
}

/// Constant -`half`: returns -`half` or +`half` for a top bit 0 or 1.
fn sign_accumulator(params: &FheParams, half: u64) -> GlweCiphertextOwned<u64> {
    accumulator(params, 0, |_| half.wrapping_neg())
}

/// Returns -1/4 or +1/4 for the bit above a digit.
fn quarter_sign(params: &FheParams) -> GlweCiphertextOwned<u64> {
    sign_accumulator(params, 1u64 << 62)
}

/// Half the weight, in an accumulator holding `held` bits, of the bit above `digit_bits` low bits.
fn half_weight(held: u32, digit_bits: u32) -> u64 {
    (delta(held) << digit_bits) / 2
}

/// The table of a `bits`-bit digit: the digit d times Delta_held; index 2^bits (the negacyclic
/// boundary) is unreachable.
fn digit_accumulator(params: &FheParams, held: u32, bits: u32) -> GlweCiphertextOwned<u64> {
    let digits = 1usize << bits;
    accumulator(params, bits, |t| {
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
    input[body] = input[body].wrapping_sub((1u64 << 62).wrapping_add(1u64 << (62 - bits)));
}

/// `ct -= out`, coefficient-wise: removes a bootstrap's output from the accumulator.
pub fn subtract(ct: &mut [u64], out: &[u64]) {
    for (c, o) in ct.iter_mut().zip(out) {
        *c = c.wrapping_sub(*o);
    }
}

impl StepLuts {
    /// Accumulators for `step` while `held` bits are held; `keeps_bit` for the last step before a
    /// split table ([`Requant::step_keeps_bit`]), which also decides the step's kind.
    pub fn new(params: &FheParams, held: u32, step: TruncStep, keeps_bit: bool) -> StepLuts {
        let kind = step.kind(keeps_bit);
        match kind {
            StepKind::Digit(bits) => StepLuts {
                kind,
                sign: quarter_sign(params),
                digit: Some(digit_accumulator(params, held, bits)),
                keeps_bit,
            },
            StepKind::Extended(bits) => StepLuts {
                kind,
                sign: sign_accumulator(params, half_weight(held, bits)),
                digit: (bits > 0).then(|| digit_accumulator(params, held, bits)),
                keeps_bit,
            },
        }
    }

    /// Whether the step keeps its sign output for a split table.
    pub fn keeps_bit(&self) -> bool {
        self.keeps_bit
    }

    fn digit_bits(&self) -> u32 {
        match self.kind {
            StepKind::Digit(bits) | StepKind::Extended(bits) => bits,
        }
    }

    /// The step's first bootstrap: the sign table, on the cheap key before a plain digit (its
    /// output only clears a bit of the digit's input), else on the step's key.
    pub fn first(&self, step: TruncStep) -> (&GlweCiphertextOwned<u64>, Bootstrap) {
        match self.kind {
            StepKind::Digit(_) => (&self.sign, Bootstrap::Cheap),
            StepKind::Extended(_) => (&self.sign, key_of(step)),
        }
    }

    /// The step's second bootstrap, for a digit: its table, with the step's key after a plain
    /// sign, with the cheap key in an extended step.
    pub fn second(&self, step: TruncStep) -> Option<(&GlweCiphertextOwned<u64>, Bootstrap)> {
        let which = match self.kind {
            StepKind::Digit(_) => key_of(step),
            StepKind::Extended(_) => Bootstrap::Cheap,
        };
        self.digit.as_ref().map(|digit| (digit, which))
    }

    /// Writes into `input` what the first bootstrap reads from accumulator `ct` (`held` bits): the
    /// digit (none for a single bit) and the bit above it at the top of the torus, centred in their
    /// slots (phase 1/4 or 3/4 for a single bit).
    pub fn first_input(&self, ct: &[u64], input: &mut [u64], held: u32) {
        let bits = self.digit_bits();
        shift_left(ct, input, held - bits);
        let body = input.len() - 1;
        input[body] = input[body].wrapping_add(1u64 << (62 - bits));
    }

    /// After the first bootstrap returned `out`: a plain digit's input loses the bit above the
    /// digit; an extended step removes that bit from `ct` (which ends a single-bit step) and
    /// writes the digit's input, the digit now under a zero bit.
    pub fn after_first(&self, ct: &mut [u64], input: &mut [u64], out: &[u64], held: u32) {
        match self.kind {
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
    fn big_lwe_size(&self) -> usize {
        let lut = self
            .tables
            .first()
            .or_else(|| self.split.as_ref().and_then(|s| s.low.first()));
        big_lwe_size(lut.expect("a requant layer has tables"))
    }

    pub fn new(params: &FheParams, layer: &Requant) -> LayerLuts {
        let mut held = layer.acc_bits;
        let count = layer.steps.len();
        let steps: Vec<(TruncStep, u32, StepLuts)> = layer
            .steps
            .iter()
            .enumerate()
            .map(|(i, &step)| {
                let before = held;
                held -= step.bits;
                let luts = StepLuts::new(params, before, step, layer.step_keeps_bit(i, count));
                (step, before, luts)
            })
            .collect();
        if layer.split_table() {
            let &(step, before, _) = steps.last().expect("a split table's layer has a truncation step");
            return LayerLuts {
                split: Some(SplitLuts::new(params, layer, step, before)),
                steps,
                tables: Vec::new(),
            };
        }
        let tables = layer
            .tables
            .iter()
            .map(|t| table_accumulator(params, t, layer.output_encoding_bits))
            .collect();
        LayerLuts {
            steps,
            tables,
            split: None,
        }
    }
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
    fn requant(
        &self,
        layer: &Requant,
        input: Ciphertexts,
        residual: Option<&DeferredAdd>,
        progress: Option<&ProgressBar>,
    ) -> Ciphertexts;
}

impl Bootstrapper for Engine<'_> {
    fn requant(
        &self,
        layer: &Requant,
        input: Ciphertexts,
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
                requant_rounds(layer, &luts, chunk, k * batch, residual, &mut |inputs, l, which| {
                    let out = self.bootstrap_batch(scratch, inputs, l, which);
                    if let Some(bar) = progress {
                        bar.inc((inputs.len() / size) as u64);
                    }
                    out
                });
            },
        );
        LweCiphertextList::from_container(acc, LweSize(size), native())
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
    for (stage, (step, held, step_luts)) in luts.steps.iter().enumerate() {
        add_residual(acc, stage);
        kept = step_rounds(step_luts, *step, *held, acc, &mut inputs, round);
    }
    add_residual(acc, luts.steps.len());
    let per_channel = layer.shape.per_channel();
    match &luts.split {
        Some(split) => {
            let kept = kept.expect("a split table's last step keeps its sign outputs");
            split_table_rounds(split, acc, &mut inputs, first, per_channel, &kept, round);
        }
        None => {
            let tables = Luts::ByChannel {
                tables: &luts.tables,
                first,
                per_channel,
            };
            let out = round(acc, tables, Bootstrap::Precise);
            acc.copy_from_slice(&out);
        }
    }
}

/// A leveled layer on ciphertexts: wrapping integer sums, offsets and padding as plaintexts.
/// `input` and the residual tensor are encoded with `input_bits` and `residual_bits`; the output
/// with `output_bits` (at most either): each term is multiplied by 2^(its bits - output_bits).
pub fn linear(
    layer: &Linear,
    input: &Ciphertexts,
    input_bits: u32,
    residual: Option<(&Ciphertexts, u32)>,
    output_bits: u32,
) -> Ciphertexts {
    let size = input.lwe_size().0;
    let src = input.as_ref();
    let rescale = |bits: u32| 1u64 << (bits - output_bits);
    let (in_scale, res) = (
        rescale(input_bits),
        residual.map(|(r, bits)| (r.as_ref(), rescale(bits))),
    );
    let mut out = vec![0u64; layer.out_shape.len() * size];
    out.par_chunks_mut(size).enumerate().for_each(|(o, dst)| {
        let c = layer.channel_of(o);
        let mut add = |ct: &[u64], w: u64| {
            for (d, s) in dst.iter_mut().zip(ct) {
                *d = d.wrapping_add(s.wrapping_mul(w));
            }
        };
        let mut constant = layer.offsets[c];
        layer.for_each_term(o, |idx, w| match idx {
            Some(i) => add(&src[i * size..(i + 1) * size], (w as u64).wrapping_mul(in_scale)),
            None => constant += w,
        });
        if let (Some(r), Some((values, scale))) = (&layer.residual, res) {
            add(
                &values[o * size..(o + 1) * size],
                (r.gains[c] as u64).wrapping_mul(scale),
            );
        }
        dst[size - 1] = dst[size - 1].wrapping_add(encode(constant, output_bits));
    });
    LweCiphertextList::from_container(out, LweSize(size), native())
}

/// Where an evaluation stands between layers; what a checkpoint stores to resume from.
pub type State = Tensors<Ciphertexts>;

/// Run the layers from `state.next_layer` to the end; `after_requant` sees the state after each
/// requant layer (the expensive ones), for example to checkpoint it. Returns the encrypted outputs.
pub fn resume<E>(
    circuit: &Circuit,
    engine: &dyn Bootstrapper,
    mut state: State,
    progress: Option<&ProgressBar>,
    mut after_requant: impl FnMut(&State) -> Result<(), E>,
) -> Result<Ciphertexts, E> {
    let last_uses = circuit.last_uses();
    let enc = circuit.tensor_encodings();
    let deferred = circuit.deferred_residuals();
    while state.next_layer < circuit.layers.len() {
        let i = state.next_layer;
        state.step(circuit, &last_uses, |layer, x, held| match layer {
            Layer::Linear(l) => {
                let residual = match deferred[i] {
                    Some(_) => None,
                    None => l.residual.as_ref().map(|r| (held.get(r.from), enc[r.from])),
                };
                linear(l, &x, enc[l.input], residual, enc[i + 1])
            }
            Layer::Requant(r) => {
                let add = i
                    .checked_sub(1)
                    .and_then(|linear| deferred[linear])
                    .map(|res| DeferredAdd::new(res, r, held.get(res.from), enc[res.from]));
                engine.requant(r, x, add.as_ref(), progress)
            }
        });
        if matches!(circuit.layers[i], Layer::Requant(_)) {
            after_requant(&state)?;
        }
    }
    Ok(state.output())
}

/// Bootstraps done by the layers before `state.next_layer`.
pub fn bootstraps_done(circuit: &Circuit, state: &State) -> u64 {
    circuit.layers[..state.next_layer.min(circuit.layers.len())]
        .iter()
        .map(|l| match l {
            Layer::Requant(r) => r.bootstraps(),
            Layer::Linear(_) => 0,
        })
        .sum()
}

/// Run the whole circuit on encrypted inputs on the CPU; returns the encrypted outputs.
pub fn run(circuit: &Circuit, key: &EvaluationKey, input: Ciphertexts, progress: Option<&ProgressBar>) -> Ciphertexts {
    run_on(circuit, &Engine::new(key), input, progress)
}

/// Run the whole circuit on encrypted inputs with `engine`'s bootstraps, without checkpoints.
pub fn run_on(
    circuit: &Circuit,
    engine: &dyn Bootstrapper,
    input: Ciphertexts,
    progress: Option<&ProgressBar>,
) -> Ciphertexts {
    let done: Result<_, std::convert::Infallible> =
        resume(circuit, engine, State::start(circuit, input), progress, |_| Ok(()));
    match done {
        Ok(out) => out,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use tfhe::core_crypto::commons::math::random::Seed;

    use super::*;

    #[test]
    fn batches_are_even_and_at_most_the_largest() {
        // 392 activations on 2 threads: 14 batches of 28, not 12 of 32 and one of 8.
        assert_eq!(batch_size(392, 2), 28);
        assert_eq!(batch_size(9216, 2), 32);
        assert_eq!(batch_size(10, 2), 5);
        assert_eq!(batch_size(1, 16), 1);
        for count in 1..500 {
            let b = batch_size(count, 3);
            assert!((1..=BATCH).contains(&b), "{count}: {b}");
            assert_eq!(count.div_ceil(b).div_ceil(3), count.div_ceil(3 * BATCH), "{count}: {b}");
        }
    }

    #[test]
    fn batched_keyswitch_equals_tfhe_keyswitch_word_for_word() {
        let (big, small) = (LweDimension(256), LweDimension(64));
        let mut seeder = new_seeder();
        let mut secrets = SecretRandomGenerator::<DefaultRandomGenerator>::new(Seed(1));
        let mut noise = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(Seed(2), seeder.as_mut());
        let input_key: LweSecretKeyOwned<u64> = allocate_and_generate_new_binary_lwe_secret_key(big, &mut secrets);
        let output_key: LweSecretKeyOwned<u64> = allocate_and_generate_new_binary_lwe_secret_key(small, &mut secrets);
        let ksk = allocate_and_generate_new_lwe_keyswitch_key(
            &input_key,
            &output_key,
            DecompositionBaseLog(4),
            DecompositionLevelCount(4),
            DynamicDistribution::<u64>::new_t_uniform(45),
            native(),
            &mut noise,
        );
        // Edge words (0, all ones, the top bit alone, halfway between digits) and a spread of others.
        let mut word = 0x9e37_79b9_7f4a_7c15_u64;
        let inputs: Vec<u64> = (0..5 * big.to_lwe_size().0)
            .map(|i| match i % 7 {
                0 => 0,
                1 => u64::MAX,
                2 => 1 << 63,
                3 => 1 << 47,
                _ => {
                    word = word
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    word
                }
            })
            .collect();
        let mut batched = vec![7u64; 5 * small.to_lwe_size().0];
        keyswitch_batch(&ksk, &inputs, &mut batched);
        for (input, got) in inputs
            .chunks(big.to_lwe_size().0)
            .zip(batched.chunks(small.to_lwe_size().0))
        {
            let mut one = LweCiphertext::new(0u64, small.to_lwe_size(), native());
            keyswitch_lwe_ciphertext(&ksk, &LweCiphertext::from_container(input, native()), &mut one);
            assert_eq!(got, one.as_ref());
        }
    }
}
