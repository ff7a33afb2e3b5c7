//! Throughput of tfhe's classic blind rotation, one at a time and in batches of pkn's
//! `fhe::BATCH` (tfhe's batched blind rotation: each GGSW applied to the whole batch in turn, as
//! pkn's engine runs it), against multi-bit blind rotation (grouping factors g), all spread over the
//! machine's threads as pkn spreads a layer's bootstraps; and the keyswitch, one at a time and
//! batched (docs/benchmarks.md). Multi-bit runs single-threaded per bootstrap here, from tfhe's own
//! kernels (GGSW preparation, external product).
//!
//! `cargo run --release --example multi_bit_throughput -- [n] [base_log] [levels] [count] [g...]`
//! (defaults: 918 23 1 40, no multi-bit); n must be a multiple of every g. `PKN_GLWE=KxN` sets the
//! GLWE dimension and polynomial size (default 1x2048; 2x1024 and 4x512 keep the same 2,048-word
//! big key).
use pkn::eval::fhe::{keyswitch_batch, BATCH};
use rayon::prelude::*;
use std::time::Instant;
use tfhe::core_crypto::algorithms::polynomial_algorithms::polynomial_wrapping_monic_monomial_div_assign;
use tfhe::core_crypto::fft_impl::fft64::crypto::bootstrap::batch_blind_rotate_assign_scratch;
use tfhe::core_crypto::fft_impl::fft64::crypto::ggsw::{
    add_external_product_assign, add_external_product_assign_scratch,
};
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(918);
    let base: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(23);
    let level: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let count: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(40);
    let groupings: Vec<usize> = args.iter().skip(5).map(|s| s.parse().unwrap()).collect();
    let glwe_shape = std::env::var("PKN_GLWE").unwrap_or_else(|_| "1x2048".into());
    let (k, size) = glwe_shape.split_once('x').expect("PKN_GLWE is KxN");
    let poly = PolynomialSize(size.parse().expect("N is a number"));
    let glwe_dim = GlweDimension(k.parse().expect("K is a number"));
    let mut boxed = new_seeder();
    let seeder = boxed.as_mut();
    let mut sgen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let mut egen = EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
    let small = allocate_and_generate_new_binary_lwe_secret_key(LweDimension(n), &mut sgen);
    let glwe = allocate_and_generate_new_binary_glwe_secret_key(glwe_dim, poly, &mut sgen);
    let noise = DynamicDistribution::<u64>::new_t_uniform(17);
    let modulus = CiphertextModulus::new_native();
    let fft = Fft::new(poly);
    let cts: Vec<LweCiphertextOwned<u64>> = (0..count)
        .map(|i| {
            allocate_and_encrypt_new_lwe_ciphertext(
                &small,
                Plaintext((i as u64) << 59),
                DynamicDistribution::<u64>::new_t_uniform(45),
                modulus,
                &mut egen,
            )
        })
        .collect();
    let lut = GlweCiphertextOwned::new(1u64 << 60, glwe_dim.to_glwe_size(), poly, modulus);
    let log_mod = CiphertextModulusLog((2 * poly.0).trailing_zeros() as usize);

    // classic
    let bsk = par_allocate_and_generate_new_lwe_bootstrap_key(
        &small,
        &glwe,
        DecompositionBaseLog(base),
        DecompositionLevelCount(level),
        noise,
        modulus,
        &mut egen,
    );
    let mut fbsk = FourierLweBootstrapKeyOwned::new(
        bsk.input_lwe_dimension(),
        bsk.glwe_size(),
        bsk.polynomial_size(),
        bsk.decomposition_base_log(),
        bsk.decomposition_level_count(),
    );
    par_convert_standard_lwe_bootstrap_key_to_fourier(&bsk, &mut fbsk);
    drop(bsk);
    let t = Instant::now();
    let out: Vec<u64> = cts
        .par_iter()
        .map_init(
            || {
                buffers(
                    blind_rotate_assign_mem_optimized_requirement::<u64>(glwe_dim.to_glwe_size(), poly, fft.as_view())
                        .unaligned_bytes_required(),
                )
            },
            |buffers, ct| {
                let switched = lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(ct.as_view(), log_mod);
                let mut acc = lut.clone();
                blind_rotate_assign_mem_optimized(&switched, &mut acc, &fbsk, fft.as_view(), buffers.stack());
                acc.as_ref()[0]
            },
        )
        .collect();
    let classic = t.elapsed().as_secs_f64() / count as f64;
    println!(
        "classic n={n} k={} N={} 2^{base}x{level}: {:.2} ms per PBS (2 threads) [{}]",
        glwe_dim.0,
        poly.0,
        classic * 1e3,
        out[0] >> 60
    );
    let t = Instant::now();
    let out: Vec<u64> = cts
        .par_chunks(BATCH)
        .map_init(
            || {
                buffers(
                    batch_blind_rotate_assign_scratch::<u64>(
                        glwe_dim.to_glwe_size(),
                        poly,
                        CiphertextCount(BATCH),
                        fft.as_view(),
                    )
                    .unaligned_bytes_required(),
                )
            },
            |buffers, chunk| {
                let switched: Vec<_> = chunk
                    .iter()
                    .map(|ct| lwe_ciphertext_centered_binary_modulus_switch::<u64, usize, _>(ct.as_view(), log_mod))
                    .collect();
                let mut accs = GlweCiphertextList::new(
                    0u64,
                    glwe_dim.to_glwe_size(),
                    poly,
                    GlweCiphertextCount(chunk.len()),
                    modulus,
                );
                for mut acc in accs.iter_mut() {
                    acc.as_mut().copy_from_slice(lut.as_ref());
                }
                fbsk.as_view()
                    .batch_blind_rotate_assign(accs.as_mut_view(), &switched, fft.as_view(), buffers.stack());
                accs.as_ref()[0]
            },
        )
        .collect();
    let batched = t.elapsed().as_secs_f64() / count as f64;
    println!(
        "classic n={n} 2^{base}x{level}, batches of {BATCH}: {:.2} ms per PBS (2 threads), {:.2}x one at a time [{}]",
        batched * 1e3,
        classic / batched,
        out[0] >> 60
    );
    drop(fbsk);

    // The keyswitch every bootstrap starts with (big key -> small key, 2^4 x 4), for scale.
    let ksk = allocate_and_generate_new_lwe_keyswitch_key(
        &glwe.as_lwe_secret_key(),
        &small,
        DecompositionBaseLog(4),
        DecompositionLevelCount(4),
        DynamicDistribution::<u64>::new_t_uniform(45),
        modulus,
        &mut egen,
    );
    let big = LweCiphertextOwned::new(
        3u64 << 58,
        glwe.as_lwe_secret_key().lwe_dimension().to_lwe_size(),
        modulus,
    );
    let t = Instant::now();
    let bodies: Vec<u64> = (0..count)
        .into_par_iter()
        .map(|_| {
            let mut out = LweCiphertextOwned::new(0u64, LweSize(n + 1), modulus);
            keyswitch_lwe_ciphertext(&ksk, &big, &mut out);
            *out.get_body().data
        })
        .collect();
    let keyswitch = t.elapsed().as_secs_f64() / count as f64;
    println!(
        "keyswitch {} -> {n}, 2^4x4: {:.2} ms each (2 threads), {:.2} of the classic blind rotation [{}]",
        glwe_dim.0 * poly.0,
        keyswitch * 1e3,
        keyswitch / classic,
        bodies[0] >> 60
    );
    let inputs: Vec<u64> = (0..BATCH).flat_map(|_| big.as_ref().iter().copied()).collect();
    let t = Instant::now();
    let bodies: Vec<u64> = (0..count.div_ceil(BATCH))
        .into_par_iter()
        .map(|_| {
            let mut out = vec![0u64; BATCH * (n + 1)];
            keyswitch_batch(&ksk, &inputs, &mut out);
            out[n]
        })
        .collect();
    let batched_keyswitch = t.elapsed().as_secs_f64() / (count.div_ceil(BATCH) * BATCH) as f64;
    println!(
        "keyswitch in batches of {BATCH}: {:.2} ms each (2 threads), {:.2}x one at a time, {:.2} of the batched blind rotation [{}]",
        batched_keyswitch * 1e3,
        keyswitch / batched_keyswitch,
        batched_keyswitch / batched,
        bodies[0] >> 60
    );

    for g in groupings {
        let gf = LweBskGroupingFactor(g);
        let t0 = Instant::now();
        let mbsk = par_allocate_and_generate_new_lwe_multi_bit_bootstrap_key(
            &small,
            &glwe,
            DecompositionBaseLog(base),
            DecompositionLevelCount(level),
            gf,
            noise,
            modulus,
            &mut egen,
        );
        let mut fm = FourierLweMultiBitBootstrapKeyOwned::new(
            mbsk.input_lwe_dimension(),
            mbsk.glwe_size(),
            mbsk.polynomial_size(),
            mbsk.decomposition_base_log(),
            mbsk.decomposition_level_count(),
            gf,
        );
        par_convert_standard_lwe_multi_bit_bootstrap_key_to_fourier(&mbsk, &mut fm);
        drop(mbsk);
        let keygen = t0.elapsed().as_secs_f64();
        let ggsws: Vec<_> = fm.ggsw_iter().collect();
        let per = gf.ggsw_per_multi_bit_element().0;
        let t = Instant::now();
        let out: Vec<u64> = cts
            .par_iter()
            .map_init(
                || {
                    (
                        buffers(
                            add_external_product_assign_scratch::<u64>(glwe_dim.to_glwe_size(), poly, fft.as_view())
                                .unaligned_bytes_required(),
                        ),
                        FourierGgswCiphertext::new(
                            glwe_dim.to_glwe_size(),
                            poly,
                            DecompositionBaseLog(base),
                            DecompositionLevelCount(level),
                        ),
                        FourierPolynomial::new(poly),
                        GlweCiphertextOwned::new(0u64, glwe_dim.to_glwe_size(), poly, modulus),
                    )
                },
                |(buffers, ggsw, mono, other), ct| {
                    let switched = StandardMultiBitModulusSwitchedCt {
                        input: ct.as_view(),
                        grouping_factor: gf,
                        log_modulus: log_mod,
                    };
                    let mut acc = lut.clone();
                    let body = switched.switched_modulus_input_lwe_body();
                    acc.as_mut_polynomial_list()
                        .iter_mut()
                        .for_each(|mut p| polynomial_wrapping_monic_monomial_div_assign(&mut p, MonomialDegree(body)));
                    for w in 0..n / g {
                        prepare_multi_bit_ggsw_mem_optimized(
                            ggsw,
                            &ggsws[w * per..(w + 1) * per],
                            switched.switched_modulus_input_mask_per_group(w),
                            mono,
                            fft.as_view(),
                        );
                        other.as_mut().fill(0);
                        add_external_product_assign(
                            other.as_mut_view(),
                            ggsw.as_view(),
                            acc.as_view(),
                            fft.as_view(),
                            buffers.stack(),
                        );
                        std::mem::swap(&mut acc, other);
                    }
                    acc.as_ref()[0]
                },
            )
            .collect();
        let mb = t.elapsed().as_secs_f64() / count as f64;
        println!(
            "multi-bit g={g}: {:.2} ms per PBS (2 threads), {:.2}x classic; keygen+fourier {:.1} s [{}]",
            mb * 1e3,
            classic / mb,
            keygen,
            out[0] >> 60
        );
    }
}

/// Scratch memory of `bytes` for tfhe's Fourier kernels.
fn buffers(bytes: usize) -> ComputationBuffers {
    let mut b = ComputationBuffers::new();
    b.resize(bytes);
    b
}
