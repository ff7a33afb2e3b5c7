//! Set-up shared by the encrypted tests: tiny-pkn's circuit and keys, the bundled sample images,
//! and the FHE == clear check.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::HashSet;

use pkn::circuit::Circuit;
use pkn::cli::compile_model;
use pkn::compile::CompileOptions;
use pkn::eval::clear;
use pkn::eval::fhe::Ciphertexts;
use pkn::io::{image::load_gray_png, resolve::resolve_model};
use pkn::keys::{ClientKey, ServerKey};

/// tiny-pkn compiled with the default options, and a fresh key pair for its parameters.
pub fn tiny_pkn_with_keys() -> (Circuit, ClientKey, ServerKey) {
    let circuit = compile_model(&resolve_model("tiny-pkn").unwrap(), &CompileOptions::default()).unwrap();
    let (client, server) = ClientKey::generate(circuit.fhe_params().unwrap());
    (circuit, client, server)
}

/// The bundled sample `name` (samples/), quantized to the circuit's input.
pub fn sample_input(circuit: &Circuit, name: &str) -> Vec<i64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name);
    let s = circuit.input.shape;
    let pixels = load_gray_png(&path, s.width, s.height).unwrap();
    clear::quantize_pixels(&pixels, circuit.input.bits)
}

/// Encrypts each sample, evaluates it with `run` and asserts that it decrypts to the clear
/// circuit's scores, bit for bit; the samples must give different scores, or the check proves little.
pub fn assert_fhe_equals_clear(
    circuit: &Circuit,
    client: &ClientKey,
    samples: &[&str],
    run: impl Fn(Ciphertexts) -> Ciphertexts,
) {
    let mut distinct = HashSet::new();
    for name in samples {
        let input = sample_input(circuit, name);
        let want = clear::run(circuit, &input);
        let cts = client
            .encrypt(&input, circuit.input.encoding_bits)
            .par_decompress_into_lwe_ciphertext_list();
        let got = client.decrypt(&run(cts), circuit.output.bits);
        assert_eq!(got, want, "FHE differs from clear on {name}");
        distinct.insert(want);
    }
    assert_eq!(distinct.len(), samples.len(), "the samples give equal scores");
}
