//! Structured pruning of hidden units (`hedge protect --prune A`, `hedge eval --prune A`): each
//! unit is work in every variant and one bootstrap per class group in `act`, so the fewest
//! units whose classes still agree with the model's own on a share A of the calibration inputs.
//!
//! Removing unit i folds its mean output m_i over the inputs into the output bias
//! (b2 += W2[:,i]·m_i), so a unit constant on them — a ReLU never positive on them — goes for
//! nothing, and the others go in the order of the mean change their removal makes to the
//! scores, Σ_j |W2[j,i]|·mean|h_i − m_i|, while the agreement holds.

use super::{argmax, Classifier, Dense, ModelError};
use serde::{Deserialize, Serialize};

/// A head with fewer hidden units, and what that cost in agreement.
#[derive(Clone, Debug)]
pub struct Pruned {
    pub head: Classifier,
    pub report: PruneReport,
}

/// What pruning kept and how well the smaller head agrees with the original.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub units_before: usize,
    pub units_after: usize,
    /// Inputs pruned on, and on how many the smaller head's class is the original's.
    pub inputs: usize,
    pub agreeing: usize,
}

impl PruneReport {
    pub fn agreement(&self) -> f64 {
        self.agreeing as f64 / self.inputs.max(1) as f64
    }
}

/// The smallest head (at least one unit) whose class agrees with `head`'s on at least `target`
/// of `inputs`, removing units in the order above until the next would break it.
pub fn to_agreement(
    head: &Classifier,
    inputs: &[Vec<f32>],
    target: f64,
) -> Result<Pruned, ModelError> {
    if !(target > 0.0 && target <= 1.0) {
        return Err(ModelError::Quantisation(format!(
            "--prune takes the share of calibration inputs whose class must stay the same, \
             above 0 and at most 1 (e.g. 0.995), not {target}"
        )));
    }
    if inputs.is_empty() {
        return Err(ModelError::Quantisation(
            "pruning needs calibration inputs to measure the agreement on".into(),
        ));
    }
    let (hidden, out) = (head.hidden.out_dim, head.out_dim());
    let h: Vec<Vec<f32>> = inputs.iter().map(|x| head.hidden_activations(x)).collect();
    let n = h.len() as f32;
    let mean: Vec<f32> = (0..hidden)
        .map(|i| h.iter().map(|v| v[i]).sum::<f32>() / n)
        .collect();
    let w2 = |j: usize, i: usize| head.output.w[j * hidden + i];
    let cost: Vec<f32> = (0..hidden)
        .map(|i| {
            let spread = h.iter().map(|v| (v[i] - mean[i]).abs()).sum::<f32>() / n;
            (0..out).map(|j| w2(j, i).abs()).sum::<f32>() * spread
        })
        .collect();
    let mut order: Vec<usize> = (0..hidden).collect();
    order.sort_by(|&a, &b| cost[a].total_cmp(&cost[b]));

    // Scores as units go, one input a row; the classes to keep are the full head's.
    let mut scores: Vec<Vec<f32>> = h.iter().map(|v| head.output.forward(v)).collect();
    let classes: Vec<usize> = scores.iter().map(|s| argmax(s)).collect();
    let needed = (target * inputs.len() as f64).ceil() as usize;
    let mut removed = vec![false; hidden];
    let mut agreeing = inputs.len();
    for &i in &order[..hidden - 1] {
        // Scores without unit i; the first removal that breaks the agreement ends the search,
        // and its scores are not used again.
        for (s, v) in scores.iter_mut().zip(&h) {
            for (j, sj) in s.iter_mut().enumerate() {
                *sj += w2(j, i) * (mean[i] - v[i]);
            }
        }
        let agree = scores
            .iter()
            .zip(&classes)
            .filter(|(s, &c)| argmax(s) == c)
            .count();
        if agree < needed {
            break;
        }
        removed[i] = true;
        agreeing = agree;
    }
    let kept: Vec<usize> = (0..hidden).filter(|&i| !removed[i]).collect();
    let pruned = Classifier {
        hidden: Dense {
            out_dim: kept.len(),
            in_dim: head.hidden.in_dim,
            w: kept
                .iter()
                .flat_map(|&i| head.hidden.w[i * head.hidden.in_dim..][..head.hidden.in_dim].iter())
                .copied()
                .collect(),
            b: kept.iter().map(|&i| head.hidden.b[i]).collect(),
        },
        activation: head.activation,
        output: Dense {
            out_dim: out,
            in_dim: kept.len(),
            w: (0..out)
                .flat_map(|j| kept.iter().map(move |&i| w2(j, i)))
                .collect(),
            b: (0..out)
                .map(|j| {
                    head.output.b[j]
                        + (0..hidden)
                            .filter(|&i| removed[i])
                            .map(|i| w2(j, i) * mean[i])
                            .sum::<f32>()
                })
                .collect(),
        },
        labels: head.labels.clone(),
    };
    Ok(Pruned {
        head: pruned,
        report: PruneReport {
            units_before: hidden,
            units_after: kept.len(),
            inputs: inputs.len(),
            agreeing,
        },
    })
}

