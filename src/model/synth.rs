//! A fixed-seed stand-in for a trained classifier and its data, shaped like the paper's head
//! (2304 → 512 → ReLU → 10 by default).
//!
//! Random weights alone give near-random logits, where any rounding flips the argmax; a real
//! trained head separates classes. So the task is synthetic but learnable: features are
//! non-negative (as after a ReLU feature extractor), drawn around one of ten class prototypes,
//! the hidden layer is a random projection, and the output layer is fitted by least squares to
//! one-hot targets on a training draw (ridge regression solved by conjugate gradients).

use super::{Classifier, Dense};
use crate::model::activation::Activation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A synthetic classification task.
pub struct Task {
    prototypes: Vec<Vec<f32>>,
    noise: f32,
}

impl Task {
    pub fn new(seed: u64, in_dim: usize, classes: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let prototypes = (0..classes)
            .map(|_| {
                (0..in_dim)
                    .map(|_| {
                        // Sparse, non-negative prototypes, like pooled ReLU features.
                        if rng.gen_bool(0.3) {
                            rng.gen_range(0.0..3.0)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        Self {
            prototypes,
            noise: 1.0,
        }
    }

    pub fn classes(&self) -> usize {
        self.prototypes.len()
    }

    /// Draw `count` labelled samples from an independent stream `stream`.
    pub fn samples(&self, seed: u64, count: usize) -> Vec<(Vec<f32>, usize)> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let c = rng.gen_range(0..self.classes());
                let x = self.prototypes[c]
                    .iter()
                    .map(|p| (p + self.noise * (rng.gen::<f32>() * 2.0 - 1.0) * 1.5).max(0.0))
                    .collect();
                (x, c)
            })
            .collect()
    }
}

/// Seeds of the independent sample streams.
pub(crate) const TRAIN_STREAM: u64 = 1;
pub const CALIBRATION_STREAM: u64 = 2;
pub const BENCH_STREAM: u64 = 3;

/// Build the fixed-seed classifier for `task`.
pub fn classifier(
    seed: u64,
    task: &Task,
    hidden: usize,
    activation: Option<Activation>,
) -> Classifier {
    let in_dim = task.prototypes[0].len();
    let classes = task.classes();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let scale = (1.0 / in_dim as f32).sqrt();
    let hidden_layer = Dense {
        out_dim: hidden,
        in_dim,
        w: (0..hidden * in_dim)
            .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale * 1.7)
            .collect(),
        b: (0..hidden).map(|_| rng.gen::<f32>() * 0.2 - 0.1).collect(),
    };
    let mut model = Classifier {
        hidden: hidden_layer,
        activation,
        output: Dense {
            out_dim: classes,
            in_dim: hidden,
            w: vec![0.0; classes * hidden],
            b: vec![0.0; classes],
        },
        labels: None,
    };
    // Fit the output layer: minimise ‖H·Wᵀ − Y‖² + λ‖W‖² per class by conjugate gradients.
    let train = task.samples(seed.wrapping_add(TRAIN_STREAM), 2000);
    let feats: Vec<Vec<f32>> = train
        .iter()
        .map(|(x, _)| {
            let mut h = model.hidden_activations(x);
            h.push(1.0); // bias column
            h
        })
        .collect();
    let d = hidden + 1;
    let lambda = 1.0f64;
    let apply = |v: &[f64]| -> Vec<f64> {
        let mut out: Vec<f64> = v.iter().map(|x| lambda * x).collect();
        for f in &feats {
            let dot: f64 = f.iter().zip(v).map(|(a, b)| *a as f64 * b).sum();
            for (o, a) in out.iter_mut().zip(f) {
                *o += dot * *a as f64;
            }
        }
        out
    };
    for c in 0..classes {
        let mut rhs = vec![0f64; d];
        for (f, (_, label)) in feats.iter().zip(&train) {
            let y = if *label == c { 1.0 } else { 0.0 };
            for (r, a) in rhs.iter_mut().zip(f) {
                *r += y * *a as f64;
            }
        }
        let mut w = vec![0f64; d];
        let mut r = rhs.clone();
        let mut p = r.clone();
        let mut rr: f64 = r.iter().map(|x| x * x).sum();
        for _ in 0..60 {
            let ap = apply(&p);
            let alpha = rr / p.iter().zip(&ap).map(|(a, b)| a * b).sum::<f64>();
            for i in 0..d {
                w[i] += alpha * p[i];
                r[i] -= alpha * ap[i];
            }
            let rr_new: f64 = r.iter().map(|x| x * x).sum();
            if rr_new < 1e-12 {
                break;
            }
            for i in 0..d {
                p[i] = r[i] + rr_new / rr * p[i];
            }
            rr = rr_new;
        }
        for (o, v) in model.output.w[c * hidden..(c + 1) * hidden]
            .iter_mut()
            .zip(&w)
        {
            *o = *v as f32;
        }
        model.output.b[c] = w[hidden] as f32;
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::argmax;

    #[test]
    fn synthetic_classifier_learns_its_task() {
        let task = Task::new(42, 64, 10);
        let model = classifier(42, &task, 32, Some(Activation::Relu));
        let test = task.samples(99, 300);
        let correct = test
            .iter()
            .filter(|(x, c)| argmax(&model.forward(x)) == *c)
            .count();
        assert!(correct > 240, "accuracy {correct}/300");
    }
}
