//! TFHE parameter sets and the noise model that proves every bootstrap's failure probability.
//!
//! All sets share tfhe's stock `PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128` keys (n = 918,
//! k = 1, N = 2048, TUniform noise, keyswitch 2^4 x 4), which fixes their security level; they
//! differ only in the bootstrap decompositions, which trade bootstrap cost for output noise.
//! Every set carries up to four bootstrap keys over the same secret keys: a precise one for the
//! tables whose consumers need the least noise, optionally a medium one for the tables whose
//! consumers tolerate more, tfhe's stock 2^23 x 1 one for the truncation steps and tables whose
//! successors tolerate its noisier output, and optionally a narrow one: the same 2^23 x 1
//! decomposition with the GLWE key's 2,048 coefficients read as k = 2 polynomials of N = 1024,
//! cheaper per bootstrap, whose coarser modulus switch (to 2N = 2048) limits it to reads of at most
//! 4 bits (truncation steps of up to 3 digit bits). Its output is under the same big key.
//! Variances are in torus units (the torus is [0, 1)), computed with tfhe's own noise formulas.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::commons::noise_formulas::{
    centered_mean_shifted_modulus_switch::centered_binary_shifted_modulus_switch_additive_variance_impl,
    lwe_keyswitch::keyswitch_additive_variance_132_bits_security_tuniform_impl,
    lwe_programmable_bootstrap::pbs_variance_132_bits_security_tuniform_fft_mul_impl,
};

/// Milliseconds of one keyswitch + bootstrap with the stock 2^23 x 1 decomposition, amortised over
/// 2 threads in the engine's batches, linear layers included: the unit of the cost model's time
/// estimates, fitted to whole runs of tiny-pkn and cnn-pkn with batched rounds (49.7 s and 346.9 s
/// for 6,954 and 48,589 units; 13.0 ms before the batches; docs/benchmarks.md).
pub const MS_PER_STOCK_PBS_2_THREADS: f64 = 7.15;

/// The ciphertext modulus of every parameter set: the native 2^64.
pub fn native_modulus() -> tfhe::core_crypto::prelude::CiphertextModulus<u64> {
    tfhe::core_crypto::prelude::CiphertextModulus::new_native()
}

/// The failure probability every bootstrap must stay under: 2^-64.
pub const LOG2_PFAIL_LIMIT: f64 = -64.0;

const TORUS: f64 = 18446744073709551616.0; // 2^64
const FFT_MANTISSA_BITS: f64 = 53.0;

/// One TFHE parameter set (keys and decompositions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FheParams {
    pub lwe_dimension: usize,
    pub glwe_dimension: usize,
    pub polynomial_size: usize,
    /// TUniform bound of the small LWE key's encryption noise, as log2 of 64-bit integers.
    pub lwe_noise_bound_log2: u32,
    /// TUniform bound of the GLWE (big) key's encryption noise.
    pub glwe_noise_bound_log2: u32,
    pub pbs_base_log: usize,
    pub pbs_level: usize,
    pub ks_base_log: usize,
    pub ks_level: usize,
    /// Decomposition of the cheap bootstrap key used by truncation steps.
    pub cheap_pbs_base_log: usize,
    pub cheap_pbs_level: usize,
    /// Decomposition of the medium bootstrap key, for the tables of layers whose consumers
    /// tolerate more noise than the precise key's; equal to the precise one when the set has no
    /// medium key ([`FheParams::has_medium_key`]).
    pub medium_pbs_base_log: usize,
    pub medium_pbs_level: usize,
    /// GLWE shape (k, N) of the narrow bootstrap key; equal to the main one when the set has no
    /// narrow key ([`FheParams::has_narrow_key`]).
    pub narrow_glwe_dimension: usize,
    pub narrow_polynomial_size: usize,
}

/// Which bootstrap key a bootstrap uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bootstrap {
    Precise,
    Medium,
    Cheap,
    /// The cheap decomposition on the GLWE key split as [`NARROW_GLWE`].
    Narrow,
}

/// GLWE shape (k, N) of the narrow key: the same 2,048 key coefficients as k = 1, N = 2048.
pub const NARROW_GLWE: (usize, usize) = (2, 1024);

/// Cost of a narrow bootstrap relative to a cheap one (keyswitch included), measured by
/// `cargo bench --bench fhe -- "batch of"` (docs/benchmarks.md).
pub const NARROW_RELATIVE_COST: f64 = 0.78;

