//! Plain f64 CPU references of softmax and log-softmax over rows of `cols` (max-subtracted,
//! so large logits stay finite) and their backward, for the tests and the fuzzer.

/// Softmax of each row.
pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
    rows(x, cols, false)
}

/// Log-softmax of each row: `x - max - ln(sum(exp(x - max)))`.
pub fn log_softmax(x: &[f64], cols: usize) -> Vec<f64> {
    rows(x, cols, true)
}

fn rows(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        out.extend(row.iter().map(|v| {
            if log {
                v - m - s.ln()
            } else {
                (v - m).exp() / s
            }
        }));
    }
    out
}

/// The backward of [`softmax`] from its output `y`: `y (g - sum(g y))` per row.
pub fn softmax_backward(y: &[f64], g: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(y.len());
    for (yr, gr) in y.chunks(cols).zip(g.chunks(cols)) {
        let s: f64 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
        out.extend(yr.iter().zip(gr).map(|(y, g)| y * (g - s)));
    }
    out
}

/// The backward of [`log_softmax`] from its output `y`: `g - exp(y) sum(g)` per row.
pub fn log_softmax_backward(y: &[f64], g: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(y.len());
    for (yr, gr) in y.chunks(cols).zip(g.chunks(cols)) {
        let s: f64 = gr.iter().sum();
        out.extend(yr.iter().zip(gr).map(|(y, g)| g - y.exp() * s));
    }
    out
}
