//! Residual adds (PKR-18's basic blocks): a small residual PKN with an identity shortcut and a
//! strided 1x1 kervolution shortcut, with deterministic pseudo-random weights, compiles, and its
//! encrypted output equals the clear integer circuit bit for bit.

mod common;

use std::collections::HashMap;

use pkn::compile::{compile, CompileOptions};
use pkn::eval::fhe;
use pkn::keys::ClientKey;
use pkn::model::parse_model;
use safetensors::tensor::{Dtype, TensorView};

/// Deterministic values in [-1, 1) (a 64-bit LCG), so the test needs no committed fixture.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

fn conv(name: &str, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> String {
    format!(
        r#"{{"op": "conv2d", "name": "{name}", "in_channels": {cin}, "out_channels": {cout}, "kernel": {k}, "stride": {stride}, "padding": {padding}}}"#
    )
}

fn pkn_bn(act: &str, bn: &str) -> String {
    format!(r#"{{"op": "pkn", "name": "{act}"}}, {{"op": "batch_norm", "name": "{bn}"}}"#)
}

fn bn(name: &str) -> String {
    format!(r#"{{"op": "batch_norm", "name": "{name}"}}"#)
}

/// Stem (1 -> 2 channels, 7x7), an identity block, a downsampling block with a 1x1 kervolution
/// shortcut (2 -> 3 channels, 4x4), average pool, classifier.
fn residual_model() -> Vec<u8> {
    let layers = [
        conv("stem", 1, 2, 3, 4, 1),
        pkn_bn("stem_act", "stem_bn"),
        conv("b1c1", 2, 2, 3, 1, 1),
        pkn_bn("b1act", "b1bn1"),
        conv("b1c2", 2, 2, 3, 1, 1),
        bn("b1bn2"),
        r#"{"op": "add", "name": "b1", "from": "stem_bn"}"#.to_string(),
        conv("b2c1", 2, 3, 3, 2, 1),
        pkn_bn("b2act", "b2bn1"),
        conv("b2c2", 3, 3, 3, 1, 1),
        bn("b2bn2"),
        format!(
            r#"{{"op": "add", "name": "b2", "from": "b1", "shortcut": [{}, {}]}}"#,
            conv("b2sc", 2, 3, 1, 2, 0),
            pkn_bn("b2scact", "b2scbn")
        ),
        r#"{"op": "avg_pool", "kernel": 4}, {"op": "flatten"}"#.to_string(),
        r#"{"op": "dense", "name": "fc", "in_features": 3, "out_features": 10}"#.to_string(),
    ];
    let arch = format!(
        r#"{{"name": "tiny-res", "input": [1, 28, 28], "classes": ["0","1","2","3","4","5","6","7","8","9"],
            "quantization": {{"input_bits": 4, "weight_bits": 4, "activation_bits": 4}}, "layers": [{}]}}"#,
        layers.join(", ")
    );
    let mut rng = Lcg(7);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        tensors.push((name.to_string(), shape, rng.vec(n, scale, offset)));
    };
    for (name, cin, cout, k) in [
        ("stem", 1, 2, 3),
        ("b1c1", 2, 2, 3),
        ("b1c2", 2, 2, 3),
        ("b2c1", 2, 3, 3),
        ("b2c2", 3, 3, 3),
        ("b2sc", 2, 3, 1),
    ] {
        add(&format!("{name}.weight"), vec![cout, cin, k, k], 0.5, 0.0);
        add(&format!("{name}.bias"), vec![cout], 0.1, 0.0);
    }
    for act in ["stem_act", "b1act", "b2act", "b2scact"] {
        add(&format!("{act}.cp"), vec![], 0.2, 0.5);
    }
    for (name, c) in [
        ("stem_bn", 2),
        ("b1bn1", 2),
        ("b1bn2", 2),
        ("b2bn1", 3),
        ("b2bn2", 3),
        ("b2scbn", 3),
    ] {
        add(&format!("{name}.weight"), vec![c], 0.3, 1.0);
        add(&format!("{name}.bias"), vec![c], 0.2, 0.0);
        add(&format!("{name}.running_mean"), vec![c], 0.5, 0.5);
        add(&format!("{name}.running_var"), vec![c], 0.3, 1.0);
    }
    add("fc.weight", vec![10, 3], 1.0, 0.0);
    add("fc.bias", vec![10], 0.1, 0.0);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, shape, data)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), data).unwrap()))
        .collect();
    let metadata = HashMap::from([
        ("format".to_string(), "pkn-model".to_string()),
        ("version".to_string(), "1".to_string()),
        ("architecture".to_string(), arch),
    ]);
    safetensors::tensor::serialize(views, &Some(metadata)).unwrap()
}

#[test]
fn residual_blocks_run_encrypted_exactly() {
    let model = parse_model(&residual_model()).unwrap();
    let images = common::calibration();
    let circuit = compile(&model, &images[..200], &CompileOptions::default()).unwrap();
    let residuals = circuit
        .layers
        .iter()
        .filter(|l| matches!(l, pkn::circuit::Layer::Linear(l) if l.residual.is_some()))
        .count();
    assert_eq!(residuals, 2, "one residual linear layer per block");
    let params = circuit.fhe_params().unwrap();
    let (client, server) = ClientKey::generate(params);
    let key = server.expand();
    let inputs: Vec<(String, Vec<i64>)> = (200..202)
        .map(|i| {
            let input = pkn::encoding::quantize_pixels(&images[i], circuit.input.bits);
            (format!("calibration image {i}"), input)
        })
        .collect();
    common::assert_fhe_equals_clear(&circuit, &client, &fhe::Engine::new(&key), &inputs);
}

#[test]
fn a_residual_add_reading_an_unknown_layer_is_refused() {
    let bytes = residual_model();
    let model = parse_model(&bytes).unwrap();
    let mut broken = model.clone();
    for node in &mut broken.nodes {
        if let pkn::model::Node::Add { from, .. } = node {
            *from = "b1c2".into();
        }
    }
    let err = compile(&broken, &common::calibration()[..10], &CompileOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("residual add b1 reads b1c2"), "{err}");
}