/// The decompositions (base log, level count) the compiler chooses precise and medium keys from,
/// cheapest first: the best base per level count (docs/parameters.md).
pub const DECOMPOSITIONS: [(usize, usize); 7] = [(23, 1), (15, 2), (12, 3), (10, 4), (8, 5), (6, 7), (5, 8)];

impl FheParams {
    /// tfhe's stock 2_2 keys with the given precise bootstrap decomposition and no medium key.
    pub const fn stock_2_2_with_pbs(pbs_base_log: usize, pbs_level: usize) -> Self {
        Self::stock_2_2_with_keys((pbs_base_log, pbs_level), (pbs_base_log, pbs_level))
    }

    /// tfhe's stock 2_2 keys with the given precise and medium decompositions.
    pub const fn stock_2_2_with_keys(precise: (usize, usize), medium: (usize, usize)) -> Self {
        let ((pbs_base_log, pbs_level), (medium_pbs_base_log, medium_pbs_level)) = (precise, medium);
        FheParams {
            lwe_dimension: 918,
            glwe_dimension: 1,
            polynomial_size: 2048,
            lwe_noise_bound_log2: 45,
            glwe_noise_bound_log2: 17,
            pbs_base_log,
            pbs_level,
            ks_base_log: 4,
            ks_level: 4,
            cheap_pbs_base_log: 23,
            cheap_pbs_level: 1,
            medium_pbs_base_log,
            medium_pbs_level,
            narrow_glwe_dimension: 1,
            narrow_polynomial_size: 2048,
        }
    }

    /// This set with a narrow key.
    pub fn with_narrow(&self) -> FheParams {
        FheParams {
            narrow_glwe_dimension: NARROW_GLWE.0,
            narrow_polynomial_size: NARROW_GLWE.1,
            ..*self
        }
    }

    /// The precise keys the compiler chooses from, cheapest first, each without a medium key.
    pub fn candidates() -> [FheParams; 7] {
        DECOMPOSITIONS.map(|(base_log, level)| Self::stock_2_2_with_pbs(base_log, level))
    }

    /// This set with a medium key of `medium`; none if `medium` is the cheap or the precise
    /// decomposition, or not cheaper than the precise one.
    pub fn with_medium(&self, medium: (usize, usize)) -> Option<FheParams> {
        let keeps = medium.1 > self.cheap_pbs_level && medium.1 < self.pbs_level;
        keeps.then_some(FheParams {
            medium_pbs_base_log: medium.0,
            medium_pbs_level: medium.1,
            ..*self
        })
    }

    /// Every set pkn generates keys for: each candidate, alone or with each cheaper medium key,
    /// each with or without a narrow key.
    pub fn known_sets() -> Vec<FheParams> {
        Self::candidates()
            .into_iter()
            .flat_map(|p| std::iter::once(p).chain(DECOMPOSITIONS.into_iter().filter_map(move |m| p.with_medium(m))))
            .flat_map(|p| [p, p.with_narrow()])
            .collect()
    }

    /// Whether the set has a narrow bootstrap key.
    pub fn has_narrow_key(&self) -> bool {
        self.glwe_shape(Bootstrap::Narrow) != self.glwe_shape(Bootstrap::Cheap)
    }

    /// GLWE shape (k, N) of a bootstrap key: what its accumulators and blind rotation use.
    pub fn glwe_shape(&self, which: Bootstrap) -> (usize, usize) {
        match which {
            Bootstrap::Narrow => (self.narrow_glwe_dimension, self.narrow_polynomial_size),
            _ => (self.glwe_dimension, self.polynomial_size),
        }
    }

    /// Whether the set has a medium bootstrap key of its own.
    pub fn has_medium_key(&self) -> bool {
        self.decomposition(Bootstrap::Medium) != self.decomposition(Bootstrap::Precise)
    }

