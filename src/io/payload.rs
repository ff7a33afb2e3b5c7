//! Payloads of the ciphertext files, with the checks a decoded one must pass before use.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::{LweCiphertextListOwned, SeededLweCiphertextListOwned};

use crate::circuit::OutputSpec;
use crate::encoding::MAX_ENCODING_BITS;
use crate::error::{Error, Result};
use crate::keys::check_seeded;
use crate::params::FheParams;

/// Payload of an encrypted input file.
#[derive(Serialize, Deserialize)]
pub struct EncryptedInput {
    pub ciphertexts: SeededLweCiphertextListOwned<u64>,
}

impl EncryptedInput {
    /// The `count` ciphertexts under `params`' big key, decompressed; the sizes and seed are
    /// checked first, since decompression allocates and expands by them.
    pub fn into_ciphertexts(self, params: &FheParams, count: usize) -> Result<LweCiphertextListOwned<u64>> {
        let list = &self.ciphertexts;
        let lwe_size = params.big_lwe_dimension() + 1;
        // Seeded ciphertexts store only their bodies: one u64 each.
        if list.lwe_size().0 != lwe_size || list.as_ref().len() != count {
            return Err(Error::malformed(
                "encrypted input",
                format!(
                    "holds {} ciphertexts of size {}, the model needs {count} of size {lwe_size}",
                    list.as_ref().len(),
                    list.lwe_size().0
                ),
            ));
        }
        check_seeded("encrypted input", list.ciphertext_modulus(), list.compression_seed())?;
        Ok(self.ciphertexts.par_decompress_into_lwe_ciphertext_list())
    }
}

/// Payload of an encrypted result file: the outputs and how to read them.
#[derive(Serialize, Deserialize)]
pub struct EncryptedOutput {
    pub output: OutputSpec,
    pub ciphertexts: LweCiphertextListOwned<u64>,
}

impl EncryptedOutput {
    /// Refuse a result that is not one big-key ciphertext per class under `params`, or whose
    /// encoding no key decodes: decryption indexes and shifts by them.
    pub fn check(&self, params: &FheParams) -> Result<()> {
        let bad = |message: String| Err(Error::malformed("encrypted result", message));
        let list = &self.ciphertexts;
        let lwe_size = params.big_lwe_dimension() + 1;
        let classes = self.output.classes.len();
        if list.lwe_size().0 != lwe_size || list.as_ref().len() != classes * lwe_size {
            return bad(format!(
                "holds {} values in ciphertexts of size {}, expected {classes} ciphertexts (one per class) of size \
                 {lwe_size}",
                list.as_ref().len(),
                list.lwe_size().0
            ));
        }
        if !list.ciphertext_modulus().is_native_modulus() {
            return bad("ciphertext modulus is not 2^64".into());
        }
        if !(1..=MAX_ENCODING_BITS).contains(&self.output.bits) {
            return bad(format!("encoding of {} bits", self.output.bits));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tfhe::core_crypto::commons::math::random::Seed;
    use tfhe::core_crypto::prelude::{CiphertextModulus, LweCiphertextList, LweSize, SeededLweCiphertextList};

    use super::*;

    const PARAMS: FheParams = FheParams::stock_2_2_with_pbs(23, 1);

    fn input(lwe_size: usize, count: usize) -> EncryptedInput {
        EncryptedInput {
            ciphertexts: SeededLweCiphertextList::from_container(
                vec![0u64; count],
                LweSize(lwe_size),
                Seed(1).into(),
                CiphertextModulus::new_native(),
            ),
        }
    }

    #[test]
    fn input_sizes_are_checked_before_decompressing() {
        let big = PARAMS.big_lwe_dimension() + 1;
        assert_eq!(
            input(big, 3)
                .into_ciphertexts(&PARAMS, 3)
                .unwrap()
                .lwe_ciphertext_count()
                .0,
            3
        );
        // Decompressing this one would allocate 2^40 words per ciphertext.
        let err = input(1 << 40, 3).into_ciphertexts(&PARAMS, 3).unwrap_err().to_string();
        assert!(err.contains("holds 3 ciphertexts of size 1099511627776"), "{err}");
        let err = input(big, 2).into_ciphertexts(&PARAMS, 3).unwrap_err().to_string();
        assert!(err.contains("the model needs 3"), "{err}");
    }

    #[test]
    fn output_sizes_and_encoding_are_checked() {
        let big = PARAMS.big_lwe_dimension() + 1;
        let output = |lwe_size: usize, words: usize, bits: u32| EncryptedOutput {
            output: OutputSpec {
                bits,
                scale: 1.0,
                classes: vec!["a".into(), "b".into()],
            },
            ciphertexts: LweCiphertextList::from_container(
                vec![0u64; words],
                LweSize(lwe_size),
                CiphertextModulus::new_native(),
            ),
        };
        output(big, 2 * big, 9).check(&PARAMS).unwrap();
        let err = output(big, big, 9).check(&PARAMS).unwrap_err().to_string();
        assert!(err.contains("expected 2 ciphertexts"), "{err}");
        let err = output(big, 2 * big, 70).check(&PARAMS).unwrap_err().to_string();
        assert!(err.contains("encoding of 70 bits"), "{err}");
    }
}
