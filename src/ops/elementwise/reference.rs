//! Plain f64 CPU references of the broadcasting binary ops (NumPy rules, row-major) and of
//! `broadcast_to` with its backward (`sum_to`), for the tests and the fuzzer.

/// The NumPy broadcast of two shapes (assumed compatible: each pair of trailing dims equal or
/// one of them 1).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < r - s.len() {
            1
        } else {
            s[i - (r - s.len())]
        }
    };
    (0..r).map(|i| dim(a, i).max(dim(b, i))).collect()
}

/// The flat index in an operand of `shape` of element `i` of the broadcast output `out`.
pub fn broadcast_index(shape: &[usize], out: &[usize], i: usize) -> usize {
    let off = out.len() - shape.len();
    let mut rem = i;
    let mut idx = 0;
    let mut mult = 1;
    for d in (0..out.len()).rev() {
        let c = rem % out[d];
        rem /= out[d];
        if d >= off {
            let sd = shape[d - off];
            if sd != 1 {
                idx += c * mult;
            }
            mult *= sd;
        }
    }
    idx
}

/// `a + b`.
pub fn add(a: f64, b: f64) -> f64 {
    a + b
}
/// `a - b`.
pub fn sub(a: f64, b: f64) -> f64 {
    a - b
}
/// `a * b`.
pub fn mul(a: f64, b: f64) -> f64 {
    a * b
}
/// `a / b`.
pub fn div(a: f64, b: f64) -> f64 {
    a / b
}
/// (d/da, d/db) of `a + b`.
pub fn dadd(_a: f64, _b: f64) -> (f64, f64) {
    (1.0, 1.0)
}
/// (d/da, d/db) of `a - b`.
pub fn dsub(_a: f64, _b: f64) -> (f64, f64) {
    (1.0, -1.0)
}
/// (d/da, d/db) of `a * b`.
pub fn dmul(a: f64, b: f64) -> (f64, f64) {
    (b, a)
}
/// (d/da, d/db) of `a / b`.
pub fn ddiv(a: f64, b: f64) -> (f64, f64) {
    (1.0 / b, -a / (b * b))
}

/// `f(a, b)` broadcast: returns the output shape and values.
pub fn binary(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    f: &dyn Fn(f64, f64) -> f64,
) -> (Vec<usize>, Vec<f64>) {
    let out = broadcast_shape(sa, sb);
    let n: usize = out.iter().product();
    let v = (0..n)
        .map(|i| {
            f(
                a[broadcast_index(sa, &out, i)],
                b[broadcast_index(sb, &out, i)],
            )
        })
        .collect();
    (out, v)
}

/// The backward of [`binary`]: output gradient `g` -> (d/da, d/db), each summed over the axes
/// its operand was broadcast along. `df` gives the partials at one element.
pub fn binary_backward(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    g: &[f64],
    df: &dyn Fn(f64, f64) -> (f64, f64),
) -> (Vec<f64>, Vec<f64>) {
    let out = broadcast_shape(sa, sb);
    let (mut ga, mut gb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    for (i, &gi) in g.iter().enumerate() {
        let (ia, ib) = (broadcast_index(sa, &out, i), broadcast_index(sb, &out, i));
        let (da, db) = df(a[ia], b[ib]);
        ga[ia] += gi * da;
        gb[ib] += gi * db;
    }
    (ga, gb)
}

/// `x` of shape `src` broadcast to `dst`.
pub fn broadcast_to(x: &[f64], src: &[usize], dst: &[usize]) -> Vec<f64> {
    let n: usize = dst.iter().product();
    (0..n).map(|i| x[broadcast_index(src, dst, i)]).collect()
}

/// The backward of [`broadcast_to`]: `g` of shape `dst` summed back to `src`.
pub fn sum_to(g: &[f64], dst: &[usize], src: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; src.iter().product()];
    for (i, v) in g.iter().enumerate() {
        out[broadcast_index(src, dst, i)] += v;
    }
    out
}
