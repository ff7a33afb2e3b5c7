//! Key generation, encryption and decryption (client side), and the evaluation key (server side).
//!
//! Activations live under the *big* LWE key (the GLWE key read as an LWE key, dimension k*N):
//! the client encrypts pixels under it, linear layers work on it, and every bootstrap keyswitches
//! to the small key and comes back under the big key. The server key holds only encryptions of
//! secret-key bits (bootstrap key) and of big-key coefficients (keyswitch key): no secret.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::commons::math::random::CompressionSeed;
use tfhe::core_crypto::prelude::*;
use tfhe_csprng::seeders::SeedKind;
use zeroize::Zeroize;

use crate::encoding::{decode, encode};
use crate::error::{Error, Result};
use crate::params::{native_modulus, Bootstrap, FheParams};

/// Secret-key bits are wiped from memory when the key is dropped (tfhe's key types do not do it).
impl Drop for ClientKey {
    fn drop(&mut self) {
        self.small_key.as_mut().zeroize();
        self.glwe_key.as_mut().zeroize();
    }
}

/// Identifier that ties ciphertexts to the key pair they belong to.
pub type KeyId = [u8; 16];

/// The client's secret key. Never leaves the client; `pkn infer` never reads it.
#[derive(Serialize, Deserialize)]
pub struct ClientKey {
    pub params: FheParams,
    pub key_id: KeyId,
    small_key: LweSecretKeyOwned<u64>,
    glwe_key: GlweSecretKeyOwned<u64>,
}

/// The evaluation key as stored: seeded (compressed) bootstrap keys, one per
/// [`FheParams::keys`] entry in that order, and the keyswitch key.
#[derive(Serialize, Deserialize)]
pub struct ServerKey {
    pub params: FheParams,
    pub key_id: KeyId,
    bootstrap_keys: Vec<SeededLweBootstrapKeyOwned<u64>>,
    keyswitch_key: SeededLweKeyswitchKeyOwned<u64>,
}

/// The evaluation key ready for computation: decompressed, bootstrap keys in the Fourier domain.
pub struct EvaluationKey {
    pub params: FheParams,
    pub key_id: KeyId,
    bootstrap_keys: Vec<FourierLweBootstrapKeyOwned>,
    pub keyswitch_key: LweKeyswitchKeyOwned<u64>,
}

/// The evaluation key decompressed, bootstrap keys still in the standard domain: what the GPU
/// backend uploads (it converts them to its own Fourier layout on the device).
pub struct StandardEvaluationKey {
    pub params: FheParams,
    pub key_id: KeyId,
    /// One per [`FheParams::keys`] entry, in that order.
    pub bootstrap_keys: Vec<LweBootstrapKeyOwned<u64>>,
    pub keyswitch_key: LweKeyswitchKeyOwned<u64>,
}

impl EvaluationKey {
    pub fn bootstrap_key(&self, which: Bootstrap) -> &FourierLweBootstrapKeyOwned {
        &self.bootstrap_keys[self.params.key_index(which)]
    }
}

fn random_id(seeder: &mut dyn Seeder) -> KeyId {
    seeder.seed().0.to_le_bytes()
}

