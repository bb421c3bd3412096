//! The hidden activation: the univariate function a classifier applies between its two dense
//! layers — in float, as trained, and on the integer grids the quantised variants compute on.
//!
//! On a grid of step s (the real value one integer step of the pre-activation stands for),
//! integer n stands for f(n·s) − f(0), counted in output steps of [`Activation::out_step`]`(s)`:
//! - for the positively homogeneous functions (ReLU, leaky ReLU, identity of degree 1, the
//!   square of degree 2) that is f(n) itself, whatever s — exact, as before any other function;
//! - for the others the output step is s times the function's largest slope, so one input step
//!   moves the output by at most one step: the 1-Lipschitz property the `act` noise model
//!   counts on, and the same resolution as ReLU's.
//!
//! f(0) (sigmoid's ½, softplus' ln 2) is taken out so the values stay centred; the quantiser
//! folds it back into the second layer's bias. libm, not the platform's maths library, so that
//! a board and the backend compute the same values bit for bit.

use serde::{Deserialize, Serialize};

/// A constant of an activation (leaky ReLU's and ELU's α), as f32 bits so the activation
/// stays `Eq` and serialises exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Alpha(u32);

impl Alpha {
    pub const fn new(alpha: f32) -> Self {
        Self(alpha.to_bits())
    }

    pub fn get(self) -> f64 {
        f32::from_bits(self.0) as f64
    }
}

/// The activation between the two dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    /// The paper's square activation, for comparison.
    Square,
    Tanh,
    /// The logistic function 1 / (1 + e^−x).
    Sigmoid,
    /// x·Φ(x) (ONNX `Gelu`, approximate="none").
    Gelu,
    /// max(x, αx) for x < 0 (ONNX `LeakyRelu`, default α = 0.01).
    LeakyRelu(Alpha),
    /// No function: a bootstrapped identity (a model trained without an activation, in `act`).
    Identity,
    /// The tanh approximation of GELU (ONNX `Gelu`, approximate="tanh").
    GeluTanh,
    /// x for x > 0, α(e^x − 1) otherwise (ONNX `Elu`, default α = 1).
    Elu(Alpha),
    /// ln(1 + e^x).
    Softplus,
}

/// One of each activation (leaky ReLU and ELU with an α other than ONNX's defaults, so that
/// reading it is tested): what the tests and the fuzz seeds go through.
#[cfg(any(test, feature = "test-support"))]
pub const EACH: [Activation; 10] = [
    Activation::Relu,
    Activation::Square,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::LeakyRelu(Alpha::new(0.1)),
    Activation::Identity,
    Activation::Elu(Alpha::new(0.5)),
    Activation::Softplus,
];

/// A bound on GELU's largest slope (1.1289 at x ≈ 1.42; the tanh form's is as close).
const GELU_MAX_SLOPE: f64 = 1.13;