    /// The keys a server key of this set holds, precise first.
    pub fn keys(&self) -> Vec<Bootstrap> {
        let medium = self.has_medium_key().then_some(Bootstrap::Medium);
        let narrow = self.has_narrow_key().then_some(Bootstrap::Narrow);
        [Some(Bootstrap::Precise), medium, Some(Bootstrap::Cheap), narrow]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Where `which`'s key is in [`FheParams::keys`]: a set without a medium key runs medium
    /// bootstraps on its precise key, one without a narrow key narrow ones on its cheap key (same
    /// decomposition and shape then).
    pub fn key_index(&self, which: Bootstrap) -> usize {
        let cheap = 1 + usize::from(self.has_medium_key());
        match which {
            Bootstrap::Precise => 0,
            Bootstrap::Medium => usize::from(self.has_medium_key()),
            Bootstrap::Cheap => cheap,
            Bootstrap::Narrow => cheap + usize::from(self.has_narrow_key()),
        }
    }

    pub fn name(&self) -> String {
        let medium = if self.has_medium_key() {
            format!("+2^{}x{}", self.medium_pbs_base_log, self.medium_pbs_level)
        } else {
            String::new()
        };
        let narrow = if self.has_narrow_key() {
            format!("+k{}N{}", self.narrow_glwe_dimension, self.narrow_polynomial_size)
        } else {
            String::new()
        };
        format!(
            "n{}-k{}-N{}-pbs2^{}x{}{medium}+2^{}x{}{narrow}-ks2^{}x{}",
            self.lwe_dimension,
            self.glwe_dimension,
            self.polynomial_size,
            self.pbs_base_log,
            self.pbs_level,
            self.cheap_pbs_base_log,
            self.cheap_pbs_level,
            self.ks_base_log,
            self.ks_level
        )
    }

    /// Decomposition (base log, level count) of a bootstrap key.
    pub fn decomposition(&self, which: Bootstrap) -> (usize, usize) {
        match which {
            Bootstrap::Precise => (self.pbs_base_log, self.pbs_level),
            Bootstrap::Medium => (self.medium_pbs_base_log, self.medium_pbs_level),
            Bootstrap::Cheap | Bootstrap::Narrow => (self.cheap_pbs_base_log, self.cheap_pbs_level),
        }
    }

    /// Short name of a key's decomposition (and shape, for the narrow key), as `pkn inspect`
    /// prints it.
    pub fn key_label(&self, which: Bootstrap) -> String {
        let (base_log, level) = self.decomposition(which);
        match which {
            Bootstrap::Narrow if self.has_narrow_key() => {
                format!("2^{base_log}x{level}/N{}", self.narrow_polynomial_size)
            }
            _ => format!("2^{base_log}x{level}"),
        }
    }

    /// Dimension of the big LWE key (the GLWE key read as an LWE key), under which every
    /// activation ciphertext lives.
    pub fn big_lwe_dimension(&self) -> usize {
        self.glwe_dimension * self.polynomial_size
    }

    /// Bytes of one ciphertext under the big key, the form every tensor is held in.
    pub fn ciphertext_bytes(&self) -> u64 {
        (self.big_lwe_dimension() as u64 + 1) * 8
    }

    /// Bytes of a standard bootstrap key; its Fourier form (N / 2 complex numbers of 16 bytes per
    /// polynomial) has the same size, its seeded form 1 / (k + 1) of it.
    fn bootstrap_key_bytes(&self, which: Bootstrap) -> u64 {
        let (k, n) = self.glwe_shape(which);
        let glwe = k as u64 + 1;
        (self.lwe_dimension as u64) * glwe * glwe * self.decomposition(which).1 as u64 * n as u64 * 8
    }

    /// Bytes of a seeded bootstrap key, as the server key file holds it.
    fn seeded_bootstrap_key_bytes(&self, which: Bootstrap) -> u64 {
        self.bootstrap_key_bytes(which) / (self.glwe_shape(which).0 as u64 + 1)
    }

    /// Bytes of the evaluation key as the CPU engine holds it during a run: every bootstrap key
    /// in the Fourier domain and the keyswitch key.
    pub fn expanded_key_bytes(&self) -> u64 {
        let keyswitch = self.big_lwe_dimension() as u64 * self.ks_level as u64 * (self.lwe_dimension as u64 + 1) * 8;
        self.keys()
            .into_iter()
            .map(|which| self.bootstrap_key_bytes(which))
            .sum::<u64>()
            + keyswitch
    }

    /// Bytes held at the worst moment of expanding the key (`ServerKey::expand`, one bootstrap
    /// key at a time in [`FheParams::keys`] order): the keys done in the Fourier domain, the one
    /// expanding in both forms, the rest still seeded.
    pub fn expanding_key_bytes(&self) -> u64 {
        let keys = self.keys();
        (0..keys.len())
            .map(|i| {
                let done: u64 = keys[..i].iter().map(|&w| self.bootstrap_key_bytes(w)).sum();
                let rest: u64 = keys[i + 1..].iter().map(|&w| self.seeded_bootstrap_key_bytes(w)).sum();
                done + 2 * self.bootstrap_key_bytes(keys[i]) + rest
            })
            .max()
            .unwrap_or(0)
    }

    /// log2 of 2N, the modulus the ciphertext is switched to before a blind rotation with `which`.
    pub fn log2_modswitch_modulus(&self, which: Bootstrap) -> usize {
        (2 * self.glwe_shape(which).1).trailing_zeros() as usize
    }

    /// Cost of one keyswitch + bootstrap relative to the stock 2^23 x 1 decomposition, linear in
    /// the level count: fitted to 30.9 ms (1 level) and 60.1 ms (3 levels) single-threaded,
    /// measured by `cargo bench --bench fhe -- bootstrap` (docs/benchmarks.md); in the engine's
    /// batches of 32 the same bench gives 14.7 and 29.1 ms per bootstrap, 1.98 where this says 1.95.
    /// A narrow bootstrap costs [`NARROW_RELATIVE_COST`] of a cheap one.
    pub fn relative_pbs_cost(&self, which: Bootstrap) -> f64 {
        let linear = 0.525 + 0.475 * self.decomposition(which).1 as f64;
        if which == Bootstrap::Narrow && self.has_narrow_key() {
            linear * NARROW_RELATIVE_COST
        } else {
            linear
        }
    }

    /// Estimated seconds for a cost of `stock_bootstraps` on 2 cores of this machine kind.
    pub fn estimated_seconds(stock_bootstraps: f64) -> f64 {
        stock_bootstraps * MS_PER_STOCK_PBS_2_THREADS / 1000.0
    }

    /// Variance of a fresh encryption under the big key (used for the client's input).
    pub fn fresh_variance(&self) -> f64 {
        tuniform_variance(self.glwe_noise_bound_log2)
    }

    /// Output variance of one programmable bootstrap (independent of its input).
    pub fn pbs_output_variance(&self, which: Bootstrap) -> f64 {
        let (base_log, level) = self.decomposition(which);
        let (k, n) = self.glwe_shape(which);
        pbs_variance_132_bits_security_tuniform_fft_mul_impl(
            self.lwe_dimension as f64,
            k as f64,
            n as f64,
            2f64.powi(base_log as i32),
            level as f64,
            FFT_MANTISSA_BITS,
            TORUS,
        )
    }

    /// Variance the keyswitch (big key -> small key) adds.
    pub fn keyswitch_variance(&self) -> f64 {
        keyswitch_additive_variance_132_bits_security_tuniform_impl(
            self.big_lwe_dimension() as f64,
            self.lwe_dimension as f64,
            2f64.powi(self.ks_base_log as i32),
            self.ks_level as f64,
            TORUS,
            TORUS,
        )
    }

    /// Variance the centred modulus switch to 2N of key `which` adds.
    pub fn modswitch_variance(&self, which: Bootstrap) -> f64 {
        centered_binary_shifted_modulus_switch_additive_variance_impl(
            self.lwe_dimension as f64,
            TORUS,
            (2 * self.glwe_shape(which).1) as f64,
        )
    }

    /// The deterministic shift of the centred modulus switch: half a step of 1/(2N).
    pub fn modswitch_shift(&self, which: Bootstrap) -> f64 {
        1.0 / (4.0 * self.glwe_shape(which).1 as f64)
    }

    /// log2 of the failure probability of one bootstrap with key `which` whose input phase
    /// carries `variance` (before keyswitch) and must stay within `half_slot` of its centre.
    pub fn log2_pfail(&self, which: Bootstrap, variance: f64, half_slot: f64) -> f64 {
        let sigma = (variance + self.keyswitch_variance() + self.modswitch_variance(which)).sqrt();
        log2_gaussian_two_sided_tail((half_slot - self.modswitch_shift(which)) / sigma)
    }
}

/// Variance, in torus units, of TUniform(b): integers uniform in [-2^b, 2^b] over a 2^64 torus.
fn tuniform_variance(bound_log2: u32) -> f64 {
    let b = 2f64.powi(bound_log2 as i32);
    (2.0 * b * b + 1.0) / 6.0 / (TORUS * TORUS)
}

/// Upper bound on log2 P(|X| > z) for a standard normal X, from the Mills-ratio bound
/// P(X > z) <= phi(z) / z. Returns 0 (certain failure) for z <= 1.
pub fn log2_gaussian_two_sided_tail(z: f64) -> f64 {
    if z <= 1.0 {
        return 0.0;
    }
    let ln_p = std::f64::consts::LN_2 - z * z / 2.0 - (z * (2.0 * std::f64::consts::PI).sqrt()).ln();
    (ln_p / std::f64::consts::LN_2).min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_bound_matches_known_values() {
        // P(|X| > 9.15) is about 2^-64.
        let v = log2_gaussian_two_sided_tail(9.15);
        assert!((-65.0..-63.5).contains(&v), "{v}");
        assert_eq!(log2_gaussian_two_sided_tail(0.5), 0.0);
    }

    #[test]
    fn finer_decompositions_give_less_noise_and_cost_more() {
        let c = FheParams::candidates();
        for pair in c.windows(2) {
            let p = Bootstrap::Precise;
            assert!(pair[1].pbs_output_variance(p) < pair[0].pbs_output_variance(p));
            assert!(pair[1].relative_pbs_cost(p) > pair[0].relative_pbs_cost(p));
        }
    }

    #[test]
    fn medium_keys_sit_between_the_cheap_and_precise_ones() {
        let p = FheParams::stock_2_2_with_pbs(10, 4);
        assert_eq!(p.keys(), vec![Bootstrap::Precise, Bootstrap::Cheap]);
        assert_eq!(p.key_index(Bootstrap::Medium), 0);
        assert!(p.with_medium((23, 1)).is_none() && p.with_medium((10, 4)).is_none());
        assert!(p.with_medium((8, 5)).is_none());
        let m = p.with_medium((15, 2)).expect("2 levels sit between 1 and 4");
        assert_eq!(m.keys(), vec![Bootstrap::Precise, Bootstrap::Medium, Bootstrap::Cheap]);
        assert_eq!((m.key_index(Bootstrap::Medium), m.key_index(Bootstrap::Cheap)), (1, 2));
        assert_eq!(m.name(), "n918-k1-N2048-pbs2^10x4+2^15x2+2^23x1-ks2^4x4");
        assert!(FheParams::known_sets().contains(&m));
        // 7 keys alone, and each with the keys of fewer levels above the cheap one (0 + 0 + 1 + ...
        // + 5), each with or without a narrow key.
        assert_eq!(FheParams::known_sets().len(), 2 * (7 + 15));
    }

    #[test]
    fn the_narrow_key_reads_four_bits_but_not_five() {
        let p = FheParams::stock_2_2_with_pbs(12, 3).with_narrow();
        assert_eq!(p.keys(), vec![Bootstrap::Precise, Bootstrap::Cheap, Bootstrap::Narrow]);
        assert_eq!(p.key_index(Bootstrap::Narrow), 2);
        assert_eq!(p.glwe_shape(Bootstrap::Narrow), (2, 1024));
        assert_eq!(p.big_lwe_dimension(), 2 * 1024);
        assert_eq!(p.log2_modswitch_modulus(Bootstrap::Narrow), 11);
        assert_eq!(p.name(), "n918-k1-N2048-pbs2^12x3+2^23x1+k2N1024-ks2^4x4");
        assert!(p.relative_pbs_cost(Bootstrap::Narrow) < p.relative_pbs_cost(Bootstrap::Cheap));
        // Inputs from a cheap bootstrap: 3 bits and the bit above (half slot 2^-5) pass, 4 and the
        // bit above (2^-6) fail; the wide key reads both.
        let var = p.pbs_output_variance(Bootstrap::Cheap);
        assert!(p.log2_pfail(Bootstrap::Narrow, var, 2f64.powi(-5)) < LOG2_PFAIL_LIMIT);
        assert!(p.log2_pfail(Bootstrap::Narrow, var, 2f64.powi(-6)) > LOG2_PFAIL_LIMIT);
        assert!(p.log2_pfail(Bootstrap::Cheap, var, 2f64.powi(-6)) < LOG2_PFAIL_LIMIT);
        // Without a narrow key, narrow bootstraps are the cheap key's.
        let plain = FheParams::stock_2_2_with_pbs(12, 3);
        assert_eq!(plain.key_index(Bootstrap::Narrow), plain.key_index(Bootstrap::Cheap));
        assert_eq!(plain.relative_pbs_cost(Bootstrap::Narrow), 1.0);
    }

    #[test]
    fn stock_lut_of_four_bits_meets_the_failure_limit() {
        // A 4-bit table input (half slot 2^-6) fed by one fresh bootstrap output.
        let p = FheParams::stock_2_2_with_pbs(23, 1);
        let lp = p.log2_pfail(
            Bootstrap::Precise,
            p.pbs_output_variance(Bootstrap::Cheap),
            2f64.powi(-6),
        );
        assert!(lp < LOG2_PFAIL_LIMIT, "log2 p-fail {lp}");
    }
}
