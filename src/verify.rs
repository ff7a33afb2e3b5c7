//! The exactness check behind every FHE == clear claim: encrypt an input with the client key, run
//! the circuit on the ciphertexts, decrypt, and set the result beside the clear circuit's. The
//! tests assert on the comparison, `pkn eval --fhe` counts it.

use indicatif::ProgressBar;

use crate::circuit::Circuit;
use crate::eval::{clear, fhe};
use crate::keys::ClientKey;

/// The scores of one input, from the clear circuit and decrypted from the encrypted run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub clear: Vec<i64>,
    pub fhe: Vec<i64>,
}

impl Comparison {
    /// Whether the encrypted run gave the clear circuit's scores bit for bit.
    pub fn exact(&self) -> bool {
        self.fhe == self.clear
    }
}

/// Runs `circuit` on `input` (quantized pixels) in the clear and encrypted under `client` with
/// `engine`'s bootstraps.
pub fn fhe_matches_clear(
    circuit: &Circuit,
    client: &ClientKey,
    engine: &dyn fhe::Bootstrapper,
    input: &[i64],
    progress: Option<&ProgressBar>,
) -> Comparison {
    let cts = client
        .encrypt(input, circuit.input.encoding_bits)
        .par_decompress_into_lwe_ciphertext_list();
    let out = fhe::run_on(circuit, engine, cts, progress);
    Comparison {
        clear: clear::run(circuit, input),
        fhe: client.decrypt(&out, circuit.output.bits),
    }
}
