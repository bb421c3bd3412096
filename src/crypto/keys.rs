//! Keys, split by who may hold them.
//!
//! - [`SecretKeys`]: the backend's decryption keys. Never serialised into anything the edge
//!   receives; the type is not part of [`crate::bundle::EdgeBundle`].
//! - [`PublicKeys`]: public encryption keys (for features encrypted on the edge side).
//! - [`EvaluationKeys`]: bootstrapping and key-switching keys (variant `act` only).
//!
//! [`EdgeKeys`] is what an edge bundle carries: public + evaluation keys, nothing else.

use super::error::{CryptoError, Result};
use super::params::ParameterSet;
use super::pke::PublicKey;
use super::raw::U64s;
#[cfg(any(feature = "backend", test))]
use super::{gaussian, OsSeeder, Seeder};
use super::{modulus, CompressionSeed};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tfhe::core_crypto::commons::generators::MaskRandomGenerator;
use tfhe::core_crypto::prelude::*;

/// Identifies a key set: the first 16 bytes of SHA-256 over the public material.
pub(crate) type KeyId = [u8; 16];

#[cfg(any(feature = "backend", test))]
/// The backend's secret keys.
pub struct SecretKeys {
    pub params: ParameterSet,
    pub key_id: KeyId,
    pub wide: GlweSecretKeyOwned<u64>,
    pub pbs: GlweSecretKeyOwned<u64>,
    pub lwe: LweSecretKeyOwned<u64>,
}

#[cfg(any(feature = "backend", test))]
/// On-disk form of the secret keys: binary coefficients packed as bits.
#[derive(Serialize, Deserialize)]
struct SecretKeysFile {
    magic: [u8; 8],
    params: ParameterSet,
    key_id: KeyId,
    wide: Vec<u8>,
    pbs: Vec<u8>,
    lwe: Vec<u8>,
}

#[cfg(any(feature = "backend", test))]
const SECRET_MAGIC: [u8; 8] = *b"HEDGESK1";

#[cfg(any(feature = "backend", test))]
fn pack_bits(key: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; key.len().div_ceil(8)];
    for (i, &b) in key.iter().enumerate() {
        out[i / 8] |= ((b & 1) as u8) << (i % 8);
    }
    out
}

#[cfg(any(feature = "backend", test))]
fn unpack_bits(bits: &[u8], len: usize) -> Result<Vec<u64>> {
    if bits.len() != len.div_ceil(8) {
        return Err(CryptoError::SecretKeyFile(format!(
            "it holds {} bytes, expected {}",
            bits.len(),
            len.div_ceil(8)
        )));
    }
    Ok((0..len)
        .map(|i| ((bits[i / 8] >> (i % 8)) & 1) as u64)
        .collect())
}

/// A GLWE secret key as the key file stores it (for leak checks).
#[cfg(test)]
pub(crate) fn packed(k: &GlweSecretKeyOwned<u64>) -> Vec<u8> {
    pack_bits(k.as_ref())
}

/// An LWE secret key as the key file stores it (for leak checks).
#[cfg(test)]
pub(crate) fn packed_lwe(k: &LweSecretKeyOwned<u64>) -> Vec<u8> {
    pack_bits(k.as_ref())
}

#[cfg(any(feature = "backend", test))]
/// Secret keys are wiped from memory when dropped.
impl Drop for SecretKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.wide.as_mut().zeroize();
        self.pbs.as_mut().zeroize();
        self.lwe.as_mut().zeroize();
    }
}

#[cfg(any(feature = "backend", test))]
impl SecretKeys {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&SecretKeysFile {
            magic: SECRET_MAGIC,
            params: self.params,
            key_id: self.key_id,
            wide: pack_bits(self.wide.as_ref()),
            pbs: pack_bits(self.pbs.as_ref()),
            lwe: pack_bits(self.lwe.as_ref()),
        })
        .expect("serialising to a Vec cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let f: SecretKeysFile =
            postcard::from_bytes(bytes).map_err(|e| CryptoError::SecretKeyFile(e.to_string()))?;
        if f.magic != SECRET_MAGIC {
            return Err(CryptoError::SecretKeyFile("bad magic".into()));
        }
        let p = f.params;
        if p != ParameterSet::for_level(p.security) {
            return Err(CryptoError::SecretKeyFile(format!(
                "its {}-bit parameter set is not this version's (keys from an older hedge: run \
                 hedge keygen, then hedge protect)",
                p.security
            )));
        }
        Ok(Self {
            params: p,
            key_id: f.key_id,
            wide: GlweSecretKey::from_container(
                unpack_bits(&f.wide, p.wide.poly_size.0)?,
                p.wide.poly_size,
            ),
            pbs: GlweSecretKey::from_container(
                unpack_bits(&f.pbs, p.pbs_glwe.poly_size.0)?,
                p.pbs_glwe.poly_size,
            ),
            lwe: LweSecretKey::from_container(unpack_bits(&f.lwe, p.lwe_dim.0)?),
        })
    }

    /// The key words, for locking them in memory.
    pub fn words(&self) -> [&[u64]; 3] {
        [self.wide.as_ref(), self.pbs.as_ref(), self.lwe.as_ref()]
    }

    pub fn key(&self, kind: KeyKind) -> &GlweSecretKeyOwned<u64> {
        match kind {
            KeyKind::Wide => &self.wide,
            KeyKind::Pbs => &self.pbs,
        }
    }
}

