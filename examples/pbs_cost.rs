//! Cost of one activation step on this machine: key switch (tfhe's u64 one, and the engine's
//! modulo 2^32, alone and batched), classic blind rotation and tfhe's multi-bit blind rotation
//! (grouping 2 and 3, one thread), at the 128-bit set's shapes.
//! `cargo run --release --example pbs_cost [-- --classic-only [--reps N]]` (`--classic-only`:
//! key switch and classic blind rotation only, N times each (default 3): for slow runs such as
//! under qemu, and for instruction counts by difference, scripts/count-insns.sh).
//! `--optimised`: at the parameters `hedge params` prints as the optimiser's choice (n and
//! the two gadgets) instead of the shipped set's.

use hedge::crypto::keys::{ks_secret_key, KsScalar};
use hedge::crypto::keyswitch::keyswitch_expanded;
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use hedge::crypto::{gaussian, modulus, OsSeeder, Seeder};
use std::time::Instant;
use tfhe::core_crypto::prelude::*;

fn time<F: FnMut()>(label: &str, reps: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("{label:<40} {ms:8.2} ms");
    ms
}

fn main() {
    let shipped = ParameterSet::for_level(SecurityLevel::L128);
    let p = if std::env::args().any(|a| a == "--optimised") {
        hedge::crypto::optimise::bootstrap_layer(&shipped).params
    } else {
        shipped
    };
    println!(
        "n {}, blind rotation {}x2^{}, key switch {}x2^{}",
        p.lwe_dim.0, p.pbs.level.0, p.pbs.base_log.0, p.ks.level.0, p.ks.base_log.0
    );
    let n_big = p.pbs_glwe.poly_size;
    let mut seeder = OsSeeder;
    let mut sgen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let mut egen =
        EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), &mut seeder);
    let glwe = GlweSecretKey::generate_new_binary(GlweDimension(1), n_big, &mut sgen);
    let big = glwe.clone().into_lwe_secret_key();
    let classic_only = std::env::args().any(|a| a == "--classic-only");
    let reps_arg = std::env::args()
        .skip_while(|a| a != "--reps")
        .nth(1)
        .and_then(|r| r.parse().ok());
    let (groupings, reps) = if classic_only {
        (&[1usize][..], reps_arg.unwrap_or(3))
    } else {
        (&[1usize, 2, 3][..], reps_arg.unwrap_or(10))
    };
    for &g in groupings {
        let n = p.lwe_dim.0 / g * g;
        let lwe = LweSecretKey::generate_new_binary(LweDimension(n), &mut sgen);
        let ct = allocate_and_encrypt_new_lwe_ciphertext(
            &lwe,
            Plaintext(1u64 << 60),
            gaussian(p.lwe_log2_std),
            modulus(),
            &mut egen,
        );
        let mut acc = GlweCiphertext::new(0u64, GlweSize(2), n_big, modulus());
        if g == 1 {
            let big_ct = allocate_and_encrypt_new_lwe_ciphertext(
                &big,
                Plaintext(1u64 << 60),
                gaussian(p.pbs_glwe.log2_std),
                modulus(),
                &mut egen,
            );
            if !classic_only {
                let ksk = allocate_and_generate_new_lwe_keyswitch_key(
                    &big,
                    &lwe,
                    p.ks.base_log,
                    p.ks.level,
                    gaussian(p.lwe_log2_std),
                    modulus(),
                    &mut egen,
                );
                let mut out = LweCiphertext::new(0u64, LweSize(n + 1), modulus());
                time(&format!("key switch {} -> {n}, u64", n_big.0), reps, || {
                    keyswitch_lwe_ciphertext(&ksk, &big_ct, &mut out)
                });
            }
            // The engine's key switch: modulo 2^32, in batches (hedge::crypto::keyswitch; the
            // engine's pass also expands the seeded key's masks, once an inference).
            let ksk = allocate_and_generate_new_lwe_keyswitch_key(
                &ks_secret_key(big.as_ref()),
                &ks_secret_key(lwe.as_ref()),
                p.ks.base_log,
                p.ks.level,
                gaussian(p.lwe_log2_std),
                CiphertextModulus::<KsScalar>::new_native(),
                &mut egen,
            );
            let mut out = vec![
                LweCiphertext::new(
                    0 as KsScalar,
                    LweSize(n + 1),
                    CiphertextModulus::new_native()
                );
                32
            ];
            time(&format!("key switch {} -> {n}, u32", n_big.0), reps, || {
                keyswitch_expanded(&ksk, std::slice::from_ref(&big_ct), &mut out[..1])
            });
            if !classic_only {
                let batch = vec![big_ct.clone(); 32];
                let ms = time("  the same, batch of 32", reps, || {
                    keyswitch_expanded(&ksk, &batch, &mut out)
                });
                println!("{:<40} {:8.2} ms", "  per ciphertext", ms / 32.0);
            }
            let bsk = allocate_and_generate_new_lwe_bootstrap_key(
                &lwe,
                &glwe,
                p.pbs.base_log,
                p.pbs.level,
                gaussian(p.pbs_glwe.log2_std),
                modulus(),
                &mut egen,
            );
            let mut f = FourierLweBootstrapKey::new(
                bsk.input_lwe_dimension(),
                bsk.glwe_size(),
                bsk.polynomial_size(),
                bsk.decomposition_base_log(),
                bsk.decomposition_level_count(),
            );
            convert_standard_lwe_bootstrap_key_to_fourier(&bsk, &mut f);
            let ms = lwe_ciphertext_modulus_switch(
                ct.as_view(),
                n_big.to_blind_rotation_input_modulus_log(),
            );
            time(&format!("classic blind rotation n={n}"), reps, || {
                blind_rotate_assign(&ms, &mut acc, &f)
            });
        } else {
            let bsk = allocate_and_generate_new_lwe_multi_bit_bootstrap_key(
                &lwe,
                &glwe,
                p.pbs.base_log,
                p.pbs.level,
                LweBskGroupingFactor(g),
                gaussian(p.pbs_glwe.log2_std),
                modulus(),
                &mut egen,
            );
            let mut f = FourierLweMultiBitBootstrapKey::new(
                bsk.input_lwe_dimension(),
                bsk.glwe_size(),
                bsk.polynomial_size(),
                bsk.decomposition_base_log(),
                bsk.decomposition_level_count(),
                bsk.grouping_factor(),
            );
            convert_standard_lwe_multi_bit_bootstrap_key_to_fourier(&bsk, &mut f);
            time(
                &format!("multi-bit g={g} blind rotation n={n}, 1 thread"),
                reps,
                || {
                    modulus_switch_multi_bit_blind_rotate_assign(
                        &ct,
                        &mut acc,
                        &f,
                        ThreadCount(1),
                        true,
                    )
                },
            );
        }
    }
}
