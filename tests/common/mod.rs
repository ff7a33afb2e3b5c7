//! Set-up shared by the tests: the shipped model (tiny-pkn) and its calibration images, a fresh
//! key pair, the bundled sample images, and the FHE == clear check.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod cli;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pkn::circuit::Circuit;
use pkn::compile::CompileOptions;
use pkn::eval::fhe::Bootstrapper;
use pkn::io::image::load_gray_png;
use pkn::io::resolve::resolve_model;
use pkn::keys::{ClientKey, EvaluationKey, ServerKey};
use pkn::params::FheParams;
use pkn::verify::fhe_matches_clear;
use pkn::zoo::{Shipped, DEFAULT_MODEL};

/// The shipped tiny-pkn's model file.
pub fn tiny_pkn_path() -> PathBuf {
    resolve_model(DEFAULT_MODEL).unwrap()
}

/// The shipped calibration images (the first Fashion-MNIST training images).
pub fn calibration() -> Vec<Vec<u8>> {
    Shipped::find(DEFAULT_MODEL).unwrap().calibration
}

/// tiny-pkn compiled with the default options.
pub fn tiny_pkn() -> Circuit {
    Shipped::find(DEFAULT_MODEL)
        .unwrap()
        .compile(&CompileOptions::default())
        .unwrap()
}

/// tiny-pkn compiled with the default options, and a fresh key pair for its parameters.
pub fn tiny_pkn_with_keys() -> (Circuit, ClientKey, ServerKey) {
    let circuit = tiny_pkn();
    let (client, server) = ClientKey::generate(circuit.fhe_params().unwrap());
    (circuit, client, server)
}

/// A fresh key pair for `params`, the server's evaluation key expanded.
pub fn expanded_keys(params: FheParams) -> (ClientKey, EvaluationKey) {
    let (client, server) = ClientKey::generate(params);
    (client, server.expand())
}

/// The bundled sample `name` (samples/), quantized to the circuit's input.
pub fn sample_input(circuit: &Circuit, name: &str) -> Vec<i64> {
    let s = circuit.input.shape;
    let pixels = load_gray_png(&sample_path(name), s.width, s.height).unwrap();
    pkn::encoding::quantize_pixels(&pixels, circuit.input.bits)
}

/// The bundled sample `name` (samples/).
pub fn sample_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(name)
}

/// Each named sample with its quantized input, for [`assert_fhe_equals_clear`].
pub fn samples(circuit: &Circuit, names: &[&str]) -> Vec<(String, Vec<i64>)> {
    names
        .iter()
        .map(|name| (name.to_string(), sample_input(circuit, name)))
        .collect()
}

/// Encrypts each named input, evaluates it with `engine` and asserts that it decrypts to the clear
/// circuit's scores, bit for bit; the inputs must give different scores, or the check proves little.
pub fn assert_fhe_equals_clear(
    circuit: &Circuit,
    client: &ClientKey,
    engine: &dyn Bootstrapper,
    inputs: &[(String, Vec<i64>)],
) {
    let mut distinct = HashSet::new();
    for (name, input) in inputs {
        let result = fhe_matches_clear(circuit, client, engine, input, None);
        assert_eq!(result.fhe, result.clear, "FHE differs from clear on {name}");
        distinct.insert(result.clear);
    }
    assert_eq!(distinct.len(), inputs.len(), "the inputs give equal scores");
}
