//! Plain f64 CPU references of the losses (MSE, BCE-with-logits, cross-entropy with an
//! ignore index) with their gradients, and of the accuracy metrics, for the tests.

/// Mean of `(x - t)^2`.
pub fn mse(x: &[f64], t: &[f64]) -> f64 {
    x.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / x.len() as f64
}

/// d mse/dx scaled by the loss gradient `g`: `g 2 (x - t) / n`.
pub fn mse_backward(x: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    let n = x.len() as f64;
    x.iter()
        .zip(t)
        .map(|(a, b)| g * 2.0 * (a - b) / n)
        .collect()
}

/// One BCE-with-logits term, stable for any logit: `max(z, 0) - z t + ln(1 + e^-|z|)`.
pub fn bce_term(z: f64, t: f64) -> f64 {
    z.max(0.0) - z * t + (-z.abs()).exp().ln_1p()
}

/// Mean BCE-with-logits of logits `z` against targets `t`.
pub fn bce_with_logits(z: &[f64], t: &[f64]) -> f64 {
    z.iter().zip(t).map(|(&z, &t)| bce_term(z, t)).sum::<f64>() / z.len() as f64
}

/// d bce/dz scaled by the loss gradient `g`: `g (sigmoid(z) - t) / n`.
pub fn bce_with_logits_backward(z: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    let n = z.len() as f64;
    z.iter()
        .zip(t)
        .map(|(&z, &t)| g * (1.0 / (1.0 + (-z).exp()) - t) / n)
        .collect()
}

/// Cross-entropy of logits `z` (rows of `cols`) against class ids `t`, the mean over the rows
/// whose id is not `ignore`: (loss, d loss/dz). All rows ignored: loss 0, gradient 0.
pub fn cross_entropy(z: &[f64], cols: usize, t: &[u32], ignore: Option<u32>) -> (f64, Vec<f64>) {
    let counted: Vec<bool> = t.iter().map(|&id| Some(id) != ignore).collect();
    let count = counted.iter().filter(|&&b| b).count() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; z.len()];
    for (r, row) in z.chunks(cols).enumerate() {
        if !counted[r] {
            continue;
        }
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let lse = m + s.ln();
        loss += lse - row[t[r] as usize];
        for j in 0..cols {
            let onehot = if j == t[r] as usize { 1.0 } else { 0.0 };
            grad[r * cols + j] = ((row[j] - lse).exp() - onehot) / count;
        }
    }
    if count == 0.0 {
        (0.0, grad)
    } else {
        (loss / count, grad)
    }
}

/// Fraction of rows (of `cols`) whose first maximum is at the target id.
pub fn accuracy(z: &[f64], cols: usize, t: &[u32]) -> f64 {
    let right = z
        .chunks(cols)
        .zip(t)
        .filter(|&(row, &t)| {
            let mut best = 0;
            for j in 1..cols {
                if row[j] > row[best] {
                    best = j;
                }
            }
            best == t as usize
        })
        .count();
    right as f64 / t.len() as f64
}

/// Fraction of logits on the target's side: `(z > 0) == (t > 0.5)`.
pub fn binary_accuracy(z: &[f64], t: &[f64]) -> f64 {
    let right = z
        .iter()
        .zip(t)
        .filter(|&(&z, &t)| (z > 0.0) == (t > 0.5))
        .count();
    right as f64 / z.len() as f64
}
