//! The TFHE engine on tfhe's `core_crypto` layer: parameter sets, keys, public-key encryption,
//! encrypted linear layers and encrypted lookup tables. See docs/CRYPTO.md for the maths.

pub mod error;
pub mod ggsw;
pub mod keys;
pub mod keyswitch;
pub mod linear;
pub mod lut;
#[cfg(any(feature = "backend", test))]
pub mod optimise;
pub mod params;
pub mod pke;
pub mod raw;
pub mod switch;

pub use tfhe::core_crypto::commons::math::random::{CompressionSeed, Seed, Seeder};
use tfhe::core_crypto::prelude::*;

/// The native 2^64 ciphertext modulus every ciphertext here uses.
pub fn modulus() -> CiphertextModulus<u64> {
    CiphertextModulus::new_native()
}

/// Gaussian noise with standard deviation 2^log2_std on the 2^64 scale.
pub fn gaussian(log2_std: f64) -> Gaussian<f64> {
    Gaussian::from_dispersion_parameter(StandardDev(2f64.powf(log2_std - 64.0)), 0.0)
}

/// A seeder drawing from the operating system's CSPRNG (works on every target, unlike
/// hardware-specific seeders).
pub struct OsSeeder;

impl Seeder for OsSeeder {
    fn seed(&mut self) -> Seed {
        let mut bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Seed(u128::from_le_bytes(bytes))
    }

    fn is_available() -> bool {
        true
    }
}

/// A fresh encryption generator seeded from the OS.
pub fn encryption_generator() -> EncryptionRandomGenerator<DefaultRandomGenerator> {
    let mut seeder = OsSeeder;
    let seed = seeder.seed();
    EncryptionRandomGenerator::new(seed, &mut seeder)
}

/// Encrypt `plain` (a whole number of polynomials of `glwe.poly_size` coefficients) as a
/// seeded GLWE list under `sk`: returns the compression seed and the bodies.
#[cfg(any(feature = "backend", test))]
pub(crate) fn encrypt_seeded_glwes(
    sk: &GlweSecretKeyOwned<u64>,
    glwe: params::GlweParams,
    plain: Vec<u64>,
) -> (CompressionSeed, Vec<u64>) {
    let n = glwe.poly_size.0;
    assert_eq!(plain.len() % n, 0);
    let mut seeder = OsSeeder;
    let mut list = SeededGlweCiphertextList::new(
        0u64,
        GlweSize(2),
        PolynomialSize(n),
        GlweCiphertextCount(plain.len() / n),
        CompressionSeed::from(seeder.seed()),
        modulus(),
    );
    encrypt_seeded_glwe_ciphertext_list(
        sk,
        &mut list,
        &PlaintextList::from_container(plain),
        gaussian(glwe.log2_std),
        &mut seeder,
    );
    (list.compression_seed(), list.into_container())
}