impl ClientKey {
    /// Generate a key pair for `params`.
    pub fn generate(params: FheParams) -> (ClientKey, ServerKey) {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        let small_key =
            allocate_and_generate_new_binary_lwe_secret_key(LweDimension(params.lwe_dimension), &mut secret_gen);
        let glwe_key = allocate_and_generate_new_binary_glwe_secret_key(
            GlweDimension(params.glwe_dimension),
            PolynomialSize(params.polynomial_size),
            &mut secret_gen,
        );
        let bootstrap_key = |which, seeder: &mut dyn Seeder| {
            let (base_log, level) = params.decomposition(which);
            // The same key coefficients, read as polynomials of the key's own size (the narrow
            // key's k = 2, N = 1024): its outputs are under the same big LWE key.
            let shaped = GlweSecretKey::from_container(glwe_key.as_ref(), PolynomialSize(params.glwe_shape(which).1));
            par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
                &small_key,
                &shaped,
                DecompositionBaseLog(base_log),
                DecompositionLevelCount(level),
                DynamicDistribution::<u64>::new_t_uniform(params.glwe_noise_bound_log2),
                native_modulus(),
                seeder,
            )
        };
        let bootstrap_keys = params
            .keys()
            .into_iter()
            .map(|which| bootstrap_key(which, &mut *seeder))
            .collect();
        let keyswitch_key = allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &glwe_key.as_lwe_secret_key(),
            &small_key,
            DecompositionBaseLog(params.ks_base_log),
            DecompositionLevelCount(params.ks_level),
            DynamicDistribution::<u64>::new_t_uniform(params.lwe_noise_bound_log2),
            native_modulus(),
            seeder,
        );
        let key_id = random_id(seeder);
        (
            ClientKey {
                params,
                key_id,
                small_key,
                glwe_key,
            },
            ServerKey {
                params,
                key_id,
                bootstrap_keys,
                keyswitch_key,
            },
        )
    }

    /// Encrypt integers with encoding `Delta = 2^(63 - bits)` under the big key, seeded (the
    /// masks are regenerated from one seed, so a ciphertext costs 8 bytes on disk).
    pub fn encrypt(&self, values: &[i64], bits: u32) -> SeededLweCiphertextListOwned<u64> {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let big_key = self.glwe_key.as_lwe_secret_key();
        let plaintexts = PlaintextList::from_container(values.iter().map(|&v| encode(v, bits)).collect::<Vec<_>>());
        let mut list = SeededLweCiphertextList::new(
            0u64,
            big_key.lwe_dimension().to_lwe_size(),
            LweCiphertextCount(values.len()),
            seeder.seed().into(),
            native_modulus(),
        );
        encrypt_seeded_lwe_ciphertext_list(
            &big_key,
            &mut list,
            &plaintexts,
            DynamicDistribution::<u64>::new_t_uniform(self.params.glwe_noise_bound_log2),
            seeder,
        );
        list
    }

    /// Refuse a decoded key whose sizes do not fit its parameters, or whose parameters are not
    /// a set pkn uses: every later use indexes by the parameters.
    pub fn check(&self) -> Result<()> {
        let p = known_params(&self.params, "client key")?;
        let bad = |message: String| Err(Error::malformed("client key", message));
        if self.small_key.as_ref().len() != p.lwe_dimension {
            return bad(format!(
                "small key has {} coefficients, parameters say {}",
                self.small_key.as_ref().len(),
                p.lwe_dimension
            ));
        }
        if self.glwe_key.polynomial_size().0 != p.polynomial_size
            || self.glwe_key.as_ref().len() != p.big_lwe_dimension()
        {
            return bad(format!(
                "GLWE key has {} coefficients in polynomials of {}, parameters say {} in polynomials of {}",
                self.glwe_key.as_ref().len(),
                self.glwe_key.polynomial_size().0,
                p.big_lwe_dimension(),
                p.polynomial_size
            ));
        }
        Ok(())
    }

    /// The raw phase of a big-key ciphertext (message plus noise).
    pub fn phase(&self, ct: &[u64]) -> u64 {
        let ct = LweCiphertext::from_container(ct, native_modulus());
        decrypt_lwe_ciphertext(&self.glwe_key.as_lwe_secret_key(), &ct).0
    }

    /// Decrypt big-key ciphertexts encoded with `Delta = 2^(63 - bits)`.
    pub fn decrypt(&self, cts: &LweCiphertextListOwned<u64>, bits: u32) -> Vec<i64> {
        cts.iter().map(|ct| decode(self.phase(ct.as_ref()), bits)).collect()
    }
}

impl ServerKey {
    /// Refuse a decoded key whose sizes, decompositions, modulus or seeds do not fit its
    /// parameters: [`ServerKey::expand`] would otherwise index, allocate or panic by them.
    pub fn check(&self) -> Result<()> {
        let p = known_params(&self.params, "server key")?;
        if self.bootstrap_keys.len() != p.keys().len() {
            return Err(Error::malformed(
                "server key",
                format!(
                    "{} bootstrap keys, parameters say {}",
                    self.bootstrap_keys.len(),
                    p.keys().len()
                ),
            ));
        }
        for (which, bsk) in p.keys().into_iter().zip(&self.bootstrap_keys) {
            let (base_log, level) = p.decomposition(which);
            let (k, n) = p.glwe_shape(which);
            let found = (
                bsk.glwe_size().0,
                bsk.polynomial_size().0,
                bsk.decomposition_base_log().0,
                bsk.decomposition_level_count().0,
                bsk.as_ref().len(),
            );
            let expected = (k + 1, n, base_log, level, p.lwe_dimension * level * (k + 1) * n);
            if found != expected {
                return Err(Error::malformed(
                    "server key",
                    format!(
                        "{which:?} bootstrap key has (GLWE size, N, base log, levels, length) {found:?}, parameters say \
                         {expected:?}"
                    ),
                ));
            }
            check_seeded("server key", bsk.ciphertext_modulus(), bsk.compression_seed())?;
        }
        let ksk = &self.keyswitch_key;
        let found = (
            ksk.output_lwe_size().0,
            ksk.decomposition_base_log().0,
            ksk.decomposition_level_count().0,
            ksk.as_ref().len(),
        );
        let expected = (
            p.lwe_dimension + 1,
            p.ks_base_log,
            p.ks_level,
            p.big_lwe_dimension() * p.ks_level,
        );
        if found != expected {
            return Err(Error::malformed(
                "server key",
                format!(
                    "keyswitch key has (output LWE size, base log, levels, length) {found:?}, parameters say {expected:?}"
                ),
            ));
        }
        check_seeded("server key", ksk.ciphertext_modulus(), ksk.compression_seed())
    }