impl Activation {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "ReLU",
            Self::Square => "square",
            Self::Tanh => "tanh",
            Self::Sigmoid => "sigmoid",
            Self::Gelu => "GELU",
            Self::GeluTanh => "GELU (tanh form)",
            Self::LeakyRelu(_) => "leaky ReLU",
            Self::Identity => "identity",
            Self::Elu(_) => "ELU",
            Self::Softplus => "softplus",
        }
    }

    /// f(x).
    pub fn eval(self, x: f64) -> f64 {
        match self {
            Self::Relu => x.max(0.0),
            Self::Square => x * x,
            Self::Tanh => libm::tanh(x),
            Self::Sigmoid => 1.0 / (1.0 + libm::exp(-x)),
            Self::Gelu => 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2),
            Self::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + libm::tanh(c * (x + 0.044715 * x * x * x)))
            }
            Self::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a.get() * x
                }
            }
            Self::Identity => x,
            Self::Elu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a.get() * libm::expm1(x)
                }
            }
            // ln(1 + e^x), without overflow for large x.
            Self::Softplus => x.max(0.0) + libm::log1p(libm::exp(-x.abs())),
        }
    }

    /// The degree k of a positively homogeneous function (f(c·x) = c^k·f(x) for c > 0).
    fn degree(self) -> Option<i32> {
        match self {
            Self::Relu | Self::LeakyRelu(_) | Self::Identity => Some(1),
            Self::Square => Some(2),
            _ => None,
        }
    }

    /// The largest |f'| (for the non-homogeneous functions).
    fn max_slope(self) -> f64 {
        match self {
            Self::Sigmoid => 0.25,
            Self::Gelu | Self::GeluTanh => GELU_MAX_SLOPE,
            Self::LeakyRelu(a) | Self::Elu(a) => a.get().abs().max(1.0),
            _ => 1.0,
        }
    }

    /// Whether f(x) − f(0) ≥ 0 for every x: an unsigned range then serves its values.
    pub fn nonnegative(self) -> bool {
        matches!(self, Self::Relu | Self::Square)
    }

    /// f(0), which the grid leaves out and the second layer's bias carries.
    pub fn at_zero(self) -> f64 {
        self.eval(0.0)
    }

    /// The real value one output step stands for, on an input grid of step `s`.
    pub fn out_step(self, s: f64) -> f64 {
        match self.degree() {
            Some(k) => s.powi(k),
            None => s * self.max_slope(),
        }
    }

    /// f(n·s) − f(0) in output steps of [`Self::out_step`]`(s)` (not rounded).
    pub fn on_grid(self, n: i64, s: f64) -> f64 {
        match self.degree() {
            Some(_) => self.eval(n as f64),
            None => (self.eval(n as f64 * s) - self.at_zero()) / self.out_step(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homogeneous_functions_are_exact_on_any_grid() {
        for s in [1e-3, 0.37, 1.0, 12.5] {
            for n in -50..50 {
                assert_eq!(Activation::Relu.on_grid(n, s), n.max(0) as f64);
                assert_eq!(Activation::Square.on_grid(n, s), (n * n) as f64);
                assert_eq!(Activation::Identity.on_grid(n, s), n as f64);
            }
        }
    }

    /// One input step moves every function's grid value by at most one output step (the
    /// square excepted: it is not Lipschitz), and the grid value times the output step is
    /// f(n·s) − f(0).
    #[test]
    fn one_input_step_moves_the_output_at_most_one_step() {
        for f in EACH.into_iter().filter(|&f| f != Activation::Square) {
            for s in [1e-3, 0.02, 0.5] {
                for n in -400..400 {
                    let step = (f.on_grid(n + 1, s) - f.on_grid(n, s)).abs();
                    assert!(step <= 1.0 + 1e-9, "{f:?} s={s} n={n}: {step}");
                    let real = f.on_grid(n, s) * f.out_step(s) + f.at_zero();
                    assert!((real - f.eval(n as f64 * s)).abs() < 1e-9, "{f:?}");
                }
            }
        }
    }

    #[test]
    fn known_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(Activation::Sigmoid.eval(0.0), 0.5));
        assert!(close(Activation::Tanh.eval(1.0), 0.761_594_2));
        assert!(close(Activation::Gelu.eval(1.0), 0.841_344_7));
        assert!(close(Activation::GeluTanh.eval(1.0), 0.841_192));
        assert!(close(
            Activation::Softplus.eval(0.0),
            std::f64::consts::LN_2
        ));
        assert!(close(Activation::Softplus.eval(800.0), 800.0));
        assert!(close(
            Activation::LeakyRelu(Alpha::new(0.1)).eval(-2.0),
            -0.2
        ));
        assert!(close(
            Activation::Elu(Alpha::new(1.0)).eval(-1.0),
            -0.632_120_6
        ));
        // GELU's largest slope, numerically.
        let slope = (0..4000)
            .map(|i| {
                let x = -4.0 + i as f64 * 0.002;
                (Activation::Gelu.eval(x + 1e-6) - Activation::Gelu.eval(x)) / 1e-6
            })
            .fold(0f64, f64::max);
        assert!(slope <= GELU_MAX_SLOPE && slope > 1.128, "{slope}");
    }
}
