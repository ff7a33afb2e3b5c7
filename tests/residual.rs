//! Residual adds (PKR-18's basic blocks): a small residual PKN with an identity shortcut and a
//! strided 1x1 kervolution shortcut, with deterministic pseudo-random weights, compiles, and its
//! encrypted output equals the clear integer circuit bit for bit, in one process and with each
//! layer split over several (threads standing in for MPI ranks).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};

use pkn::circuit::Circuit;
use pkn::compile::{compile, CompileOptions};
use pkn::eval::fhe::{self, Ciphertexts, EncryptedState, Exchanged, Processes};
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

fn residual_circuit() -> Circuit {
    let model = parse_model(&residual_model()).unwrap();
    compile(&model, &common::calibration()[..200], &CompileOptions::default()).unwrap()
}

#[test]
fn residual_blocks_run_encrypted_exactly() {
    let images = common::calibration();
    let circuit = residual_circuit();
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

/// Ranks of one inference as threads of this process: each gather puts every rank's slice on a
/// shared board and reads them all back in rank order.
struct ThreadRank {
    rank: usize,
    count: usize,
    board: Arc<(Mutex<Vec<Vec<u64>>>, Barrier)>,
}

impl Processes for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn count(&self) -> usize {
        self.count
    }

    fn gather(&self, mine: Ciphertexts, len: usize) -> Ciphertexts {
        let size = mine.lwe_size();
        let (slices, barrier) = &*self.board;
        slices.lock().unwrap()[self.rank] = mine.into_container();
        barrier.wait();
        let whole: Vec<u64> = slices.lock().unwrap().concat();
        // Nobody writes the board again before everyone has read it.
        barrier.wait();
        assert_eq!(whole.len(), len * size.0, "the slices cover the tensor");
        Ciphertexts::from_container(whole, size, pkn::params::native_modulus())
    }

    fn broadcast(&self, _bytes: Option<Vec<u8>>) -> Vec<u8> {
        unreachable!("every rank starts from the same state here")
    }

    fn exchanged(&self) -> Exchanged {
        Exchanged::default()
    }

    fn abort(&self) -> ! {
        panic!("rank {} aborted", self.rank)
    }
}

/// Three ranks each run their slices of the residual network (uneven slices and deferred residual
/// adds included), and each ends with the whole output, which decrypts to the clear circuit's
/// scores.
#[test]
fn residual_blocks_split_over_three_ranks_give_the_clear_result() {
    let circuit = residual_circuit();
    let (client, server) = ClientKey::generate(circuit.fhe_params().unwrap());
    let key = server.expand();
    let engine = fhe::Engine::new(&key);
    let input = pkn::encoding::quantize_pixels(&common::calibration()[203], circuit.input.bits);
    let cts = client
        .encrypt(&input, circuit.input.encoding_bits)
        .par_decompress_into_lwe_ciphertext_list();
    let count = 3;
    assert!(circuit.layers.iter().any(|l| l.output_shape().len() % count != 0));
    assert!(circuit.deferred_residuals().iter().any(Option::is_some));
    let board = Arc::new((Mutex::new(vec![Vec::new(); count]), Barrier::new(count)));
    let outputs: Vec<Ciphertexts> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..count)
            .map(|rank| {
                let processes = ThreadRank {
                    rank,
                    count,
                    board: board.clone(),
                };
                let (circuit, engine, state) = (&circuit, &engine, EncryptedState::start(&circuit, cts.clone()));
                scope.spawn(move || {
                    let done: Result<_, ()> = fhe::resume(circuit, engine, &processes, state, None, |_| Ok(()));
                    done.unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let clear = pkn::eval::clear::run(&circuit, &input);
    for (rank, out) in outputs.iter().enumerate() {
        assert_eq!(client.decrypt(out, circuit.output.bits), clear, "rank {rank}");
    }
}
