//! On an NVIDIA GPU: the decrypted output of tiny-pkn with the GPU engine equals the clear integer
//! circuit, bit for bit. Build with `scripts/build-gpu.sh test ...` (docs/gpu.md), run with --ignored.
#![cfg(feature = "gpu")]

use pkn::cli::compile_model;
use pkn::compile::CompileOptions;
use pkn::eval::gpu::GpuEngine;
use pkn::eval::{clear, fhe};
use pkn::io::{image::load_gray_png, resolve::resolve_model};
use pkn::keys::ClientKey;

#[test]
#[ignore = "needs an NVIDIA GPU; run with --ignored on a GPU machine"]
fn gpu_output_equals_clear_output_on_two_test_images() {
    let circuit = compile_model(&resolve_model("tiny-pkn").unwrap(), &CompileOptions::default()).unwrap();
    let (client, server) = ClientKey::generate(circuit.fhe_params().unwrap());
    let engine = GpuEngine::new(&server.decompress()).unwrap();
    let samples = ["test-0-ankle-boot.png", "test-1-pullover.png"];
    let s = circuit.input.shape;
    let mut distinct = std::collections::HashSet::new();
    for name in samples {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("samples")
            .join(name);
        let pixels = load_gray_png(&path, s.width, s.height).unwrap();
        let input = clear::quantize_pixels(&pixels, circuit.input.bits);
        let want = clear::run(&circuit, &input);
        let cts = client
            .encrypt(&input, circuit.input.encoding_bits)
            .par_decompress_into_lwe_ciphertext_list();
        let out = fhe::run_on(&circuit, &engine, cts, None);
        assert_eq!(
            client.decrypt(&out, circuit.output.bits),
            want,
            "GPU differs from clear on {name}"
        );
        distinct.insert(want);
    }
    // Different score vectors, or the comparison proves little.
    assert_eq!(distinct.len(), samples.len());
}
