//! Through the library: the decrypted FHE output of tiny-pkn equals the clear integer circuit,
//! bit for bit, on real Fashion-MNIST test images.

mod common;

use pkn::eval::fhe::Engine;

#[test]
fn fhe_output_equals_clear_output_on_three_test_images() {
    let (circuit, client, server) = common::tiny_pkn_with_keys();
    let key = server.expand();
    let samples = ["test-0-ankle-boot.png", "test-1-pullover.png", "test-2-trouser.png"];
    common::assert_fhe_equals_clear(
        &circuit,
        &client,
        &Engine::new(&key),
        &common::samples(&circuit, &samples),
    );
}
