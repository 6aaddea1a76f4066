//! Plain f64 CPU references for the matmul family (public as
//! `portagrad::testing::reference::matmul`): batched NumPy-style products with transposes and
//! broadcasting, and `linear`'s bias and activation epilogue. Accumulate in f64, so a GPU
//! result is compared against the exact product of its f32 inputs.

use crate::ops::matmul::Activation;

/// Batched `op(A)·op(B)` of row-major operands of shapes `sa` and `sb` (at least 2-D), where
/// `op` transposes the last two dims when its flag is set (`ta`: A stored (.., K, M); `tb`: B
/// stored (.., N, K)). Leading dims broadcast as in NumPy. Returns (output shape, values).
pub fn matmul(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    ta: bool,
    tb: bool,
) -> (Vec<usize>, Vec<f64>) {
    let (ra, rb) = (sa.len(), sb.len());
    let (m, k) = if ta {
        (sa[ra - 1], sa[ra - 2])
    } else {
        (sa[ra - 2], sa[ra - 1])
    };
    let n = if tb { sb[rb - 2] } else { sb[rb - 1] };
    let (ba, bb) = (&sa[..ra - 2], &sb[..rb - 2]);
    let nb = ba.len().max(bb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; nb - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(ba), pad(bb));
    let bshape: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let batch: usize = bshape.iter().product();
    let mut out = vec![0.0f64; batch * m * n];
    for bi in 0..batch {
        // Index of this batch item in each operand (broadcast dims repeat item 0).
        let (mut rem, mut ia, mut ib, mut sta, mut stb) = (bi, 0, 0, 1, 1);
        for d in (0..nb).rev() {
            let c = rem % bshape[d];
            rem /= bshape[d];
            if pa[d] != 1 {
                ia += c * sta;
            }
            if pb[d] != 1 {
                ib += c * stb;
            }
            sta *= pa[d];
            stb *= pb[d];
        }
        let (oa, ob) = (ia * m * k, ib * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for q in 0..k {
                    let x = if ta {
                        a[oa + q * m + i]
                    } else {
                        a[oa + i * k + q]
                    };
                    let y = if tb {
                        b[ob + j * k + q]
                    } else {
                        b[ob + q * n + j]
                    };
                    s += f64::from(x) * f64::from(y);
                }
                out[(bi * m + i) * n + j] = s;
            }
        }
    }
    let mut shape = bshape;
    shape.extend([m, n]);
    (shape, out)
}

/// GPT-2's tanh approximation of GELU, the formula of the kernels' epilogue.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// The activation of `linear`'s epilogue.
pub fn activation(v: f64, act: Activation) -> f64 {
    match act {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        Activation::Gelu => gelu(v),
    }
}

/// `linear`'s epilogue over a product `xw` of N columns: `act(xw + bias)`, the bias (N) added
/// to every row when given.
pub fn epilogue(xw: &[f64], n: usize, bias: Option<&[f32]>, act: Activation) -> Vec<f64> {
    xw.iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = match bias {
                Some(b) => v + f64::from(b[i % n]),
                None => v,
            };
            activation(v, act)
        })
        .collect()
}
