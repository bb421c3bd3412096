//! Measured noise of the wide linear layer (2304 → 512, 5-bit inputs and weights) with
//! plaintext and public-key-encrypted features: max and rms of phase − Δ·(W·x) over outputs.
//! `cargo run --release --example noise`

use hedge::crypto::ggsw::FftEngine;
use hedge::crypto::keys::{self, KeyKind};
use hedge::crypto::linear::{EncryptedMatrix, PackedLayout};
use hedge::crypto::params::{ParameterSet, SecurityLevel};
use rand::{Rng, SeedableRng};
use tfhe::core_crypto::prelude::*;

fn main() {
    let p = ParameterSet::for_level(SecurityLevel::L128);
    let ks = keys::generate(p);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (out, inp) = (512usize, 2304usize);
    let w: Vec<i64> = (0..out * (inp + 1))
        .map(|_| rng.gen_range(-15..=15))
        .collect();
    let mut x: Vec<i64> = (0..inp).map(|_| rng.gen_range(0..=31)).collect();
    x.push(1);
    let layout = PackedLayout::new(p.wide.poly_size.0, out, inp + 1).unwrap();
    let delta = 1u64 << 39;
    {
        // Public-key encryption noise, and one external product by GGSW(1) of a fresh GLWE(0).
        let mut pk = ks.public.wide.prepare().unwrap();
        let n = p.wide.poly_size.0;
        let ct = pk.encrypt_glwe(&vec![0u64; n]);
        let rms = |ct: &GlweCiphertextOwned<u64>| {
            let mut pt = PlaintextList::new(0u64, PlaintextCount(n));
            decrypt_glwe_ciphertext(&ks.secret.wide, ct, &mut pt);
            (pt.as_ref()
                .iter()
                .map(|&v| (v as i64 as f64).powi(2))
                .sum::<f64>()
                / n as f64)
                .sqrt()
                .log2()
        };
        println!("public-key GLWE(0) noise rms 2^{:.1}", rms(&ct));
        let mut one = vec![0u64; n];
        one[0] = 1;
        let mut engine = FftEngine::new(n);
        let mut gen = hedge::crypto::encryption_generator();
        let mut zero = GlweCiphertext::new(
            0u64,
            GlweSize(2),
            PolynomialSize(n),
            hedge::crypto::modulus(),
        );
        encrypt_glwe_ciphertext(
            &ks.secret.wide,
            &mut zero,
            &PlaintextList::new(0u64, PlaintextCount(n)),
            hedge::crypto::gaussian(p.wide.log2_std),
            &mut gen,
        );
        for (b, l) in [(2usize, 30usize), (4, 15), (6, 10), (8, 7), (11, 5)] {
            let d = hedge::crypto::params::DecompParams::new(b, l);
            let ggsw = pk.encrypt_ggsw(&one, d).unwrap();
            let mut out = vec![0u64; 2 * n];
            engine.add_external_product(&mut out, &ggsw, zero.as_ref());
            let out =
                GlweCiphertext::from_container(out, PolynomialSize(n), hedge::crypto::modulus());
            let mut std_ggsw = GgswCiphertext::new(
                0u64,
                GlweSize(2),
                PolynomialSize(n),
                DecompositionBaseLog(b),
                DecompositionLevelCount(l),
                hedge::crypto::modulus(),
            );
            encrypt_constant_ggsw_ciphertext(
                &ks.secret.wide,
                &mut std_ggsw,
                Cleartext(1u64),
                hedge::crypto::gaussian(p.wide.log2_std),
                &mut gen,
            );
            let sk_ggsw =
                hedge::crypto::ggsw::ExactGgsw::from_standard(&mut engine, std_ggsw.as_ref(), d)
                    .unwrap();
            let mut out2 = vec![0u64; 2 * n];
            engine.add_external_product(&mut out2, &sk_ggsw, zero.as_ref());
            let out2 =
                GlweCiphertext::from_container(out2, PolynomialSize(n), hedge::crypto::modulus());
            println!(
                "  secret-key GGSW(1) {b}x{l}: noise rms 2^{:.1}",
                rms(&out2)
            );
            let predicted = ((2 * l * n) as f64).sqrt()
                * (((1u64 << (2 * b)) - 1) as f64 / 12.0).sqrt()
                * 2f64.powf(7.7);
            println!(
                "GGSW_pk(1) ⊡ GLWE(0) {b}x{l}: noise rms 2^{:.1} (digits×noise predicts 2^{:.1})",
                rms(&out),
                predicted.log2()
            );
        }
    }
    for drop in [0u8, 8] {
        let m = EncryptedMatrix::encrypt(
            &ks.secret.wide,
            KeyKind::Wide,
            p.wide,
            &w,
            layout,
            &vec![delta; out],
            &vec![0; out],
            drop,
        )
        .prepare()
        .unwrap();
        let want: Vec<i64> = (0..out)
            .map(|j| (0..=inp).map(|i| w[j * (inp + 1) + i] * x[i]).sum())
            .collect();
        let report = |label: &str, ct: &GlweCiphertextOwned<u64>| {
            let mut pt = PlaintextList::new(0u64, PlaintextCount(p.wide.poly_size.0));
            decrypt_glwe_ciphertext(&ks.secret.wide, ct, &mut pt);
            let errs: Vec<f64> = (0..out)
                .map(|j| {
                    pt.as_ref()[j].wrapping_sub((want[j] as u64).wrapping_mul(delta)) as i64 as f64
                })
                .collect();
            let max = errs.iter().fold(0f64, |m, e| m.max(e.abs()));
            let rms = (errs.iter().map(|e| e * e).sum::<f64>() / out as f64).sqrt();
            println!(
                "drop {drop:>2} bits, {label:<22} max 2^{:.1}  rms 2^{:.1}",
                max.log2(),
                rms.log2()
            );
        };
        report("plaintext features", &m.mul_plain(&x)[0]);
        let mut pk = ks.public.wide.prepare().unwrap();
        let mut engine = FftEngine::new(p.wide.poly_size.0);
        let t = std::time::Instant::now();
        let enc = m
            .mul_encrypting(&mut pk, &x, p.features_wide, &mut engine)
            .unwrap();
        report(
            &format!("encrypted ({:.0} ms)", t.elapsed().as_secs_f64() * 1e3),
            &enc[0],
        );
    }
}

#[allow(dead_code)]
fn unused() {}
