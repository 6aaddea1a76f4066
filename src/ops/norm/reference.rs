//! Plain f64 CPU references of LayerNorm over the last axis (two-pass mean and variance) and
//! its backward, for the tests. Dropout has none: its mask comes from the GPU's counter-based
//! hash, so its tests check the mask's effect on the output and the gradient instead.

/// LayerNorm of rows of `gamma.len()`: `(x - mean) / sqrt(var + eps) * gamma + beta`.
pub fn layer_norm(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let c = gamma.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let (mean, rstd) = moments(row, eps);
        y.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| (v - mean) * rstd * gamma[j] + beta[j]),
        );
    }
    y
}

fn moments(row: &[f64], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The backward of [`layer_norm`] for output gradient `g`: (dx, dgamma, dbeta).
pub fn layer_norm_backward(
    x: &[f64],
    gamma: &[f64],
    g: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = gamma.len();
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for (r, row) in x.chunks(c).enumerate() {
        let (mean, rstd) = moments(row, eps);
        let gr = &g[r * c..(r + 1) * c];
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let h: Vec<f64> = (0..c).map(|j| gr[j] * gamma[j]).collect();
        let mh = h.iter().sum::<f64>() / c as f64;
        let mhx = (0..c).map(|j| h[j] * xhat[j]).sum::<f64>() / c as f64;
        for j in 0..c {
            dx[r * c + j] = rstd * (h[j] - mh - xhat[j] * mhx);
            dgamma[j] += gr[j] * xhat[j];
            dbeta[j] += gr[j];
        }
    }
    (dx, dgamma, dbeta)
}

/// RMSNorm of rows of `weight.len()` (Hugging Face's LlamaRMSNorm):
/// `x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &[f64], weight: &[f64], eps: f64) -> Vec<f64> {
    let c = weight.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let rstd = rms_rstd(row, eps);
        y.extend(row.iter().zip(weight).map(|(v, w)| v * rstd * w));
    }
    y
}

fn rms_rstd(row: &[f64], eps: f64) -> f64 {
    let ms = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
    1.0 / (ms + eps).sqrt()
}

/// The backward of [`rms_norm`] for output gradient `g`: (dx, dweight).
pub fn rms_norm_backward(x: &[f64], weight: &[f64], g: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let c = weight.len();
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; c]);
    for (r, row) in x.chunks(c).enumerate() {
        let rstd = rms_rstd(row, eps);
        let gr = &g[r * c..(r + 1) * c];
        // y_j = x_j * rstd * w_j; d rstd / d x_i = -rstd^3 x_i / C.
        let s = (0..c).map(|j| gr[j] * weight[j] * row[j]).sum::<f64>();
        for j in 0..c {
            dx[r * c + j] = rstd * gr[j] * weight[j] - rstd.powi(3) * row[j] * s / c as f64;
            dw[j] += gr[j] * row[j] * rstd;
        }
    }
    (dx, dw)
}
