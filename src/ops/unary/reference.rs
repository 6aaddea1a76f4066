//! Plain f64 CPU references of the unary ops: each forward `f(x)` beside its derivative
//! `df(x)` (named `d` + the op), for the tests and the fuzzer. One copy of each.

/// `-x`.
pub fn neg(x: f64) -> f64 {
    -x
}
/// d(-x)/dx.
pub fn dneg(_x: f64) -> f64 {
    -1.0
}

/// `x + s`.
pub fn add_scalar(x: f64, s: f64) -> f64 {
    x + s
}

/// `x * s`.
pub fn mul_scalar(x: f64, s: f64) -> f64 {
    x * s
}

/// `e^x` (its own derivative).
pub fn exp(x: f64) -> f64 {
    x.exp()
}

/// Natural logarithm.
pub fn log(x: f64) -> f64 {
    x.ln()
}
/// d ln(x)/dx.
pub fn dlog(x: f64) -> f64 {
    1.0 / x
}

/// Square root.
pub fn sqrt(x: f64) -> f64 {
    x.sqrt()
}
/// d sqrt(x)/dx.
pub fn dsqrt(x: f64) -> f64 {
    0.5 / x.sqrt()
}

/// `x^e`; integer exponents take `powi` so negative bases stay defined, as on the GPU.
pub fn powf(x: f64, e: f64) -> f64 {
    if e.fract() == 0.0 && e.abs() < 64.0 {
        x.powi(e as i32)
    } else {
        x.powf(e)
    }
}
/// d x^e/dx = e x^(e-1).
pub fn dpowf(x: f64, e: f64) -> f64 {
    e * powf(x, e - 1.0)
}

/// `max(x, 0)`.
pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}
/// The relu derivative: 1 above 0, 0 at and below (the kink takes the left side).
pub fn drelu(x: f64) -> f64 {
    if x > 0.0 { 1.0 } else { 0.0 }
}

fn gelu_k() -> f64 {
    (2.0 / std::f64::consts::PI).sqrt()
}

/// GELU, tanh approximation (GPT-2's): `0.5 x (1 + tanh(k (x + 0.044715 x^3)))`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (gelu_k() * (x + 0.044715 * x.powi(3))).tanh())
}
/// d gelu(x)/dx.
pub fn dgelu(x: f64) -> f64 {
    let t = (gelu_k() * (x + 0.044715 * x.powi(3))).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * gelu_k() * (1.0 + 3.0 * 0.044715 * x * x)
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
/// d sigmoid(x)/dx = s (1 - s).
pub fn dsigmoid(x: f64) -> f64 {
    let s = sigmoid(x);
    s * (1.0 - s)
}

/// Hyperbolic tangent.
pub fn tanh(x: f64) -> f64 {
    x.tanh()
}
/// d tanh(x)/dx = 1 - tanh^2.
pub fn dtanh(x: f64) -> f64 {
    1.0 - x.tanh().powi(2)
}

/// `|x|`.
pub fn abs(x: f64) -> f64 {
    x.abs()
}
/// d|x|/dx = sign(x), 0 at 0 (as PyTorch and the GPU).
pub fn dabs(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x.signum() }
}
