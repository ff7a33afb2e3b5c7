//! Criterion benchmarks: one keyswitch + bootstrap per key, a batch of them as the engine runs
//! them, one requant layer, and the whole
//! tiny-pkn encrypted inference. `make bench` runs them (the whole inference takes minutes per
//! sample; set PKN_BENCH_QUICK=1 to skip it).

use criterion::{criterion_group, criterion_main, Criterion};
use pkn::circuit::{Layer, TruncStep};
use pkn::compile::CompileOptions;
use pkn::eval::fhe;
use pkn::io::{image::load_gray_png, resolve::resolve_model};
use pkn::keys::ClientKey;
use pkn::params::Bootstrap;
use pkn::zoo::compile_model;
use tfhe::core_crypto::prelude::ContiguousEntityContainer;

fn benches(c: &mut Criterion) {
    let circuit = compile_model(&resolve_model("tiny-pkn").unwrap(), &CompileOptions::default()).unwrap();
    // tiny-pkn's set with a narrow key, so that every kind of bootstrap is measured.
    let params = circuit.fhe_params().unwrap().with_narrow();
    let (client, server) = ClientKey::generate(params);
    let key = server.expand();
    let engine = fhe::Engine::new(&key);
    let mut scratch = engine.scratch();
    let ct = client.encrypt(&[5], 10).par_decompress_into_lwe_ciphertext_list();
    let ct = ct.get(0).as_ref().to_vec();

    let mut group = c.benchmark_group("bootstrap");
    for (bits, precise, narrow) in [
        (1, false, false),
        (1, true, false),
        (4, false, false),
        (1, false, true),
        (4, false, true),
    ] {
        let step = TruncStep { bits, precise, narrow };
        let luts = engine.step_luts(10, step);
        let keys: Vec<String> = step.rule(false).keys().map(|k| format!("{k:?}")).collect();
        let name = format!(
            "truncation step of {bits} bit(s), keys {} ({} KS + PBS, 1 thread)",
            keys.join(" + "),
            step.rule(false).bootstraps()
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut x = ct.clone();
                engine.truncation_step(&mut scratch, &mut x, 10, &luts);
                x
            })
        });
    }
    // A batch of bootstraps as the engine runs them on one thread: each block of the keyswitch key
    // and each GGSW of the bootstrap key read once for the whole batch.
    let batch: Vec<u64> = (0..fhe::BATCH).flat_map(|_| ct.iter().copied()).collect();
    let single_bit = |narrow| {
        engine.step_luts(
            10,
            TruncStep {
                bits: 1,
                precise: false,
                narrow,
            },
        )
    };
    let (wide_sign, narrow_sign) = (single_bit(false), single_bit(true));
    let table: Vec<i64> = (0..16).collect();
    let table = engine.table_accumulator(&table, 10);
    for which in params.keys() {
        let lut = match which {
            Bootstrap::Narrow => narrow_sign.sign().0,
            Bootstrap::Cheap => wide_sign.sign().0,
            Bootstrap::Precise | Bootstrap::Medium => &table,
        };
        let name = format!(
            "batch of {} KS + PBS, {which:?} key {} (1 thread)",
            fhe::BATCH,
            params.key_label(which)
        );
        group.bench_function(name, |b| {
            b.iter(|| engine.bootstrap_batch(&mut scratch, &batch, fhe::Luts::Same(lut), which))
        });
    }
    // A 5-bit split table after its layer's truncation steps (the last one reads the table's lowest
    // bit), on conv1 of tiny-pkn compiled with 5-bit tables: one activation.
    let wide = compile_model(
        &resolve_model("tiny-pkn").unwrap(),
        &CompileOptions {
            lut_bits: Some(5),
            ..CompileOptions::default()
        },
    )
    .unwrap();
    if let Some(Layer::Requant(r)) = wide.layers.iter().find(|l| matches!(l, Layer::Requant(_))) {
        let luts = fhe::LayerLuts::new(&params, r);
        let split = luts.split.as_ref().expect("5-bit tables are split");
        let acc = client
            .encrypt(&[345], r.acc_bits)
            .par_decompress_into_lwe_ciphertext_list();
        let acc = acc.get(0).as_ref().to_vec();
        let mut out = vec![0u64; acc.len()];
        let name = format!(
            "{}: steps {:?} and a 5-bit split table ({} PBS, 1 thread)",
            r.name,
            r.steps.iter().map(|s| s.bits).collect::<Vec<_>>(),
            r.pbs_per_activation()
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut x = acc.clone();
                for (held, step_luts) in &luts.steps {
                    engine.truncation_step(&mut scratch, &mut x, *held, step_luts);
                }
                engine.split_lookup(&mut scratch, &x, split, 0, &mut out)
            })
        });
    }
    group.finish();

    let pixels = load_gray_png(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/test-0-ankle-boot.png"),
        28,
        28,
    )
    .unwrap();
    let input = pkn::encoding::quantize_pixels(&pixels, circuit.input.bits);
    let encrypted = client
        .encrypt(&input, circuit.input.encoding_bits)
        .par_decompress_into_lwe_ciphertext_list();

    let mut group = c.benchmark_group("layer");
    group.sample_size(10);
    // conv1 and its requant (784 activations) as a one-layer circuit.
    let mut first = circuit.clone();
    first.layers.truncate(2);
    if let Layer::Requant(r) = &mut first.layers[1] {
        r.output_encoding_bits = circuit.output.bits;
    }
    group.bench_function("tiny-pkn conv1 + truncation + tables (2 threads)", |b| {
        b.iter(|| fhe::run(&first, &key, encrypted.clone(), None))
    });
    group.finish();

    if std::env::var_os("PKN_BENCH_QUICK").is_none() {
        let mut group = c.benchmark_group("inference");
        group.sample_size(10);
        group.bench_function("tiny-pkn whole encrypted inference (2 threads)", |b| {
            b.iter(|| fhe::run(&circuit, &key, encrypted.clone(), None))
        });
        group.finish();
    }
}

criterion_group!(fhe_benches, benches);
criterion_main!(fhe_benches);