    /// Regenerate the masks from their seeds, once per run.
    pub fn decompress(self) -> StandardEvaluationKey {
        StandardEvaluationKey {
            params: self.params,
            key_id: self.key_id,
            bootstrap_keys: self
                .bootstrap_keys
                .into_iter()
                .map(|k| k.par_decompress_into_lwe_bootstrap_key())
                .collect(),
            keyswitch_key: self.keyswitch_key.par_decompress_into_lwe_keyswitch_key(),
        }
    }

    /// Decompress and convert to the Fourier domain, once per run: one bootstrap key at a time,
    /// each standard key dropped once converted, so that the peak holds one key twice
    /// ([`FheParams::expanding_key_bytes`]) rather than every key twice.
    pub fn expand(self) -> EvaluationKey {
        let bootstrap_keys = self
            .bootstrap_keys
            .into_iter()
            .map(|k| to_fourier(&k.par_decompress_into_lwe_bootstrap_key()))
            .collect();
        EvaluationKey {
            params: self.params,
            key_id: self.key_id,
            bootstrap_keys,
            keyswitch_key: self.keyswitch_key.par_decompress_into_lwe_keyswitch_key(),
        }
    }
}

/// `params` if it is one of the sets pkn generates keys for.
fn known_params(params: &FheParams, what: &'static str) -> Result<FheParams> {
    if FheParams::known_sets().contains(params) {
        Ok(*params)
    } else {
        Err(Error::malformed(
            what,
            format!("unknown parameter set {}", params.name()),
        ))
    }
}

/// Refuse a seeded entity that pkn would not have written: a non-native modulus, or a seed
/// other than a plain counter seed from the first table index (a hostile index or XOF seed
/// would make decompression run the generator past its end).
pub fn check_seeded(what: &'static str, modulus: CiphertextModulus<u64>, seed: CompressionSeed) -> Result<()> {
    if !modulus.is_native_modulus() {
        return Err(Error::malformed(
            what,
            format!("ciphertext modulus {modulus:?} is not 2^64"),
        ));
    }
    let plain = match seed.inner.seed {
        SeedKind::Ctr(s) => seed == CompressionSeed::from(s),
        SeedKind::Xof(_) => false,
    };
    if !plain {
        return Err(Error::malformed(what, "compression seed is not one pkn writes"));
    }
    Ok(())
}

fn to_fourier(standard: &LweBootstrapKeyOwned<u64>) -> FourierLweBootstrapKeyOwned {
    let mut fourier = FourierLweBootstrapKeyOwned::new(
        standard.input_lwe_dimension(),
        standard.glwe_size(),
        standard.polynomial_size(),
        standard.decomposition_base_log(),
        standard.decomposition_level_count(),
    );
    par_convert_standard_lwe_bootstrap_key_to_fourier(standard, &mut fourier);
    fourier
}

#[cfg(test)]
mod tests {
    use tfhe::core_crypto::commons::math::random::Seed;

    use super::*;

    const PARAMS: FheParams = FheParams::stock_2_2_with_pbs(15, 2);

    fn seeded_bsk(input_lwe_dimension: usize, (base_log, level): (usize, usize)) -> SeededLweBootstrapKeyOwned<u64> {
        SeededLweBootstrapKey::new(
            0,
            GlweSize(PARAMS.glwe_dimension + 1),
            PolynomialSize(PARAMS.polynomial_size),
            DecompositionBaseLog(base_log),
            DecompositionLevelCount(level),
            LweDimension(input_lwe_dimension),
            Seed(7).into(),
            native_modulus(),
        )
    }