/// On how many of `inputs` `a` and `b` give the same class.
pub fn agreeing(a: &Classifier, b: &Classifier, inputs: &[Vec<f32>]) -> usize {
    inputs
        .iter()
        .filter(|x| argmax(&a.forward(x)) == argmax(&b.forward(x)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::activation::Activation;

    /// Three ReLU units: one never positive on the inputs (dead), one that decides the class,
    /// one that only adds a little.
    fn head() -> Classifier {
        Classifier {
            hidden: Dense {
                out_dim: 3,
                in_dim: 2,
                w: vec![-1.0, -1.0, 1.0, -1.0, 0.1, 0.1],
                b: vec![-0.5, 0.0, 0.0],
            },
            activation: Some(Activation::Relu),
            output: Dense {
                out_dim: 2,
                in_dim: 3,
                w: vec![5.0, 1.0, 0.2, -5.0, -1.0, 0.0],
                b: vec![0.0, 0.1],
            },
            labels: None,
        }
    }

    fn inputs() -> Vec<Vec<f32>> {
        (0..50)
            .map(|k| {
                let t = k as f32 / 49.0;
                vec![t, 1.0 - t]
            })
            .collect()
    }

    #[test]
    fn dead_and_small_units_go_first_and_the_agreement_holds() {
        let (head, inputs) = (head(), inputs());
        // Every class kept: the dead unit (0) and the small one (2) go, the deciding one stays.
        let p = to_agreement(&head, &inputs, 1.0).unwrap();
        assert_eq!(p.report.units_before, 3);
        assert_eq!(p.report.units_after, 1);
        assert_eq!(p.head.hidden.w, vec![1.0, -1.0]);
        assert_eq!(agreeing(&head, &p.head, &inputs), inputs.len());
        assert_eq!(p.report.agreeing, inputs.len());
        // The dead unit's removal changes no score at all.
        let dead_only = Classifier {
            hidden: Dense {
                out_dim: 2,
                in_dim: 2,
                w: head.hidden.w[2..].to_vec(),
                b: head.hidden.b[1..].to_vec(),
            },
            output: Dense {
                out_dim: 2,
                in_dim: 2,
                w: vec![1.0, 0.2, -1.0, 0.0],
                b: head.output.b.clone(),
            },
            ..head.clone()
        };
        for x in &inputs {
            assert_eq!(dead_only.forward(x), head.forward(x));
        }
        // Always one unit left, and a target outside (0, 1] refused.
        let p = to_agreement(&head, &inputs, 0.01).unwrap();
        assert_eq!(p.report.units_after, 1);
        assert!(to_agreement(&head, &inputs, 1.5).is_err());
        assert!(to_agreement(&head, &inputs, 0.0).is_err());
        assert!(to_agreement(&head, &[], 0.9).is_err());
    }
}
