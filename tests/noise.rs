//! The noise model behind the 2^-64 claim, checked against measurement: the observed variance of
//! bootstrap outputs (decrypted phases, with the client key) must match tfhe's formulas that the
//! compiler uses.

use pkn::circuit::TruncStep;
use pkn::eval::fhe::Engine;
use pkn::keys::{encode, ClientKey};
use pkn::params::{Bootstrap, FheParams};
use rayon::prelude::*;
use tfhe::core_crypto::prelude::ContiguousEntityContainer;

const SAMPLES: usize = 256;

fn observed_variance(errors: &[u64]) -> f64 {
    let torus = 2f64.powi(64);
    errors.iter().map(|&e| (e as i64 as f64 / torus).powi(2)).sum::<f64>() / errors.len() as f64
}

#[test]
fn bootstrap_output_variance_matches_the_compilers_prediction() {
    let params = FheParams::stock_2_2_with_pbs(12, 3);
    let (client, server) = ClientKey::generate(params);
    let key = server.expand();
    let engine = Engine::new(&key);
    let values: Vec<i64> = (0..SAMPLES as i64).map(|i| i % 16).collect();
    let fresh = client.encrypt(&values, 4).par_decompress_into_lwe_ciphertext_list();
    let identity: Vec<i64> = (0..16).collect();
    let table = engine.table_accumulator(&identity, 10);
    // Precise key: table lookups; noise = phase - encoded value.
    let precise: Vec<u64> = (0..SAMPLES)
        .into_par_iter()
        .map_init(
            || engine.scratch(),
            |scratch, i| {
                let ct = fresh.get(i);
                let mut out = vec![0u64; ct.as_ref().len()];
                engine.lookup(scratch, ct.as_ref(), &table, &mut out);
                client.phase(&out).wrapping_sub(encode(values[i], 10))
            },
        )
        .collect();
    // Cheap key: one single-bit truncation step on fresh encryptions (whose own noise is 2^-47.8).
    let held = 10;
    let wide = client.encrypt(&values, held).par_decompress_into_lwe_ciphertext_list();
    let step = TruncStep {
        bits: 1,
        precise: false,
    };
    let luts = engine.step_luts(held, 1);
    let cheap: Vec<u64> = (0..SAMPLES)
        .into_par_iter()
        .map_init(
            || engine.scratch(),
            |scratch, i| {
                let mut ct = wide.get(i).as_ref().to_vec();
                engine.truncation_step(scratch, &mut ct, held, step, &luts);
                client.phase(&ct).wrapping_sub(encode(values[i] >> 1, held - 1))
            },
        )
        .collect();
    for (name, errors, which) in [
        ("precise", &precise, Bootstrap::Precise),
        ("cheap", &cheap, Bootstrap::Cheap),
    ] {
        let observed = observed_variance(errors);
        let predicted = params.pbs_output_variance(which);
        let ratio = observed / predicted;
        println!(
            "{name} bootstrap output: observed std 2^{:.2}, predicted 2^{:.2}, variance ratio {ratio:.2}",
            observed.log2() / 2.0,
            predicted.log2() / 2.0
        );
        // 256 samples estimate a variance within about 10 %; the model must be right within 2x.
        assert!(
            (0.5..2.0).contains(&ratio),
            "{name}: observed/predicted variance {ratio}"
        );
    }
}