/// Which GLWE key (and shape) a ciphertext is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    Wide,
    Pbs,
}

/// Public encryption keys for both GLWE shapes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublicKeys {
    pub params: ParameterSet,
    pub wide: PublicKey,
    pub pbs: PublicKey,
}

impl PublicKeys {
    pub fn key(&self, kind: KeyKind) -> &PublicKey {
        match kind {
            KeyKind::Wide => &self.wide,
            KeyKind::Pbs => &self.pbs,
        }
    }
}

/// The key switch's integer type. Its output is rounded to 2N slots right after, so it works
/// modulo 2^32 (tfhe's "KS32"): the key is half the size and the multiply-adds twice as wide
/// per vector, and the key switch was memory-bound. Rounding the input body to 32 bits adds
/// at most 2^31 on the 2^64 scale, against slots of 2^52; the key's noise (2^43.3 on 2^64)
/// is 2^11.3 on 2^32, still far above one unit.
pub type KsScalar = u32;

/// A binary secret key as the key switch's integer type.
pub fn ks_secret_key(bits: &[u64]) -> LweSecretKeyOwned<KsScalar> {
    LweSecretKey::from_container(bits.iter().map(|&b| b as KsScalar).collect())
}

/// Seeded bootstrapping and key-switching keys (only their bodies and seeds are stored).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluationKeys {
    bsk_seed: CompressionSeed,
    bsk: U64s,
    ksk_seed: CompressionSeed,
    ksk: U64s,
}

impl EvaluationKeys {
    pub fn byte_len(&self) -> usize {
        self.bsk.byte_len() + self.ksk.byte_len()
    }

    #[cfg(feature = "backend")]
    /// The evaluation keys for `params`' bootstrap gadget: these, if it is the key set's own;
    /// else the same key-switching key with a fresh bootstrapping key (the backend's, for a
    /// bundle that buys accuracy with more gadget levels) under the same two secret keys, so
    /// nothing else about the key set changes.
    pub(crate) fn with_bootstrap_gadget(&self, secret: &SecretKeys, params: &ParameterSet) -> Self {
        if params.pbs == secret.params.pbs {
            return self.clone();
        }
        let (bsk_seed, bsk) = seeded_bootstrap_key(&secret.lwe, &secret.pbs, params);
        Self {
            bsk_seed,
            bsk,
            ksk_seed: self.ksk_seed.clone(),
            ksk: self.ksk.clone(),
        }
    }

    /// Prepare the seeded keys: the bootstrapping key expanded into the Fourier domain (the
    /// seeded bodies freed once converted); the key-switching key stays seeded, its masks
    /// regenerated during each inference's one pass over it ([`super::keyswitch`]).
    pub fn into_prepared(self, p: &ParameterSet) -> Result<PreparedEvaluationKeys> {
        let n = p.pbs_glwe.poly_size;
        let bsk_len = p.lwe_dim.0 * 2 * p.pbs.level.0 * n.0;
        let ksk_len = n.0 * p.ks.level.0;
        if self.bsk.0.len() != bsk_len || self.ksk.0.len() != ksk_len {
            return Err(CryptoError::Shape(format!(
                "evaluation keys have {}/{} words, parameter set {} needs {bsk_len}/{ksk_len}",
                self.bsk.0.len(),
                self.ksk.0.len(),
                p.security
            )));
        }
        let bsk = self.fourier_bsk(p);
        let Self {
            bsk: seeded_bsk,
            ksk_seed,
            ksk,
            ..
        } = self;
        drop(seeded_bsk);
        let ksk_bodies = ksk
            .0
            .iter()
            .map(|&v| KsScalar::try_from(v))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| {
                CryptoError::Shape("key-switching key is not a 32-bit key (older format?)".into())
            })?;
        let seeded_ksk = SeededLweKeyswitchKey::from_container(
            ksk_bodies,
            p.ks.base_log,
            p.ks.level,
            LweSize(p.lwe_dim.0 + 1),
            ksk_seed,
            CiphertextModulus::<KsScalar>::new_native(),
        );
        Ok(PreparedEvaluationKeys {
            bsk,
            ksk: seeded_ksk,
        })
    }
}

