//! Backend only: a quantised model encrypted under the secret keys, with its secret check
//! outputs (feature `backend`; never in the boards' build).

use super::decrypt::ResultChecks;
use super::model::{EncryptedModel, PlainLayer};
use super::Result;
use crate::crypto::error::CryptoError;
use crate::crypto::keys::{KeyKind, SecretKeys};
use crate::crypto::linear::{EncryptedGgswRows, EncryptedMatrix, PackedLayout};
use crate::crypto::lut::EncryptedLuts;
use crate::model::quant::{HiddenMap, QuantModel, Variant};
use crate::model::ModelError;

impl EncryptedModel {
    /// Encrypt a quantised model under `keys` (backend side), with fresh secret check outputs
    /// for the variants that carry them: the checks go to the registry's [`Decoding`], never
    /// into the bundle.
    pub fn encrypt(q: &QuantModel, keys: &SecretKeys) -> Result<(Self, ResultChecks)> {
        let checks = ResultChecks::draw(q, &keys.params, &mut rand::rngs::OsRng)?;
        Ok((Self::encrypt_with(q, keys, &checks)?, checks))
    }

    /// [`Self::encrypt`] with the given checks.
    pub(crate) fn encrypt_with(
        q: &QuantModel,
        keys: &SecretKeys,
        checks: &ResultChecks,
    ) -> Result<Self> {
        let p = keys.params;
        let (hidden, out) = (q.hidden_dim, q.out_dim);
        Ok(match q.variant {
            Variant::Last => {
                let rows = out + checks.rows.len();
                let layout = PackedLayout::new(p.wide.poly_size.0, rows, hidden + 1)?;
                let mut weights = q.w2_with_bias();
                weights.extend(checks.combine(&weights[..out * (hidden + 1)], hidden + 1));
                let mut scales = vec![q.delta_out; out];
                scales.extend(checks.deltas());
                Self::Last {
                    first: PlainLayer {
                        w: q.w1.clone(),
                        b: q.b1.clone(),
                        map: q.hidden_map.clone(),
                    },
                    output: EncryptedMatrix::encrypt(
                        &keys.wide,
                        KeyKind::Wide,
                        p.wide,
                        &weights,
                        layout,
                        &scales,
                        &vec![0; layout.out_dim],
                        WIDE_DROP_BITS,
                    ),
                }
            }
            Variant::Noact => {
                let layout = PackedLayout::new(p.wide.poly_size.0, hidden, q.input.dim + 1)?;
                if layout.blocks() != 1 {
                    return Err(CryptoError::Unsupported(format!(
                        "noact needs the hidden width ({hidden}) to fit one polynomial ({})",
                        p.wide.poly_size.0
                    ))
                    .into());
                }
                Self::Noact {
                    first: EncryptedMatrix::encrypt(
                        &keys.wide,
                        KeyKind::Wide,
                        p.wide,
                        &q.w1_with_bias(),
                        layout,
                        &vec![q.delta_out; layout.out_dim],
                        &vec![0; layout.out_dim],
                        WIDE_DROP_BITS,
                    ),
                    second: {
                        let (w, b) = with_check_rows(q, checks);
                        EncryptedGgswRows::encrypt(
                            &keys.wide,
                            KeyKind::Wide,
                            p.wide,
                            &w,
                            &b,
                            out + checks.rows.len(),
                            hidden,
                            p.weights_ggsw,
                            q.delta_out,
                        )?
                    },
                }
            }
            Variant::Act => {
                let HiddenMap::Window { map, units, .. } = &q.hidden_map else {
                    return Err(ModelError::Quantisation(
                        "act model without a bootstrap window".into(),
                    )
                    .into());
                };
                let layout = PackedLayout::new(p.pbs_glwe.poly_size.0, hidden, q.input.dim + 1)?;
                let (w2, b2) = with_check_rows(q, checks);
                Self::Act {
                    first: EncryptedMatrix::encrypt(
                        &keys.pbs,
                        KeyKind::Pbs,
                        p.pbs_glwe,
                        &q.w1_with_bias(),
                        layout,
                        &units.iter().map(|u| u.delta_h).collect::<Vec<_>>(),
                        &units
                            .iter()
                            .map(|u| map.offset(u.zero_slot))
                            .collect::<Vec<_>>(),
                        // Noise after this layer is ~2^26 and the bootstrap reads 2^52-wide
                        // slots: 24 dropped bits add ≲ 2^23·‖x‖ ≈ 2^37.
                        24,
                    ),
                    luts: EncryptedLuts::encrypt(
                        &keys.pbs,
                        p.pbs_glwe,
                        *map,
                        &units.iter().map(|u| u.zero_slot).collect::<Vec<_>>(),
                        |i, t| q.hidden_map.table_value(i, t),
                        &w2,
                        &b2,
                        out + checks.rows.len(),
                        hidden,
                        q.delta_out,
                    ),
                }
            }
        })
    }
}

/// The second layer's weights and biases with the check rows after the classes' (the bias
/// column split off again).
fn with_check_rows(q: &QuantModel, checks: &ResultChecks) -> (Vec<i64>, Vec<i64>) {
    let cols = q.hidden_dim + 1;
    let checked = checks.combine(&q.w2_with_bias(), cols);
    let (mut w, mut b) = (q.w2.clone(), q.b2.clone());
    for row in checked.chunks_exact(cols) {
        w.extend_from_slice(&row[..q.hidden_dim]);
        b.push(row[q.hidden_dim]);
    }
    (w, b)
}

/// Low bits dropped from stored wide-layer bodies: an error of ≤ 2^7 per weight, ≈ 2^16 after
/// the first layer, against noise ≈ 2^26 (encrypted features) and a Δ of 2^35+.
const WIDE_DROP_BITS: u8 = 8;
