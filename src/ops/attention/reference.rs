//! Plain f64 CPU references for the attention family (public as
//! `portagrad::testing::reference::attention`): naive softmax attention, forward and analytic
//! backward, causal or not, and the head split / merge permutations. Tensors are flat,
//! row-major (B, H, T, D) unless stated.

/// (B, H, T, D)
pub type Dims = (usize, usize, usize, usize);

/// Softmax probabilities P (T, T) of one head, row-major, masked entries 0.
pub fn probs(q: &[f64], k: &[f64], t: usize, d: usize, causal: bool) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut p = vec![0.0; t * t];
    for i in 0..t {
        let n = if causal { i + 1 } else { t };
        let s: Vec<f64> = (0..n)
            .map(|j| (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<f64>() * scale)
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for j in 0..n {
            p[i * t + j] = (s[j] - m).exp() / z;
        }
    }
    p
}

/// Naive attention in f64: (B, H, T, D) -> (B, H, T, D).
pub fn forward(q: &[f64], k: &[f64], v: &[f64], dims: Dims, causal: bool) -> Vec<f64> {
    let (b, h, t, d) = dims;
    let mut o = vec![0.0; b * h * t * d];
    for bh in 0..b * h {
        let at = bh * t * d;
        let p = probs(&q[at..at + t * d], &k[at..at + t * d], t, d, causal);
        for i in 0..t {
            for j in 0..t {
                let pij = p[i * t + j];
                if pij != 0.0 {
                    for c in 0..d {
                        o[at + i * d + c] += pij * v[at + j * d + c];
                    }
                }
            }
        }
    }
    o
}

/// Analytic backward of [`forward`] for output gradient `g`: (dq, dk, dv).
pub fn backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: &[f64],
    dims: Dims,
    causal: bool,
) -> [Vec<f64>; 3] {
    let (b, h, t, d) = dims;
    let scale = 1.0 / (d as f64).sqrt();
    let n = b * h * t * d;
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for bh in 0..b * h {
        let at = bh * t * d;
        let p = probs(&q[at..at + t * d], &k[at..at + t * d], t, d, causal);
        for i in 0..t {
            // dP_ij = g_i . v_j; dS_ij = P_ij (dP_ij - sum_l P_il dP_il)
            let dp: Vec<f64> = (0..t)
                .map(|j| (0..d).map(|c| g[at + i * d + c] * v[at + j * d + c]).sum())
                .collect();
            let rs: f64 = (0..t).map(|j| p[i * t + j] * dp[j]).sum();
            for j in 0..t {
                let pij = p[i * t + j];
                let ds = pij * (dp[j] - rs) * scale;
                for c in 0..d {
                    dv[at + j * d + c] += pij * g[at + i * d + c];
                    dq[at + i * d + c] += ds * k[at + j * d + c];
                    dk[at + j * d + c] += ds * q[at + i * d + c];
                }
            }
        }
    }
    [dq, dk, dv]
}

/// CPU split of (B, T, 3C) into three (B, H, T, D).
pub fn split_heads(x: &[f64], b: usize, t: usize, c: usize, h: usize) -> [Vec<f64>; 3] {
    let d = c / h;
    let mut out = [
        vec![0.0; b * t * c],
        vec![0.0; b * t * c],
        vec![0.0; b * t * c],
    ];
    for bi in 0..b {
        for ti in 0..t {
            for (s, o) in out.iter_mut().enumerate() {
                for hi in 0..h {
                    for di in 0..d {
                        o[((bi * h + hi) * t + ti) * d + di] =
                            x[(bi * t + ti) * 3 * c + s * c + hi * d + di];
                    }
                }
            }
        }
    }
    out
}

/// CPU merge of (B, H, T, D) into (B, T, H·D).
pub fn merge_heads(x: &[f64], b: usize, h: usize, t: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                for di in 0..d {
                    out[(bi * t + ti) * h * d + hi * d + di] = x[((bi * h + hi) * t + ti) * d + di];
                }
            }
        }
    }
    out
}

/// CPU inverse of [`merge_heads`]: (B, T, H·D) -> (B, H, T, D).
pub fn unmerge_heads(x: &[f64], b: usize, h: usize, t: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                for di in 0..d {
                    out[((bi * h + hi) * t + ti) * d + di] = x[(bi * t + ti) * h * d + hi * d + di];
                }
            }
        }
    }
    out
}

