//! Key switching of every hidden unit's LWE ciphertext in one pass over the key, its masks
//! regenerated from the seed as the pass goes.
//!
//! The key-switching key is N·ℓ·(n+1) words (29 MB at 128 bits, 127 MB at 256), far beyond the
//! caches, and tfhe's `keyswitch_lwe_ciphertext_with_scalar_change` streams all of it from
//! memory for each ciphertext. The key ships seeded — one body a row and the mask generator's
//! seed — and stays so in memory: each pass expands a chunk of rows (the rows of [`CHUNK`]
//! input coefficients) with tfhe's mask generator and applies it to every ciphertext, a batch
//! at a time, while the chunk is in cache. The expanded key is never resident (the largest
//! part of `act`'s peak at 192 and 256 bits after the bootstrapping key), and expanding it
//! once an inference costs what one pass over it from memory did. The arithmetic is tfhe's,
//! in the same order, so the outputs are bit-identical (tested).

use super::keys::KsScalar;
use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::commons::generators::MaskRandomGenerator;
use tfhe::core_crypto::prelude::*;

/// Input coefficients whose key rows are expanded at a time: 16·ℓ rows of n + 1 words
/// (≈ 200 KB at 128 bits), applied to [`BATCH`] ciphertexts at a time while in cache.
const CHUNK: usize = 16;

/// Ciphertexts a chunk of rows is applied to before the next batch: their outputs (3.5 KB
/// each at 128 bits) stay in cache beside the chunk.
const BATCH: usize = 32;

/// outputs[b] ← key switch of inputs[b] (64-bit, under the key's input key) to the key's
/// output key, modulo 2^32, with the key's masks regenerated from its seed.
pub fn keyswitch_all(
    ksk: &SeededLweKeyswitchKeyOwned<KsScalar>,
    inputs: &[LweCiphertextOwned<u64>],
    outputs: &mut [LweCiphertextOwned<KsScalar>],
) {
    let pass = Pass::start(key_shape!(ksk), inputs, outputs);
    // One generator through the chunks in order: each chunk forks one child per row, as the
    // whole key's decompression does, so the rows are the key's own.
    let mut masks = MaskRandomGenerator::<DefaultRandomGenerator>::new(ksk.compression_seed());
    let mut rows = vec![0 as KsScalar; CHUNK * pass.levels * pass.row];
    for (chunk, bodies) in ksk.as_ref().chunks(CHUNK * pass.levels).enumerate() {
        let seeded = SeededLweCiphertextList::from_container(
            bodies,
            ksk.output_lwe_size(),
            ksk.compression_seed(),
            ksk.ciphertext_modulus(),
        );
        let rows = &mut rows[..bodies.len() * pass.row];
        let mut expanded = LweCiphertextList::from_container(
            &mut *rows,
            ksk.output_lwe_size(),
            ksk.ciphertext_modulus(),
        );
        decompress_seeded_lwe_ciphertext_list_with_pre_seeded_generator(
            &mut expanded,
            &seeded,
            &mut masks,
        );
        pass.apply(rows, chunk * CHUNK, inputs, outputs);
    }
}

/// The same with the key expanded (for measurements of one key switch: examples/pbs_cost).
pub fn keyswitch_expanded(
    ksk: &LweKeyswitchKeyOwned<KsScalar>,
    inputs: &[LweCiphertextOwned<u64>],
    outputs: &mut [LweCiphertextOwned<KsScalar>],
) {
    let pass = Pass::start(key_shape!(ksk), inputs, outputs);
    for (chunk, rows) in ksk
        .as_ref()
        .chunks(CHUNK * pass.levels * pass.row)
        .enumerate()
    {
        pass.apply(rows, chunk * CHUNK, inputs, outputs);
    }
}

/// Ciphertexts for `count` outputs of a key switch under `ksk`.
pub fn outputs_for(
    ksk: &SeededLweKeyswitchKeyOwned<KsScalar>,
    count: usize,
) -> Vec<LweCiphertextOwned<KsScalar>> {
    vec![
        LweCiphertext::new(
            0 as KsScalar,
            ksk.output_lwe_size(),
            CiphertextModulus::new_native()
        );
        count
    ]
}

/// A key's shape, from either form (their accessors share names).
macro_rules! key_shape {
    ($ksk:expr) => {
        KeyShape {
            input_dimension: $ksk.input_key_lwe_dimension(),
            output_size: $ksk.output_lwe_size(),
            base_log: $ksk.decomposition_base_log(),
            levels: $ksk.decomposition_level_count(),
        }
    };
}
use key_shape;

