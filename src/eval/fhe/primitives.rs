//! Batched TFHE primitives: the engine that keyswitches and bootstraps a batch of ciphertexts
//! together, reading each piece of the keys once per batch, and plaintext arithmetic on
//! ciphertexts.

use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use tfhe::core_crypto::fft_impl::fft64::math::fft::{Fft, FftView};
use tfhe::core_crypto::prelude::*;

use super::luts::Luts;
use crate::keys::EvaluationKey;
use crate::params::{native_modulus, Bootstrap};

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
    pub(super) kept: Option<Vec<u64>>,
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

/// Words of a big-key ciphertext: what the bootstrap of accumulator `lut` extracts into.
pub(super) fn big_lwe_size(lut: &GlweCiphertextOwned<u64>) -> usize {
    lut.glwe_size().to_glwe_dimension().0 * lut.polynomial_size().0 + 1
}

/// `input = ct * 2^shift`, coefficient-wise.
pub(super) fn shift_left(ct: &[u64], input: &mut [u64], shift: u32) {
    for (d, s) in input.iter_mut().zip(ct) {
        *d = s << shift;
    }
}

/// The evaluation key with an FFT plan per polynomial size of its bootstrap keys: what every
/// bootstrap needs.
pub struct Engine<'k> {
    pub(super) key: &'k EvaluationKey,
    /// One plan per distinct N among the keys (the narrow key's is smaller).
    ffts: Vec<Fft>,
}

impl<'k> Engine<'k> {
    pub fn new(key: &'k EvaluationKey) -> Self {
        let mut sizes: Vec<usize> = key.params.keys().iter().map(|&w| key.params.glwe_shape(w).1).collect();
        sizes.sort_unstable();
        sizes.dedup();
        Engine {
            key,
            ffts: sizes.into_iter().map(|n| Fft::new(PolynomialSize(n))).collect(),
        }
    }

    fn fft(&self, poly: PolynomialSize) -> FftView<'_> {
        self.ffts
            .iter()
            .find(|f| f.as_view().polynomial_size() == poly)
            .expect("a plan for every key's polynomial size")
            .as_view()
    }

    pub fn scratch(&self) -> Scratch {
        let p = self.key.params;
        let shapes = p.keys().into_iter().map(|w| p.glwe_shape(w));
        let (mut glwe_words, mut bytes) = (0, 0);
        for (k, n) in shapes {
            let (glwe_size, poly) = (GlweSize(k + 1), PolynomialSize(n));
            glwe_words = glwe_words.max(glwe_size.0 * poly.0);
            let needed =
                batch_blind_rotate_assign_scratch::<u64>(glwe_size, poly, CiphertextCount(BATCH), self.fft(poly))
                    .unaligned_bytes_required();
            bytes = bytes.max(needed);
        }
        let mut buffers = ComputationBuffers::new();
        buffers.resize(bytes);
        Scratch {
            small: vec![0; BATCH * (p.lwe_dimension + 1)],
            rotated: vec![0; BATCH * glwe_words],
            buffers,
            kept: None,
        }
    }

    /// Keyswitch, centred modulus switch, blind rotation with key `which` and sample extraction of
    /// the big-key ciphertexts `inputs` (at most [`BATCH`]), ciphertext j rotating `luts.of(j)`
    /// (accumulators of `which`'s GLWE shape): the bootstrap outputs, in the same layout.
    pub fn bootstrap_batch(&self, scratch: &mut Scratch, inputs: &[u64], luts: Luts, which: Bootstrap) -> Vec<u64> {
        let p = &self.key.params;
        let big = p.big_lwe_dimension() + 1;
        let small = p.lwe_dimension + 1;
        let bsk = self.key.bootstrap_key(which);
        let (glwe_size, poly) = (bsk.glwe_size(), bsk.polynomial_size());
        let glwe_len = glwe_size.0 * poly.0;
        let count = inputs.len() / big;
        assert!(count <= BATCH, "a batch holds at most {BATCH} ciphertexts, not {count}");
        let small_cts = &mut scratch.small[..count * small];
        keyswitch_batch(&self.key.keyswitch_key, inputs, small_cts);
        let log_modulus = CiphertextModulusLog((2 * poly.0).trailing_zeros() as usize);
        let switched: Vec<SwitchedLwe> = small_cts
            .chunks(small)
            .map(|ct| SwitchedLwe::new(LweCiphertext::from_container(ct, native_modulus()), log_modulus))
            .collect();
        let rotated = &mut scratch.rotated[..count * glwe_len];
        for (j, acc) in rotated.chunks_mut(glwe_len).enumerate() {
            acc.copy_from_slice(luts.of(j).as_ref());
        }
        bsk.as_view().batch_blind_rotate_assign(
            GlweCiphertextList::from_container(&mut *rotated, glwe_size, poly, native_modulus()),
            &switched,
            self.fft(poly),
            scratch.buffers.stack(),
        );
        let mut out = vec![0u64; inputs.len()];
        for (acc, o) in rotated.chunks(glwe_len).zip(out.chunks_mut(big)) {
            extract_lwe_sample_from_glwe_ciphertext(
                &GlweCiphertext::from_container(acc, poly, native_modulus()),
                &mut LweCiphertext::from_container(o, native_modulus()),
                MonomialDegree(0),
            );
        }
        out
    }
}

/// `ct -= out`, coefficient-wise: removes a bootstrap's output from the accumulator.
pub fn subtract(ct: &mut [u64], out: &[u64]) {
    for (c, o) in ct.iter_mut().zip(out) {
        *c = c.wrapping_sub(*o);
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
            native_modulus(),
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
            let mut one = LweCiphertext::new(0u64, small.to_lwe_size(), native_modulus());
            keyswitch_lwe_ciphertext(&ksk, &LweCiphertext::from_container(input, native_modulus()), &mut one);
            assert_eq!(got, one.as_ref());
        }
    }
}