impl EvaluationKeys {
    /// The bootstrapping key in the Fourier domain, expanded and converted a few GGSWs at a
    /// time from the seeded bodies in place: no copy of the bodies and no standard-domain key
    /// (twice the bodies) beside the Fourier one, whose peak that was at 192 and 256 bits. The
    /// one mask generator runs through the chunks in order, forking one child per GGSW as
    /// tfhe's whole-key decompression does, so the key is the same bit for bit.
    fn fourier_bsk(&self, p: &ParameterSet) -> FourierLweBootstrapKeyOwned {
        /// GGSWs expanded at a time: 32 × 2·ℓ·2·N words (4 MB at N = 4096, ℓ = 2).
        const CHUNK: usize = 32;
        let (glwe, n, base_log, level) = (
            GlweSize(2),
            p.pbs_glwe.poly_size,
            p.pbs.base_log,
            p.pbs.level,
        );
        let mut fourier = FourierLweBootstrapKey::new(p.lwe_dim, glwe, n, base_log, level);
        let seeded_per_ggsw = glwe.0 * level.0 * n.0;
        let fourier_per_ggsw = glwe.0 * glwe.0 * level.0 * n.to_fourier_polynomial_size().0;
        let fft = Fft::new(n);
        let fft = fft.as_view();
        let mut buffers = ComputationBuffers::new();
        buffers.resize(
            convert_standard_lwe_bootstrap_key_to_fourier_mem_optimized_requirement(fft)
                .unaligned_bytes_required(),
        );
        let mut standard = vec![0u64; CHUNK * glwe.0 * seeded_per_ggsw];
        let mut masks = MaskRandomGenerator::<DefaultRandomGenerator>::new(self.bsk_seed.clone());
        for (bodies, out) in self.bsk.0.chunks(CHUNK * seeded_per_ggsw).zip(
            fourier
                .as_mut_view()
                .data()
                .chunks_mut(CHUNK * fourier_per_ggsw),
        ) {
            let ggsws = bodies.len() / seeded_per_ggsw;
            let seeded = SeededLweBootstrapKey::from_container(
                bodies,
                glwe,
                n,
                base_log,
                level,
                self.bsk_seed.clone(),
                modulus(),
            );
            let mut expanded = LweBootstrapKey::from_container(
                &mut standard[..ggsws * glwe.0 * seeded_per_ggsw],
                glwe,
                n,
                base_log,
                level,
                modulus(),
            );
            decompress_seeded_lwe_bootstrap_key_with_pre_seeded_generator(
                &mut expanded,
                &seeded,
                &mut masks,
            );
            let mut converted = FourierLweBootstrapKey::from_container(
                out,
                LweDimension(ggsws),
                glwe,
                n,
                base_log,
                level,
            );
            convert_standard_lwe_bootstrap_key_to_fourier_mem_optimized(
                &expanded,
                &mut converted,
                fft,
                buffers.stack(),
            );
        }
        fourier
    }
}

/// Evaluation keys prepared for use: the bootstrapping key in the Fourier domain, the
/// key-switching key seeded (expanded a chunk at a time by [`super::keyswitch::keyswitch_all`]).
pub struct PreparedEvaluationKeys {
    pub bsk: FourierLweBootstrapKeyOwned,
    pub ksk: SeededLweKeyswitchKeyOwned<KsScalar>,
}

/// Everything key-related an edge bundle carries. By construction it cannot hold a secret key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeKeys {
    pub public: PublicKeys,
    pub evaluation: Option<EvaluationKeys>,
}

#[cfg(any(feature = "backend", test))]
/// The output of key generation.
pub struct KeySet {
    pub secret: SecretKeys,
    pub public: PublicKeys,
    pub evaluation: EvaluationKeys,
}

