//! Exact truncation, checked bit by bit on edge accumulators built from real bootstrap outputs.
//!
//! Random inputs hide a broken truncation (a wrong low bit rarely changes a table's output), so
//! every intermediate value is decrypted and compared with the clear one, on accumulators whose
//! low bits are all 0 or all 1, and on values that leave their window.

use pkn::eval::clear::{lut_index, table_output};
use pkn::eval::fhe::Engine;
use pkn::keys::{decode, delta, encode, ClientKey};
use pkn::params::{Bootstrap, FheParams};
use tfhe::core_crypto::prelude::ContiguousEntityContainer;

/// Weighted sum of ciphertexts (wrapping), plus a plaintext constant.
fn weighted_sum(cts: &[Vec<u64>], weights: &[i64], constant: u64) -> Vec<u64> {
    let mut acc = vec![0u64; cts[0].len()];
    for (ct, &w) in cts.iter().zip(weights) {
        for (a, c) in acc.iter_mut().zip(ct) {
            *a = a.wrapping_add(c.wrapping_mul(w as u64));
        }
    }
    *acc.last_mut().unwrap() = acc.last().unwrap().wrapping_add(constant);
    acc
}

#[test]
fn every_extracted_bit_and_table_output_match_the_clear_values() {
    let params = FheParams::stock_2_2_with_pbs(12, 3);
    let (client, server) = ClientKey::generate(params);
    let key = server.expand();
    let engine = Engine::new(&key);
    let mut scratch = engine.scratch();
    let lut_bits = 4u32;
    let table: Vec<i64> = (0..16).map(|t| (t * 7 + 3) % 16).collect();

    // Sixteen activations in [0, 15], each the output of a real bootstrap (realistic noise),
    // combined with weights of 2-norm about 20, like a 3x3x4 convolution of 4-bit weights.
    let weights: Vec<i64> = vec![7, -5, 3, -7, 6, 1, -2, 4, -6, 5, 2, -3, 7, -4, 1, 5];
    let xs: Vec<i64> = (0..16).map(|i| (i * 5 + 2) % 16).collect();
    let mut checked_bits = 0;
    for acc_bits in [6u32, 10, 14] {
        let shift = acc_bits - lut_bits;
        let identity: Vec<i64> = (0..16).collect();
        let lut = engine.table_accumulator(&identity, acc_bits);
        let fresh = client.encrypt(&xs, lut_bits).par_decompress_into_lwe_ciphertext_list();
        let activations: Vec<Vec<u64>> = fresh
            .iter()
            .map(|ct| {
                let mut out = vec![0u64; ct.as_ref().len()];
                engine.lookup(&mut scratch, ct.as_ref(), &lut, &mut out);
                out
            })
            .collect();
        let base: i64 = weights.iter().zip(&xs).map(|(w, x)| w * x).sum();
        let step = 1i64 << shift;
        let window = 1i64 << acc_bits;
        // Low bits all 0 and all 1, at the bottom, middle and top of the window, and outside it.
        let targets = [
            0,
            step - 1,
            step,
            window / 2 - 1,
            window / 2,
            window / 2 + step - 1,
            window - step,
            window - 1,
            -1,
            -step,
            window,
            window + step - 1,
            2 * window - 1,
        ];
        for &target in &targets {
            let constant = encode(target - base, acc_bits);
            let mut ct = weighted_sum(&activations, &weights, constant);
            for s in 0..shift {
                let held = acc_bits - s;
                let sign = engine.sign_accumulator(held);
                // The precise key where the next steps need its low noise (as the planner decides).
                let which = if held > 9 { Bootstrap::Precise } else { Bootstrap::Cheap };
                engine.truncation_step(&mut scratch, &mut ct, held, &sign, which);
                let bits_now = held - 1;
                let got = decode(client.phase(&ct), bits_now).rem_euclid(1 << (bits_now + 1));
                let want = (target >> (s + 1)).rem_euclid(1 << (bits_now + 1));
                assert_eq!(got, want, "B={acc_bits} target={target} after removing {} bits", s + 1);
                checked_bits += 1;
            }
            let out_bits = 8;
            let mut out = vec![0u64; ct.len()];
            engine.lookup(&mut scratch, &ct, &engine.table_accumulator(&table, out_bits), &mut out);
            let want = table_output(&table, lut_index(target, shift, lut_bits));
            assert_eq!(
                decode(client.phase(&out), out_bits),
                want,
                "B={acc_bits} target={target} table"
            );
        }
    }
    assert!(checked_bits >= 200, "checked {checked_bits} bits");
    assert_eq!(delta(4), 1 << 59);
}
