//! Plain f64 CPU references of rotary embeddings (public as
//! `portagrad::testing::reference::rope`): the inverse frequencies (default and Llama 3
//! scaling, written as Meta's original `apply_scaling` loop rather than Hugging Face's tensor
//! form the library follows), and the rotation of (B, H, T, D) heads in the `rotate_half`
//! convention, forward and backward.

/// `1 / theta^(2i / head_dim)` for i < head_dim / 2.
pub fn default_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect()
}

/// Llama 3's frequency scaling of `freqs` (Meta's `apply_scaling`): wavelengths shorter than
/// `old_context / high_freq_factor` kept, longer than `old_context / low_freq_factor` divided
/// by `factor`, interpolated in between.
pub fn llama3_inv_freq(
    freqs: &[f64],
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    old_context: f64,
) -> Vec<f64> {
    let low_freq_wavelen = old_context / low_freq_factor;
    let high_freq_wavelen = old_context / high_freq_factor;
    let mut out = Vec::new();
    for &freq in freqs {
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        if wavelen < high_freq_wavelen {
            out.push(freq);
        } else if wavelen > low_freq_wavelen {
            out.push(freq / factor);
        } else {
            let smooth =
                (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
            out.push((1.0 - smooth) * freq / factor + smooth * freq);
        }
    }
    out
}

/// Rotary embedding of `x` (B, H, T, D) flat, row t at position `offset + t`, angle
/// `position * inv_freq[i]` (inv_freq has D/2 entries): `x * cos + rotate_half(x) * sin` with
/// `rotate_half(x) = cat(-x[D/2..], x[..D/2])` and cos, sin repeated over both halves.
pub fn rope(x: &[f64], t: usize, inv_freq: &[f64], offset: usize) -> Vec<f64> {
    rotate(x, t, inv_freq, offset, 1.0)
}

/// The backward of [`rope`] for output gradient `g`: the rotation by minus the angle.
pub fn rope_backward(g: &[f64], t: usize, inv_freq: &[f64], offset: usize) -> Vec<f64> {
    rotate(g, t, inv_freq, offset, -1.0)
}

fn rotate(x: &[f64], t: usize, inv_freq: &[f64], offset: usize, sign: f64) -> Vec<f64> {
    let d = 2 * inv_freq.len();
    let mut y = vec![0.0; x.len()];
    for (r, (row, out)) in x.chunks(d).zip(y.chunks_mut(d)).enumerate() {
        let pos = (offset + r % t) as f64;
        // rotate_half(row) and cos / sin over the whole row, as the Python code writes it.
        let rot: Vec<f64> = (0..d)
            .map(|j| {
                if j < d / 2 {
                    -row[j + d / 2]
                } else {
                    row[j - d / 2]
                }
            })
            .collect();
        for j in 0..d {
            let angle = pos * inv_freq[j % (d / 2)];
            out[j] = row[j] * angle.cos() + rot[j] * sign * angle.sin();
        }
    }
    y
}