struct KeyShape {
    input_dimension: LweDimension,
    output_size: LweSize,
    base_log: DecompositionBaseLog,
    levels: DecompositionLevelCount,
}

/// One key switch of many ciphertexts, fed the key's rows a chunk at a time.
struct Pass {
    levels: usize,
    row: usize,
    decomposer: SignedDecomposer<u64>,
}

impl Pass {
    /// Checks the shapes and sets each output to its input's rounded body.
    fn start(
        shape: KeyShape,
        inputs: &[LweCiphertextOwned<u64>],
        outputs: &mut [LweCiphertextOwned<KsScalar>],
    ) -> Self {
        let KeyShape {
            input_dimension,
            output_size,
            base_log,
            levels,
        } = shape;
        assert_eq!(inputs.len(), outputs.len());
        let shift = u64::BITS - KsScalar::BITS;
        let body_rounding = SignedDecomposer::<u64>::new(
            DecompositionBaseLog(KsScalar::BITS as usize),
            DecompositionLevelCount(1),
        );
        for (input, output) in inputs.iter().zip(outputs.iter_mut()) {
            assert_eq!(input.lwe_size().to_lwe_dimension(), input_dimension);
            assert_eq!(output.lwe_size(), output_size);
            output.as_mut().fill(0);
            *output.get_mut_body().data =
                (body_rounding.closest_representable(*input.get_body().data) >> shift) as KsScalar;
        }
        Self {
            levels: levels.0,
            row: output_size.0,
            decomposer: SignedDecomposer::new(base_log, levels),
        }
    }

    /// Applies `rows`, the key's rows for input coefficients `first`…, to every ciphertext,
    /// [`BATCH`] at a time.
    fn apply(
        &self,
        rows: &[KsScalar],
        first: usize,
        inputs: &[LweCiphertextOwned<u64>],
        outputs: &mut [LweCiphertextOwned<KsScalar>],
    ) {
        for (inputs, outputs) in inputs.chunks(BATCH).zip(outputs.chunks_mut(BATCH)) {
            for (k, block) in rows.chunks_exact(self.levels * self.row).enumerate() {
                for (input, output) in inputs.iter().zip(outputs.iter_mut()) {
                    let element = input.get_mask().as_ref()[first + k];
                    for (key_row, digit) in block
                        .chunks_exact(self.row)
                        .zip(self.decomposer.decompose(element))
                    {
                        slice_wrapping_sub_scalar_mul_assign(
                            output.as_mut(),
                            key_row,
                            digit.value() as KsScalar,
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{gaussian, OsSeeder, Seeder};

    /// Against tfhe's key switch with the whole key expanded: inputs over several batches
    /// (the last one short), a key over several chunks (the last one short); the seeded pass
    /// and the expanded one alike.
    #[test]
    fn the_seeded_pass_equals_tfhe_one_by_one() {
        let (big, small) = (CHUNK * 3 + 5, 100);
        let mut secret = SecretRandomGenerator::<DefaultRandomGenerator>::new(OsSeeder.seed());
        let big_key: LweSecretKeyOwned<KsScalar> =
            LweSecretKey::generate_new_binary(LweDimension(big), &mut secret);
        let small_key = LweSecretKey::generate_new_binary(LweDimension(small), &mut secret);
        let seeded = allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &big_key,
            &small_key,
            DecompositionBaseLog(4),
            DecompositionLevelCount(4),
            gaussian(43.0),
            CiphertextModulus::<KsScalar>::new_native(),
            &mut OsSeeder,
        );
        let ksk = seeded.clone().decompress_into_lwe_keyswitch_key();
        let mut rng = rand::thread_rng();
        let inputs: Vec<_> = (0..BATCH + 7)
            .map(|_| {
                let words: Vec<u64> = (0..=big).map(|_| rand::Rng::gen(&mut rng)).collect();
                LweCiphertext::from_container(words, CiphertextModulus::new_native())
            })
            .collect();
        let fresh =
            || LweCiphertext::new(0, ksk.output_lwe_size(), CiphertextModulus::new_native());
        let mut all: Vec<_> = inputs.iter().map(|_| fresh()).collect();
        keyswitch_all(&seeded, &inputs, &mut all);
        let mut from_expanded: Vec<_> = inputs.iter().map(|_| fresh()).collect();
        keyswitch_expanded(&ksk, &inputs, &mut from_expanded);
        for ((input, got), also) in inputs.iter().zip(&all).zip(&from_expanded) {
            let mut expected = fresh();
            keyswitch_lwe_ciphertext_with_scalar_change(&ksk, input, &mut expected);
            assert_eq!(got.as_ref(), expected.as_ref());
            assert_eq!(also.as_ref(), expected.as_ref());
        }
    }
}
