//! Key switching of many LWE ciphertexts in one pass over the key.
//!
//! The key-switching key is N·ℓ·(n+1) words (29 MB at 128 bits), far beyond the caches, and
//! tfhe's `keyswitch_lwe_ciphertext_with_scalar_change` streams all of it from memory for each
//! ciphertext: the act variant's 512 key switches were memory-bound (2.7 ms each). Here each key
//! block (ℓ rows for one input coefficient) is applied to a whole batch while it is in cache.
//! The arithmetic is tfhe's, in the same order, so the outputs are bit-identical (tested).

use super::keys::KsScalar;
use tfhe::core_crypto::algorithms::slice_algorithms::slice_wrapping_sub_scalar_mul_assign;
use tfhe::core_crypto::prelude::*;

/// outputs[b] ← key switch of inputs[b] (64-bit, under the key's input key) to the key's
/// output key, modulo 2^32.
pub fn keyswitch_batch(
    ksk: &LweKeyswitchKeyOwned<KsScalar>,
    inputs: &[LweCiphertextOwned<u64>],
    outputs: &mut [LweCiphertextOwned<KsScalar>],
) {
    assert_eq!(inputs.len(), outputs.len());
    let shift = u64::BITS - KsScalar::BITS;
    let body_rounding = SignedDecomposer::<u64>::new(
        DecompositionBaseLog(KsScalar::BITS as usize),
        DecompositionLevelCount(1),
    );
    for (input, output) in inputs.iter().zip(outputs.iter_mut()) {
        assert_eq!(
            input.lwe_size().to_lwe_dimension(),
            ksk.input_key_lwe_dimension()
        );
        assert_eq!(output.lwe_size(), ksk.output_lwe_size());
        output.as_mut().fill(0);
        *output.get_mut_body().data =
            (body_rounding.closest_representable(*input.get_body().data) >> shift) as KsScalar;
    }
    let decomposer = SignedDecomposer::<u64>::new(
        ksk.decomposition_base_log(),
        ksk.decomposition_level_count(),
    );
    for (coefficient, block) in ksk.iter().enumerate() {
        for (input, output) in inputs.iter().zip(outputs.iter_mut()) {
            let element = input.get_mask().as_ref()[coefficient];
            for (row, digit) in block.iter().zip(decomposer.decompose(element)) {
                slice_wrapping_sub_scalar_mul_assign(
                    output.as_mut(),
                    row.as_ref(),
                    digit.value() as KsScalar,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{encryption_generator, gaussian, OsSeeder, Seeder};

    #[test]
    fn batch_equals_tfhe_one_by_one() {
        let (big, small) = (512, 100);
        let mut secret = SecretRandomGenerator::<DefaultRandomGenerator>::new(OsSeeder.seed());
        let big_key: LweSecretKeyOwned<KsScalar> =
            LweSecretKey::generate_new_binary(LweDimension(big), &mut secret);
        let small_key = LweSecretKey::generate_new_binary(LweDimension(small), &mut secret);
        let ksk = allocate_and_generate_new_lwe_keyswitch_key(
            &big_key,
            &small_key,
            DecompositionBaseLog(4),
            DecompositionLevelCount(4),
            gaussian(43.0),
            CiphertextModulus::<KsScalar>::new_native(),
            &mut encryption_generator(),
        );
        let mut rng = rand::thread_rng();
        let inputs: Vec<_> = (0..5)
            .map(|_| {
                let words: Vec<u64> = (0..=big).map(|_| rand::Rng::gen(&mut rng)).collect();
                LweCiphertext::from_container(words, CiphertextModulus::new_native())
            })
            .collect();
        let fresh =
            || LweCiphertext::new(0, ksk.output_lwe_size(), CiphertextModulus::new_native());
        let mut batch: Vec<_> = inputs.iter().map(|_| fresh()).collect();
        keyswitch_batch(&ksk, &inputs, &mut batch);
        for (input, got) in inputs.iter().zip(&batch) {
            let mut expected = fresh();
            keyswitch_lwe_ciphertext_with_scalar_change(&ksk, input, &mut expected);
            assert_eq!(got.as_ref(), expected.as_ref());
        }
    }
}
