//! Through the library: the decrypted FHE output of tiny-pkn equals the clear integer circuit,
//! bit for bit, on a real Fashion-MNIST test image (tests/long_runs.rs: two more).

mod common;

use pkn::eval::fhe::Engine;

#[test]
fn fhe_output_equals_clear_output_on_a_test_image() {
    let (circuit, client, server) = common::tiny_pkn_with_keys();
    let key = server.expand();
    let samples = ["test-1-pullover.png"];
    common::assert_fhe_equals_clear(
        &circuit,
        &client,
        &Engine::new(&key),
        &common::samples(&circuit, &samples),
    );
}