/// CPU inverse of [`split_heads`]: three (B, H, T, D) -> (B, T, 3·H·D).
pub fn merge_heads3(x: &[Vec<f64>; 3], b: usize, h: usize, t: usize, d: usize) -> Vec<f64> {
    let c = h * d;
    let mut out = vec![0.0; b * t * 3 * c];
    for (s, xs) in x.iter().enumerate() {
        let m = merge_heads(xs, b, h, t, d);
        for bt in 0..b * t {
            out[bt * 3 * c + s * c..bt * 3 * c + (s + 1) * c]
                .copy_from_slice(&m[bt * c..(bt + 1) * c]);
        }
    }
    out
}

/// Grouped-query attention's K/V as plain multi-head K/V: (B, Hkv, T, D) -> (B, Hkv·group, T, D),
/// head `h` of the result a copy of head `h / group` (what the fused kernels avoid storing).
pub fn repeat_kv(x: &[f64], b: usize, hkv: usize, t: usize, d: usize, group: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len() * group);
    for bi in 0..b {
        for h in 0..hkv * group {
            let at = ((bi * hkv + h / group) * t) * d;
            out.extend_from_slice(&x[at..at + t * d]);
        }
    }
    out
}

/// The adjoint of [`repeat_kv`]: (B, Hkv·group, T, D) -> (B, Hkv, T, D), summing each group.
pub fn sum_kv_groups(
    x: &[f64],
    b: usize,
    hkv: usize,
    t: usize,
    d: usize,
    group: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; b * hkv * t * d];
    for bi in 0..b {
        for h in 0..hkv * group {
            let src = ((bi * hkv * group + h) * t) * d;
            let dst = ((bi * hkv + h / group) * t) * d;
            for i in 0..t * d {
                out[dst + i] += x[src + i];
            }
        }
    }
    out
}

/// Grouped-query attention: q (B, H, T, D), k, v (B, Hkv, T, D) -> (B, H, T, D), by
/// [`repeat_kv`] and [`forward`]. `dims` is (B, H, T, D).
pub fn forward_gqa(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dims: Dims,
    hkv: usize,
    causal: bool,
) -> Vec<f64> {
    let (b, h, t, d) = dims;
    let g = h / hkv;
    forward(
        q,
        &repeat_kv(k, b, hkv, t, d, g),
        &repeat_kv(v, b, hkv, t, d, g),
        dims,
        causal,
    )
}

/// The backward of [`forward_gqa`]: (dq (B, H, T, D), dk, dv (B, Hkv, T, D)).
pub fn backward_gqa(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: &[f64],
    dims: Dims,
    hkv: usize,
    causal: bool,
) -> [Vec<f64>; 3] {
    let (b, h, t, d) = dims;
    let grp = h / hkv;
    let (kr, vr) = (
        repeat_kv(k, b, hkv, t, d, grp),
        repeat_kv(v, b, hkv, t, d, grp),
    );
    let [dq, dk, dv] = backward(q, &kr, &vr, g, dims, causal);
    [
        dq,
        sum_kv_groups(&dk, b, hkv, t, d, grp),
        sum_kv_groups(&dv, b, hkv, t, d, grp),
    ]
}

/// CPU split of a fused grouped-query projection (B, T, (H + 2·Hkv)·D) into q (B, H, T, D)
/// and k, v (B, Hkv, T, D).
pub fn split_qkv(x: &[f64], b: usize, t: usize, h: usize, hkv: usize, d: usize) -> [Vec<f64>; 3] {
    let w = (h + 2 * hkv) * d;
    let block = |col0: usize, heads: usize| {
        let mut out = vec![0.0; b * heads * t * d];
        for bi in 0..b {
            for hi in 0..heads {
                for ti in 0..t {
                    for di in 0..d {
                        out[((bi * heads + hi) * t + ti) * d + di] =
                            x[(bi * t + ti) * w + col0 + hi * d + di];
                    }
                }
            }
        }
        out
    };
    [block(0, h), block(h * d, hkv), block((h + hkv) * d, hkv)]
}

/// CPU inverse of [`split_qkv`]: q (B, H, T, D), k, v (B, Hkv, T, D) -> (B, T, (H + 2·Hkv)·D).
pub fn merge_qkv(
    x: &[Vec<f64>; 3],
    b: usize,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
) -> Vec<f64> {
    let w = (h + 2 * hkv) * d;
    let mut out = vec![0.0; b * t * w];
    for (xs, col0, heads) in [
        (&x[0], 0, h),
        (&x[1], h * d, hkv),
        (&x[2], (h + hkv) * d, hkv),
    ] {
        for bi in 0..b {
            for hi in 0..heads {
                for ti in 0..t {
                    for di in 0..d {
                        out[(bi * t + ti) * w + col0 + hi * d + di] =
                            xs[((bi * heads + hi) * t + ti) * d + di];
                    }
                }
            }
        }
    }
    out
}