/// The key id of a set of public keys.
pub fn key_id(public: &PublicKeys) -> KeyId {
    let bytes = postcard::to_allocvec(public).expect("serialising to a Vec cannot fail");
    let digest = Sha256::digest(&bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

#[cfg(any(feature = "backend", test))]
/// A fresh bootstrapping key from `lwe` to `pbs` at `p`'s bootstrap gadget, seeded: its
/// compression seed and bodies.
fn seeded_bootstrap_key(
    lwe: &LweSecretKeyOwned<u64>,
    pbs: &GlweSecretKeyOwned<u64>,
    p: &ParameterSet,
) -> (CompressionSeed, U64s) {
    let bsk = allocate_and_generate_new_seeded_lwe_bootstrap_key(
        lwe,
        pbs,
        p.pbs.base_log,
        p.pbs.level,
        gaussian(p.pbs_glwe.log2_std),
        modulus(),
        &mut OsSeeder,
    );
    (bsk.compression_seed(), U64s(bsk.into_container()))
}

#[cfg(any(feature = "backend", test))]
/// Generate every key for one parameter set.
pub fn generate(params: ParameterSet) -> KeySet {
    let mut seeder = OsSeeder;
    let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let wide = GlweSecretKey::generate_new_binary(
        GlweDimension(1),
        params.wide.poly_size,
        &mut secret_gen,
    );
    let pbs = GlweSecretKey::generate_new_binary(
        GlweDimension(1),
        params.pbs_glwe.poly_size,
        &mut secret_gen,
    );
    let lwe = LweSecretKey::generate_new_binary(params.lwe_dim, &mut secret_gen);

    let public = PublicKeys {
        params,
        wide: PublicKey::generate(&wide, params.wide),
        pbs: PublicKey::generate(&pbs, params.pbs_glwe),
    };

    let (bsk_seed, bsk) = seeded_bootstrap_key(&lwe, &pbs, &params);
    let ksk = allocate_and_generate_new_seeded_lwe_keyswitch_key(
        &ks_secret_key(pbs.as_ref()),
        &ks_secret_key(lwe.as_ref()),
        params.ks.base_log,
        params.ks.level,
        gaussian(params.lwe_log2_std),
        CiphertextModulus::<KsScalar>::new_native(),
        &mut seeder,
    );
    let evaluation = EvaluationKeys {
        bsk_seed,
        bsk,
        ksk_seed: ksk.compression_seed(),
        ksk: U64s(ksk.into_container().into_iter().map(u64::from).collect()),
    };
    let key_id = key_id(&public);
    KeySet {
        secret: SecretKeys {
            params,
            key_id,
            wide,
            pbs,
            lwe,
        },
        public,
        evaluation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::params::SecurityLevel;

    /// The piecewise expansion gives tfhe's whole-key decompression and conversion bit for bit
    /// (at the 128-bit set's ring and gadget, a short LWE key of 40: a full chunk and a partial
    /// one; small enough for the aarch64 run under qemu).
    #[test]
    fn the_piecewise_fourier_key_is_the_whole_one() {
        let mut p = ParameterSet::for_level(SecurityLevel::L128);
        p.lwe_dim = LweDimension(40);
        let mut secret = SecretRandomGenerator::<DefaultRandomGenerator>::new(OsSeeder.seed());
        let lwe: LweSecretKeyOwned<u64> = LweSecretKey::generate_new_binary(p.lwe_dim, &mut secret);
        let glwe: GlweSecretKeyOwned<u64> =
            GlweSecretKey::generate_new_binary(GlweDimension(1), p.pbs_glwe.poly_size, &mut secret);
        let (bsk_seed, bsk) = seeded_bootstrap_key(&lwe, &glwe, &p);
        let eval = EvaluationKeys {
            bsk_seed,
            bsk,
            ksk_seed: CompressionSeed::from(crate::crypto::Seed(0)),
            ksk: U64s(Vec::new()),
        };
        let whole = SeededLweBootstrapKey::from_container(
            eval.bsk.0.clone(),
            GlweSize(2),
            p.pbs_glwe.poly_size,
            p.pbs.base_log,
            p.pbs.level,
            eval.bsk_seed.clone(),
            modulus(),
        )
        .decompress_into_lwe_bootstrap_key();
        let mut expected = FourierLweBootstrapKey::new(
            whole.input_lwe_dimension(),
            whole.glwe_size(),
            whole.polynomial_size(),
            whole.decomposition_base_log(),
            whole.decomposition_level_count(),
        );
        convert_standard_lwe_bootstrap_key_to_fourier(&whole, &mut expected);
        let piecewise = eval.fourier_bsk(&p);
        let (a, b) = (expected.as_view().data(), piecewise.as_view().data());
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(b).all(|(x, y)| x == y));
    }
}