    /// A server key of `params` whose precise bootstrap key encrypts `bsk_inputs` key bits;
    /// the real count (918) makes a 60 MB key, so the passing case uses the cheap key's size.
    fn server_key(bsk_inputs: usize, ksk_levels: usize) -> ServerKey {
        ServerKey {
            params: PARAMS,
            key_id: [0; 16],
            bootstrap_keys: vec![
                seeded_bsk(bsk_inputs, PARAMS.decomposition(Bootstrap::Precise)),
                seeded_bsk(PARAMS.lwe_dimension, PARAMS.decomposition(Bootstrap::Cheap)),
            ],
            keyswitch_key: SeededLweKeyswitchKey::new(
                0,
                DecompositionBaseLog(PARAMS.ks_base_log),
                DecompositionLevelCount(ksk_levels),
                LweDimension(PARAMS.big_lwe_dimension()),
                LweDimension(PARAMS.lwe_dimension),
                Seed(8).into(),
                native_modulus(),
            ),
        }
    }

    #[test]
    fn server_key_sizes_are_checked_against_the_parameters() {
        let err = server_key(1, PARAMS.ks_level).check().unwrap_err().to_string();
        assert!(err.contains("malformed server key: Precise bootstrap key"), "{err}");
        let mut key = server_key(1, PARAMS.ks_level);
        key.bootstrap_keys[0] = seeded_bsk(PARAMS.lwe_dimension, PARAMS.decomposition(Bootstrap::Precise));
        key.check().unwrap();
        let cheap = key.bootstrap_keys.pop().expect("two keys");
        let err = key.check().unwrap_err().to_string();
        assert!(err.contains("1 bootstrap keys, parameters say 2"), "{err}");
        key.bootstrap_keys.push(cheap);
        key.keyswitch_key = server_key(1, PARAMS.ks_level + 1).keyswitch_key;
        let err = key.check().unwrap_err().to_string();
        assert!(err.contains("keyswitch key"), "{err}");
        key.params.pbs_level = 9;
        let err = key.check().unwrap_err().to_string();
        assert!(err.contains("unknown parameter set"), "{err}");
    }

    #[test]
    fn expanded_key_takes_the_bytes_the_memory_estimate_counts() {
        let mut key = server_key(PARAMS.lwe_dimension, PARAMS.ks_level);
        key.bootstrap_keys[0] = seeded_bsk(PARAMS.lwe_dimension, PARAMS.decomposition(Bootstrap::Precise));
        let seeded_cheap = key.bootstrap_keys[1].as_ref().len() as u64 * 8;
        let expanded = key.expand();
        let fourier = |k: &FourierLweBootstrapKeyOwned| k.as_view().data().len() as u64 * 16;
        let precise = fourier(expanded.bootstrap_key(Bootstrap::Precise));
        let bytes = precise
            + fourier(expanded.bootstrap_key(Bootstrap::Cheap))
            + expanded.keyswitch_key.as_ref().len() as u64 * 8;
        assert_eq!(bytes, PARAMS.expanded_key_bytes());
        // Expanding holds the precise key standard and in the Fourier domain, the cheap one seeded.
        assert_eq!(2 * precise + seeded_cheap, PARAMS.expanding_key_bytes());
    }

    #[test]
    fn client_key_sizes_are_checked_against_the_parameters() {
        let key = |lwe: usize, poly: usize| ClientKey {
            params: PARAMS,
            key_id: [0; 16],
            small_key: LweSecretKey::new_empty_key(0, LweDimension(lwe)),
            glwe_key: GlweSecretKey::new_empty_key(0, GlweDimension(1), PolynomialSize(poly)),
        };
        key(PARAMS.lwe_dimension, PARAMS.polynomial_size).check().unwrap();
        let err = key(PARAMS.lwe_dimension + 1, PARAMS.polynomial_size)
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("small key has 919 coefficients"), "{err}");
        let err = key(PARAMS.lwe_dimension, 1024).check().unwrap_err().to_string();
        assert!(err.contains("GLWE key has 1024 coefficients"), "{err}");
    }

    #[test]
    fn only_plain_counter_seeds_are_accepted() {
        check_seeded("x", native_modulus(), Seed(5).into()).unwrap();
        let mut shifted = CompressionSeed::from(Seed(5));
        shifted.inner.first_index = shifted.inner.first_index.increased(1);
        let err = check_seeded("x", native_modulus(), shifted).unwrap_err().to_string();
        assert!(err.contains("compression seed"), "{err}");
        let err = check_seeded("x", CiphertextModulus::try_new_power_of_2(32).unwrap(), Seed(5).into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not 2^64"), "{err}");
    }
}
