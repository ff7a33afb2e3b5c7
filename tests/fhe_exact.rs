//! Through the library: the decrypted FHE output of tiny-pkn equals the clear integer circuit,
//! bit for bit, on real Fashion-MNIST test images.

use pkn::cli::compile_model;
use pkn::compile::CompileOptions;
use pkn::eval::{clear, fhe};
use pkn::io::{image::load_gray_png, resolve::resolve_model};
use pkn::keys::ClientKey;

#[test]
fn fhe_output_equals_clear_output_on_three_test_images() {
    let circuit = compile_model(&resolve_model("tiny-pkn").unwrap(), &CompileOptions::default()).unwrap();
    let params = circuit.fhe_params().unwrap();
    let (client, server) = ClientKey::generate(params);
    let key = server.expand();
    let samples = ["test-0-ankle-boot.png", "test-1-pullover.png", "test-2-trouser.png"];
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
        let out = fhe::run(&circuit, &key, cts, None);
        let got = client.decrypt(&out, circuit.output.bits);
        assert_eq!(got, want, "FHE differs from clear on {name}");
        distinct.insert(want);
    }
    // The three images must give different score vectors, or the comparison proves little.
    assert_eq!(distinct.len(), samples.len());
}
