//! Exact truncation, checked step by step on edge accumulators built from real bootstrap outputs.
//!
//! Random inputs hide a broken truncation (a wrong low bit rarely changes a table's output), so
//! every intermediate value is decrypted and compared with the clear one, on accumulators whose
//! low bits are all 0 or all 1, and on values that leave their window; for single-bit steps, digit
//! steps, extended steps (5 bits) and the plan the compiler picks.

mod common;

use pkn::circuit::{Requant, Residual, Shape, TruncStep};
use pkn::compile::noise::{plan_steps, DeferredResidual};
use pkn::encoding::{decode, encode};
use pkn::eval::clear::{lut_index, requant as requant_clear, table_output};
use pkn::eval::fhe::{Bootstrapper, DeferredAdd, Engine};
use pkn::keys::{ClientKey, EvaluationKey};
use pkn::params::{Bootstrap, FheParams};
use rayon::prelude::*;
use tfhe::core_crypto::prelude::{CiphertextModulus, ContiguousEntityContainer, LweCiphertextList, LweSize};

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

/// Sixteen activations in [0, 15], each the output of a real bootstrap (realistic noise), to be
/// combined with weights of 2-norm about 20, like a 3x3x4 convolution of 4-bit weights; returns the
/// ciphertexts (encoded with `acc_bits`), the weights and the clear weighted sum.
fn real_activations(engine: &Engine, client: &ClientKey, acc_bits: u32) -> (Vec<Vec<u64>>, Vec<i64>, i64) {
    let weights: Vec<i64> = vec![7, -5, 3, -7, 6, 1, -2, 4, -6, 5, 2, -3, 7, -4, 1, 5];
    let xs: Vec<i64> = (0..16).map(|i| (i * 5 + 2) % 16).collect();
    let base: i64 = weights.iter().zip(&xs).map(|(w, x)| w * x).sum();
    let identity: Vec<i64> = (0..16).collect();
    let lut = engine.table_accumulator(&identity, acc_bits);
    let fresh = client.encrypt(&xs, 4).par_decompress_into_lwe_ciphertext_list();
    let mut scratch = engine.scratch();
    let activations = fresh
        .iter()
        .map(|ct| {
            let mut out = vec![0u64; ct.as_ref().len()];
            engine.lookup(&mut scratch, ct.as_ref(), &lut, &mut out);
            out
        })
        .collect();
    (activations, weights, base)
}

/// The 2^12 x 3 key set with a 2^15 x 2 medium key and a narrow key: its parameters, the client
/// key and the expanded evaluation key.
fn keys() -> (FheParams, ClientKey, EvaluationKey) {
    let params = FheParams::stock_2_2_with_keys((12, 3), (15, 2)).with_narrow();
    let (client, key) = common::expanded_keys(params);
    (params, client, key)
}

/// Runs `requant` on the accumulator ciphertexts in `container` (adding `residual` along the way)
/// and checks every decrypted output against the clear layer on `accs`; `case(i)` names output i.
fn check_requant(
    engine: &Engine,
    client: &ClientKey,
    requant: &Requant,
    container: Vec<u64>,
    residual: Option<&DeferredAdd>,
    accs: &[i64],
    case: &dyn Fn(usize) -> String,
) {
    let size = LweSize(container.len() / accs.len());
    let input = LweCiphertextList::from_container(container, size, CiphertextModulus::new_native());
    let out = engine.requant(requant, input, 0, residual, None);
    let want = requant_clear(requant, accs);
    for (i, ct) in out.iter().enumerate() {
        assert_eq!(
            decode(client.phase(ct.as_ref()), requant.output_encoding_bits),
            want[i],
            "{}",
            case(i)
        );
    }
}

fn steps(bits: &[u32], precise: bool) -> Vec<TruncStep> {
    narrow_steps(bits, precise, false)
}

fn narrow_steps(bits: &[u32], precise: bool, narrow: bool) -> Vec<TruncStep> {
    bits.iter().map(|&bits| TruncStep { bits, precise, narrow }).collect()
}

