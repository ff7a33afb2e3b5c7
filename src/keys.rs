//! Key generation, encryption and decryption (client side), and the evaluation key (server side).
//!
//! Activations live under the *big* LWE key (the GLWE key read as an LWE key, dimension k*N):
//! the client encrypts pixels under it, linear layers work on it, and every bootstrap keyswitches
//! to the small key and comes back under the big key. The server key holds only encryptions of
//! secret-key bits (bootstrap key) and of big-key coefficients (keyswitch key): no secret.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

use crate::params::{Bootstrap, FheParams};

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

/// The evaluation key as stored: seeded (compressed) bootstrap and keyswitch keys.
#[derive(Serialize, Deserialize)]
pub struct ServerKey {
    pub params: FheParams,
    pub key_id: KeyId,
    bootstrap_key: SeededLweBootstrapKeyOwned<u64>,
    cheap_bootstrap_key: SeededLweBootstrapKeyOwned<u64>,
    keyswitch_key: SeededLweKeyswitchKeyOwned<u64>,
}

/// The evaluation key ready for computation: decompressed, bootstrap key in the Fourier domain.
pub struct EvaluationKey {
    pub params: FheParams,
    pub key_id: KeyId,
    pub bootstrap_key: FourierLweBootstrapKeyOwned,
    pub cheap_bootstrap_key: FourierLweBootstrapKeyOwned,
    pub keyswitch_key: LweKeyswitchKeyOwned<u64>,
}

/// The evaluation key decompressed, bootstrap keys still in the standard domain: what the GPU
/// backend uploads (it converts them to its own Fourier layout on the device).
pub struct StandardEvaluationKey {
    pub params: FheParams,
    pub key_id: KeyId,
    pub bootstrap_key: LweBootstrapKeyOwned<u64>,
    pub cheap_bootstrap_key: LweBootstrapKeyOwned<u64>,
    pub keyswitch_key: LweKeyswitchKeyOwned<u64>,
}

impl EvaluationKey {
    pub fn bootstrap_key(&self, which: Bootstrap) -> &FourierLweBootstrapKeyOwned {
        match which {
            Bootstrap::Precise => &self.bootstrap_key,
            Bootstrap::Cheap => &self.cheap_bootstrap_key,
        }
    }
}

/// Encoding `Delta = 2^(63 - bits)`: `bits` of message plus one padding bit.
pub fn delta(bits: u32) -> u64 {
    1u64 << (63 - bits)
}

/// Encode a signed integer with `Delta = 2^(63 - bits)` (wrapping, as the ciphertext does).
pub fn encode(value: i64, bits: u32) -> u64 {
    (value as u64).wrapping_mul(delta(bits))
}

/// Round a phase to the nearest multiple of Delta and return it as a signed integer in
/// [-2^bits, 2^bits).
pub fn decode(phase: u64, bits: u32) -> i64 {
    let d = delta(bits);
    let rounded = phase.wrapping_add(d / 2) / d;
    crate::eval::clear::wrap_signed(rounded as i64, bits)
}

fn native() -> CiphertextModulus<u64> {
    CiphertextModulus::new_native()
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
        let mut bootstrap_key = |which| {
            let (base_log, level) = params.decomposition(which);
            par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
                &small_key,
                &glwe_key,
                DecompositionBaseLog(base_log),
                DecompositionLevelCount(level),
                DynamicDistribution::<u64>::new_t_uniform(params.glwe_noise_bound_log2),
                native(),
                &mut *seeder,
            )
        };
        let (bootstrap_key, cheap_bootstrap_key) = (bootstrap_key(Bootstrap::Precise), bootstrap_key(Bootstrap::Cheap));
        let keyswitch_key = allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &glwe_key.as_lwe_secret_key(),
            &small_key,
            DecompositionBaseLog(params.ks_base_log),
            DecompositionLevelCount(params.ks_level),
            DynamicDistribution::<u64>::new_t_uniform(params.lwe_noise_bound_log2),
            native(),
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
                bootstrap_key,
                cheap_bootstrap_key,
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
            native(),
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

    /// The raw phase of a big-key ciphertext (message plus noise).
    pub fn phase(&self, ct: &[u64]) -> u64 {
        let ct = LweCiphertext::from_container(ct, native());
        decrypt_lwe_ciphertext(&self.glwe_key.as_lwe_secret_key(), &ct).0
    }

    /// Decrypt big-key ciphertexts encoded with `Delta = 2^(63 - bits)`.
    pub fn decrypt(&self, cts: &LweCiphertextListOwned<u64>, bits: u32) -> Vec<i64> {
        cts.iter().map(|ct| decode(self.phase(ct.as_ref()), bits)).collect()
    }
}

impl ServerKey {
    /// Regenerate the masks from their seeds, once per run.
    pub fn decompress(self) -> StandardEvaluationKey {
        StandardEvaluationKey {
            params: self.params,
            key_id: self.key_id,
            bootstrap_key: self.bootstrap_key.par_decompress_into_lwe_bootstrap_key(),
            cheap_bootstrap_key: self.cheap_bootstrap_key.par_decompress_into_lwe_bootstrap_key(),
            keyswitch_key: self.keyswitch_key.par_decompress_into_lwe_keyswitch_key(),
        }
    }

    /// Decompress and convert to the Fourier domain, once per run.
    pub fn expand(self) -> EvaluationKey {
        let standard = self.decompress();
        EvaluationKey {
            params: standard.params,
            key_id: standard.key_id,
            bootstrap_key: to_fourier(&standard.bootstrap_key),
            cheap_bootstrap_key: to_fourier(&standard.cheap_bootstrap_key),
            keyswitch_key: standard.keyswitch_key,
        }
    }
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
    use super::*;

    #[test]
    fn encode_decode_round_trip_with_wrap() {
        for bits in [3u32, 8, 12] {
            for v in [-(1i64 << bits), -1, 0, 1, (1 << bits) - 1] {
                assert_eq!(decode(encode(v, bits), bits), v, "bits {bits} v {v}");
                let noisy = encode(v, bits).wrapping_add(delta(bits) / 2 - 1);
                assert_eq!(decode(noisy, bits), v);
            }
        }
    }
}
