//! Plain f64 CPU references of SwiGLU (public as `portagrad::testing::reference::swiglu`):
//! `silu(gate) * up`, fused (rows of [gate, up]) and from two inputs, and their backward.

fn sigmoid(a: f64) -> f64 {
    1.0 / (1.0 + (-a).exp())
}

/// `silu(a) * u` and its partial derivatives (d/da, d/du).
pub fn swiglu_one(a: f64, u: f64) -> (f64, f64, f64) {
    let s = sigmoid(a);
    let silu = a * s;
    (silu * u, u * (s + a * s * (1.0 - s)), silu)
}

/// Rows of `2f` values [gate (f), up (f)] -> rows of `f` values `silu(gate) * up`.
pub fn swiglu(x: &[f64], f: usize) -> Vec<f64> {
    x.chunks(2 * f)
        .flat_map(|r| (0..f).map(move |j| swiglu_one(r[j], r[f + j]).0))
        .collect()
}

/// The backward of [`swiglu`] for output gradient `g` (rows of `f`): dx (rows of `2f`).
pub fn swiglu_backward(x: &[f64], g: &[f64], f: usize) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    for (r, row) in x.chunks(2 * f).enumerate() {
        for j in 0..f {
            let (_, da, du) = swiglu_one(row[j], row[f + j]);
            dx[r * 2 * f + j] = g[r * f + j] * da;
            dx[r * 2 * f + f + j] = g[r * f + j] * du;
        }
    }
    dx
}

/// `silu(gate) * up` elementwise.
pub fn swiglu2(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&a, &u)| swiglu_one(a, u).0)
        .collect()
}

/// The backward of [`swiglu2`]: (d gate, d up).
pub fn swiglu2_backward(gate: &[f64], up: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>) {
    (0..gate.len())
        .map(|i| {
            let (_, da, du) = swiglu_one(gate[i], up[i]);
            (g[i] * da, g[i] * du)
        })
        .unzip()
}
