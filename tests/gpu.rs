//! On an NVIDIA GPU: the decrypted output of tiny-pkn with the GPU engine equals the clear integer
//! circuit, bit for bit. Build with `scripts/build-gpu.sh test ...` (docs/gpu.md), run with --ignored.
#![cfg(feature = "gpu")]

mod common;

use pkn::eval::gpu::GpuEngine;

#[test]
#[ignore = "needs an NVIDIA GPU; run with --ignored on a GPU machine"]
fn gpu_output_equals_clear_output_on_two_test_images() {
    let (circuit, client, server) = common::tiny_pkn_with_keys();
    let engine = GpuEngine::new(&server.decompress()).unwrap();
    let samples = ["test-0-ankle-boot.png", "test-1-pullover.png"];
    common::assert_fhe_equals_clear(&circuit, &client, &engine, &common::samples(&circuit, &samples));
}