#[test]
fn every_truncation_step_and_table_output_match_the_clear_values() {
    let (params, client, key) = keys();
    let engine = Engine::new(&key);
    let lut_bits = 4u32;
    let table: Vec<i64> = (0..16).map(|t| (t * 7 + 3) % 16).collect();

    let checked = std::sync::atomic::AtomicUsize::new(0);
    for acc_bits in [6u32, 10, 14] {
        let shift = acc_bits - lut_bits;
        let requant = Requant {
            name: "test".into(),
            shape: Shape {
                channels: 1,
                height: 1,
                width: 1,
            },
            acc_bits,
            lut_bits,
            tables: vec![table.clone()],
            output_encoding_bits: 8,
            output_bits: 4,
            steps: Vec::new(),
            table_key: Bootstrap::Precise,
        };
        let (activations, weights, base) = real_activations(&engine, &client, acc_bits);
        let norm2: i64 = weights.iter().map(|w| w * w).sum();
        let var = params.pbs_output_variance(Bootstrap::Precise) * norm2 as f64;
        let planned = plan_steps(&requant, var, &params, None).expect("the planner finds an exact plan");
        let widest = |d: u32| -> Vec<u32> { (0..shift).step_by(d as usize).map(|i| (shift - i).min(d)).collect() };
        // Narrow steps: 4-bit ones extended (the narrow key returns the digit), 3-bit digits (the
        // narrow key reads the sign), and single bits all on the narrow key where the accumulator
        // is narrow enough for its output noise.
        let mut plans = vec![
            steps(&vec![1; shift as usize], true),
            steps(&widest(4), true),
            steps(&widest(5), true),
            narrow_steps(&widest(4), true, true),
            narrow_steps(&widest(3), true, true),
            planned,
        ];
        if acc_bits <= 10 {
            plans.push(narrow_steps(&vec![1; shift as usize], false, true));
        }
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
        let out_table = engine.table_accumulator(&table, 8);
        for plan in &plans {
            assert_eq!(plan.iter().map(|s| s.bits).sum::<u32>(), shift);
            targets.par_iter().for_each_init(
                || engine.scratch(),
                |scratch, &target| {
                    let mut ct = weighted_sum(&activations, &weights, encode(target - base, acc_bits));
                    let (mut held, mut removed) = (acc_bits, 0);
                    for st in plan {
                        engine.truncation_step(scratch, &mut ct, held, &engine.step_luts(held, *st));
                        held -= st.bits;
                        removed += st.bits;
                        let got = decode(client.phase(&ct), held).rem_euclid(1 << (held + 1));
                        let want = (target >> removed).rem_euclid(1 << (held + 1));
                        assert_eq!(
                            got, want,
                            "B={acc_bits} target={target} plan={plan:?} after {removed} bits"
                        );
                        checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut out = vec![0u64; ct.len()];
                    engine.lookup(scratch, &ct, &out_table, &mut out);
                    let want = table_output(&table, lut_index(target, shift, lut_bits));
                    assert_eq!(
                        decode(client.phase(&out), 8),
                        want,
                        "B={acc_bits} target={target} plan={plan:?} table"
                    );
                },
            );
        }
    }
    assert!(checked.into_inner() >= 300);
}

/// A 5-bit split table (its lowest bit read by the last truncation step, then two bootstraps) on
/// every index, with low bits all 0 and all 1, and on values outside the window (the negacyclic
/// wrap of a direct table), after the planned steps and after forced ones (a single-bit last step,
/// a 2-bit digit with the table's bit, single bits): the whole layer, FHE against clear.
#[test]
fn split_tables_match_the_clear_values_on_every_index() {
    tables_on_every_index(5, &[5, 9], Bootstrap::Precise);
}

/// Direct and split tables on the medium and the cheap key, which layers whose consumers tolerate
/// more noise use: the whole layer, FHE against clear.
#[test]
fn tables_on_the_medium_and_cheap_keys_match_the_clear_values() {
    for key in [Bootstrap::Medium, Bootstrap::Cheap] {
        tables_on_every_index(4, &[9], key);
        tables_on_every_index(5, &[9], key);
    }
}

fn tables_on_every_index(lut_bits: u32, acc_widths: &[u32], table_key: Bootstrap) {
    let (params, client, key) = keys();
    let engine = Engine::new(&key);
    let entries = 1i64 << lut_bits;
    // Two channels with signed outputs whose halves differ by odd amounts (half units in M and D).
    let tables: Vec<Vec<i64>> = (0..2i64)
        .map(|c| (0..entries).map(|t| (t * (7 + 2 * c) + 3) % 23 - 9).collect())
        .collect();
    for &acc_bits in acc_widths {
        let shift = acc_bits - lut_bits;
        let (activations, weights, base) = real_activations(&engine, &client, acc_bits);
        let step = 1i64 << shift;
        let window = 1i64 << acc_bits;
        let mut targets: Vec<i64> = (0..entries).flat_map(|t| [t * step, t * step + step - 1]).collect();
        targets.extend([-1, -step, window, window + 3 * step - 1, 2 * window - 1]);
        let per_channel = targets.len();
        let mut requant = Requant {
            name: "table".into(),
            shape: Shape {
                channels: 2,
                height: 1,
                width: per_channel,
            },
            acc_bits,
            lut_bits,
            tables: tables.clone(),
            output_encoding_bits: 7,
            output_bits: 4,
            steps: Vec::new(),
            table_key,
        };
        let norm2: i64 = weights.iter().map(|w| w * w).sum();
        let var = params.pbs_output_variance(Bootstrap::Precise) * norm2 as f64;
        let planned = plan_steps(&requant, var, &params, None).expect("the planner finds an exact plan");
        let forced: &[&[u32]] = if shift == 0 || lut_bits < 5 || table_key != Bootstrap::Precise {
            &[]
        } else {
            &[&[4, 1], &[2, 3], &[1, 1, 1, 1, 1]]
        };
        let plans = std::iter::once(planned).chain(forced.iter().map(|bits| steps(bits, true)));
        for plan in plans {
            assert_eq!(plan.iter().map(|s| s.bits).sum::<u32>(), requant.truncated_bits());
            requant.steps = plan;
            let mut container = Vec::new();
            let mut accs = Vec::new();
            for _ in 0..2 {
                for &target in &targets {
                    container.extend(weighted_sum(&activations, &weights, encode(target - base, acc_bits)));
                    accs.push(target);
                }
            }
            check_requant(&engine, &client, &requant, container, None, &accs, &|i| {
                format!(
                    "B={acc_bits} W={lut_bits} table key {table_key:?} steps {:?} channel {} accumulator {}",
                    requant.steps,
                    i / per_channel,
                    accs[i]
                )
            });
        }
    }
}

/// A residual added bit by bit inside the truncation (docs/circuit.md): gains whose bits fall in
/// every step, the residual encoded with the full width or narrower (gains with trailing zeros),
/// accumulators with low bits all 0 and all 1 and outside the window; FHE against clear.
#[test]
fn a_deferred_residual_matches_the_clear_add_on_edge_values() {
    deferred_residual_on_edge_values(4);
}

/// The same before a split table, whose last step also reads the table's lowest bit.
#[test]
fn a_deferred_residual_before_a_split_table_matches_the_clear_add() {
    deferred_residual_on_edge_values(5);
}

/// A deferred residual into a 14-bit accumulator and a `lut_bits` table: 10 bits removed by the
/// truncation steps either way.
fn deferred_residual_on_edge_values(lut_bits: u32) {
    let (params, client, key) = keys();
    let engine = Engine::new(&key);
    let acc_bits = 14u32;
    let shift = acc_bits - lut_bits;
    let (activations, weights, base) = real_activations(&engine, &client, acc_bits);
    let step = 1i64 << shift;
    let window = 1i64 << acc_bits;
    let targets = [
        0,
        step - 1,
        step,
        window / 2 + step - 1,
        window - 1,
        -1,
        window,
        2 * window - 1,
    ];
    let rs: Vec<i64> = (0..targets.len() as i64).map(|k| (k * 7 + 3) % 16).collect();
    let table: Vec<i64> = (0..1i64 << lut_bits).map(|t| (t * 5 + 1) % 16).collect();
    let norm2: i64 = weights.iter().map(|w| w * w).sum();
    let var = params.pbs_output_variance(Bootstrap::Precise) * norm2 as f64;
    for gains in [vec![2923i64, 1023, 448], vec![8 * 45, 8 * 127, 64 * 5]] {
        let residual = Residual { from: 0, gains };
        let residual_bits = acc_bits - residual.gain_trailing_zeros(acc_bits);
        let mut requant = Requant {
            name: "deferred".into(),
            shape: Shape {
                channels: 3,
                height: 1,
                width: targets.len(),
            },
            acc_bits,
            lut_bits,
            tables: vec![table.clone(); 3],
            output_encoding_bits: 8,
            output_bits: 4,
            steps: Vec::new(),
            table_key: Bootstrap::Precise,
        };
        let identity: Vec<i64> = (0..16).collect();
        let lut = engine.table_accumulator(&identity, residual_bits);
        let fresh = client.encrypt(&rs, 4).par_decompress_into_lwe_ciphertext_list();
        let mut scratch = engine.scratch();
        let mut r_container = Vec::new();
        for _ in 0..3 {
            for ct in fresh.iter() {
                let mut out = vec![0u64; ct.as_ref().len()];
                engine.lookup(&mut scratch, ct.as_ref(), &lut, &mut out);
                r_container.extend(out);
            }
        }
        let size = activations[0].len();
        let r_values = LweCiphertextList::from_container(r_container, LweSize(size), CiphertextModulus::new_native());
        let deferred_noise = DeferredResidual {
            residual: &residual,
            bits: residual_bits,
            var: params.pbs_output_variance(Bootstrap::Precise),
        };
        let planned = plan_steps(&requant, var, &params, Some(&deferred_noise)).expect("the planner finds a plan");
        for plan in [steps(&[1; 10], true), steps(&[3, 4, 2, 1], true), planned] {
            requant.steps = plan;
            let mut container = Vec::new();
            for &h in &residual.gains {
                for (&target, &r) in targets.iter().zip(&rs) {
                    container.extend(weighted_sum(
                        &activations,
                        &weights,
                        encode(target - base - h * r, acc_bits),
                    ));
                }
            }
            let add = DeferredAdd::new(&residual, &requant, &r_values, residual_bits);
            let accs: Vec<i64> = (0..3).flat_map(|_| targets).collect();
            check_requant(&engine, &client, &requant, container, Some(&add), &accs, &|i| {
                format!(
                    "gains {:?} steps {:?} accumulator {}",
                    residual.gains, requant.steps, accs[i]
                )
            });
        }
    }
}
