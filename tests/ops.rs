//! Every core op on the GPU against a plain-Rust f64 reference, on awkward shapes: size 1, 7,
//! a non-power-of-two, and one past 65,535 × 256 elements (so 2-D grid folding is exercised).

use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Error, Tensor};

/// Past 65,535 workgroups of 256 invocations: 16,843,009 elements.
const BIG: [usize; 2] = [65_537, 257];
/// n % 4 == 0 shapes take the vec4 kernels, the others the scalar ones.
const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 333], &[5, 12], &[1000, 1000], &BIG];

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

fn check_unary(
    name: &str,
    f: impl Fn(&Tensor) -> portagrad::Result<Tensor>,
    r: impl Fn(f64) -> f64,
    lo: f32,
    hi: f32,
    rtol: f64,
    atol: f64,
) {
    for (k, shape) in SHAPES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = random_vec(n, lo, hi, 11 + k as u64);
        let y = f(&upload(&x, shape)).expect(name);
        assert_eq!(y.shape(), *shape);
        let want: Vec<f64> = x.iter().map(|&v| r(f64::from(v))).collect();
        assert_close(
            &format!("{name} {shape:?}"),
            &y.to_vec().unwrap(),
            &want,
            rtol,
            atol,
        );
    }
}

fn gelu_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

// Tolerances: exact ops (neg, relu, scalar add/mul) 1e-7 relative; transcendental ops 1e-5
// relative plus 1e-6 absolute (f32 evaluation of exp/log/tanh on the adapter).
#[test]
fn unary_ops_match_cpu() {
    check_unary("neg", |t| t.neg(), |x| -x, -3.0, 3.0, 1e-7, 0.0);
    check_unary("relu", |t| t.relu(), |x| x.max(0.0), -3.0, 3.0, 1e-7, 0.0);
    check_unary(
        "add_scalar",
        |t| t.add_scalar(1.5),
        |x| x + 1.5,
        -3.0,
        3.0,
        1e-7,
        1e-7,
    );
    check_unary(
        "mul_scalar",
        |t| t.mul_scalar(-0.25),
        |x| x * -0.25,
        -3.0,
        3.0,
        1e-7,
        0.0,
    );
    check_unary("exp", |t| t.exp(), f64::exp, -10.0, 10.0, 1e-5, 1e-6);
    check_unary("log", |t| t.log(), f64::ln, 1e-3, 100.0, 1e-5, 1e-6);
    check_unary("sqrt", |t| t.sqrt(), f64::sqrt, 0.0, 100.0, 1e-5, 1e-6);
    check_unary("pow2", |t| t.powf(2.0), |x| x * x, -3.0, 3.0, 1e-5, 1e-6);
    check_unary(
        "pow3",
        |t| t.powf(3.0),
        |x| x.powi(3),
        -3.0,
        3.0,
        1e-5,
        1e-6,
    );
    check_unary("pow0.5", |t| t.powf(0.5), f64::sqrt, 0.0, 9.0, 1e-5, 1e-6);
    check_unary("gelu", |t| t.gelu(), gelu_ref, -6.0, 6.0, 1e-5, 1e-6);
    check_unary(
        "sigmoid",
        |t| t.sigmoid(),
        |x| 1.0 / (1.0 + (-x).exp()),
        -20.0,
        20.0,
        1e-5,
        1e-6,
    );
    check_unary("tanh", |t| t.tanh(), f64::tanh, -10.0, 10.0, 1e-5, 1e-6);
}

#[test]
fn unary_ops_saturate_on_extreme_inputs() {
    let x = [-100.0f32, -88.0, 88.0, 100.0];
    let t = upload(&x, &[4]);
    let want_s: Vec<f64> = x
        .iter()
        .map(|&v| 1.0 / (1.0 + (-f64::from(v)).exp()))
        .collect();
    assert_close(
        "sigmoid extreme",
        &t.sigmoid().unwrap().to_vec().unwrap(),
        &want_s,
        1e-5,
        1e-30,
    );
    assert_close(
        "tanh extreme",
        &t.tanh().unwrap().to_vec().unwrap(),
        &[-1.0, -1.0, 1.0, 1.0],
        1e-7,
        0.0,
    );
    let want_g: Vec<f64> = x.iter().map(|&v| gelu_ref(f64::from(v))).collect();
    assert_close(
        "gelu extreme",
        &t.gelu().unwrap().to_vec().unwrap(),
        &want_g,
        1e-6,
        1e-6,
    );
}

fn broadcast_ref(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<usize>, Vec<f64>) {
    let rank = sa.len().max(sb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(sa), pad(sb));
    let out: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let n: usize = out.iter().product();
    let idx = |shape: &[usize], coord: &[usize]| {
        coord
            .iter()
            .zip(shape)
            .fold(0, |acc, (&c, &d)| acc * d + if d == 1 { 0 } else { c })
    };
    let mut res = Vec::with_capacity(n);
    let mut coord = vec![0; rank];
    for i in 0..n {
        let mut rem = i;
        for d in (0..rank).rev() {
            coord[d] = rem % out[d];
            rem /= out[d];
        }
        res.push(f(
            f64::from(a[idx(&pa, &coord)]),
            f64::from(b[idx(&pb, &coord)]),
        ));
    }
    (out, res)
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[1], &[1]),
        (&[7], &[7]),
        (&[3, 333], &[3, 333]),
        (&BIG, &BIG),
        (&[5, 12], &[5, 12]),
        (&[1000, 1000], &[1000, 1000]),
        (&[7, 1], &[1, 5]),
        (&[2, 3, 4], &[4]),
        (&[4], &[2, 3, 4]),
        (&[5, 1, 3], &[1, 4, 1]),
        (&[], &[7]),
        (&[3, 1, 333], &[3, 2, 333]),
        (&BIG, &[257]),
        (&[2, 1, 3, 1, 2, 1, 2, 1, 3], &[1, 2, 1, 2, 1, 2, 1, 3][..]),
    ];
    type F = fn(f64, f64) -> f64;
    let ops: [(&str, F); 4] = [
        ("add", |x, y| x + y),
        ("sub", |x, y| x - y),
        ("mul", |x, y| x * y),
        ("div", |x, y| x / y),
    ];
    for (k, (sa, sb)) in cases.iter().enumerate() {
        if sa.len().max(sb.len()) > 8 {
            let a = upload(&random_vec(sa.iter().product(), -1.0, 1.0, 1), sa);
            let b = upload(&random_vec(sb.iter().product(), -1.0, 1.0, 2), sb);
            assert!(
                matches!(a.add(&b), Err(Error::Shape { .. })),
                "rank 9 must be rejected"
            );
            continue;
        }
        let a = random_vec(sa.iter().product(), -2.0, 2.0, 100 + k as u64);
        // Divisors kept away from zero.
        let b: Vec<f32> = random_vec(sb.iter().product(), 0.5, 2.0, 200 + k as u64)
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 2 == 0 { v } else { -v })
            .collect();
        let (ta, tb) = (upload(&a, sa), upload(&b, sb));
        for (name, f) in ops {
            let got = match name {
                "add" => ta.add(&tb),
                "sub" => ta.sub(&tb),
                "mul" => ta.mul(&tb),
                _ => ta.div(&tb),
            }
            .unwrap();
            let (shape, want) = broadcast_ref(&a, sa, &b, sb, f);
            assert_eq!(got.shape(), &shape[..], "{name} {sa:?} {sb:?}");
            assert_close(
                &format!("{name} {sa:?} {sb:?}"),
                &got.to_vec().unwrap(),
                &want,
                1e-6,
                0.0,
            );
        }
    }
}

#[test]
fn binary_shape_errors_name_both_shapes() {
    let a = upload(&[0.0; 6], &[2, 3]);
    let b = upload(&[0.0; 4], &[4]);
    let err = a.add(&b).unwrap_err().to_string();
    assert!(
        err.contains("[2, 3]") && err.contains("[4]") && err.contains("add"),
        "{err}"
    );
}

fn rows_of(shape: &[usize]) -> (usize, usize) {
    let c = *shape.last().unwrap();
    (shape.iter().product::<usize>() / c, c)
}

// Sums: absolute tolerance scaled by the sum of magnitudes (f32 accumulation, tree order).
#[test]
fn reductions_over_last_axis_and_all() {
    let shapes: &[&[usize]] = &[&[1], &[7], &[3, 333], &[5, 1000], &[70_001, 3], &BIG];
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = random_vec(n, -1.0, 1.0, 300 + k as u64);
        let t = upload(&x, shape);
        let (rows, cols) = rows_of(shape);
        let mut sum = vec![0.0f64; rows];
        let mut abs = vec![0.0f64; rows];
        let mut mx = vec![f64::NEG_INFINITY; rows];
        for r in 0..rows {
            for c in 0..cols {
                let v = f64::from(x[r * cols + c]);
                sum[r] += v;
                abs[r] += v.abs();
                mx[r] = mx[r].max(v);
            }
        }
        let tol = 1e-6 * abs.iter().cloned().fold(0.0, f64::max);
        assert_close(
            &format!("sum_last {shape:?}"),
            &t.sum_last().unwrap().to_vec().unwrap(),
            &sum,
            0.0,
            tol.max(1e-7),
        );
        let mean: Vec<f64> = sum.iter().map(|s| s / cols as f64).collect();
        assert_close(
            &format!("mean_last {shape:?}"),
            &t.mean_last().unwrap().to_vec().unwrap(),
            &mean,
            0.0,
            (tol / cols as f64).max(1e-7),
        );
        assert_close(
            &format!("max_last {shape:?}"),
            &t.max_last().unwrap().to_vec().unwrap(),
            &mx,
            0.0,
            0.0,
        );
        let total: f64 = sum.iter().sum();
        let total_abs: f64 = abs.iter().sum();
        assert_close(
            &format!("sum {shape:?}"),
            &[t.sum().unwrap().item().unwrap()],
            &[total],
            0.0,
            1e-6 * total_abs + 1e-7,
        );
        assert_close(
            &format!("mean {shape:?}"),
            &[t.mean().unwrap().item().unwrap()],
            &[total / n as f64],
            0.0,
            1e-6 * total_abs / n as f64 + 1e-9,
        );
        let gmax = mx.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_close(
            &format!("max {shape:?}"),
            &[t.max().unwrap().item().unwrap()],
            &[gmax],
            0.0,
            0.0,
        );
    }
}

#[test]
fn reductions_keep_infinities_and_reject_empty() {
    let t = upload(&[f32::NEG_INFINITY; 3], &[1, 3]);
    assert_eq!(
        t.max_last().unwrap().to_vec().unwrap(),
        vec![f32::NEG_INFINITY]
    );
    let e = Tensor::zeros(&shared_device(), &[0, 4]).unwrap();
    assert!(matches!(e.sum(), Err(Error::Shape { .. })));
}

fn softmax_ref(x: &[f32], cols: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        for &v in row {
            let z = f64::from(v) - m;
            out.push(if log { z - s.ln() } else { z.exp() / s });
        }
    }
    out
}

#[test]
fn softmax_and_log_softmax_match_cpu() {
    let shapes: &[&[usize]] = &[&[1], &[7], &[3, 333], &[2, 5, 1000], &BIG];
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        // Wide range: a naive exp would overflow at 100.
        let x = random_vec(n, -100.0, 100.0, 400 + k as u64);
        let t = upload(&x, shape);
        let (_, cols) = rows_of(shape);
        assert_close(
            &format!("softmax {shape:?}"),
            &t.softmax().unwrap().to_vec().unwrap(),
            &softmax_ref(&x, cols, false),
            1e-5,
            1e-7,
        );
        assert_close(
            &format!("log_softmax {shape:?}"),
            &t.log_softmax().unwrap().to_vec().unwrap(),
            &softmax_ref(&x, cols, true),
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn transpose_last_two_axes() {
    let shapes: &[&[usize]] = &[&[1, 1], &[7, 1], &[3, 7], &[2, 3, 333], &[4099, 4097]];
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = random_vec(n, -1.0, 1.0, 500 + k as u64);
        let r = shape.len();
        let (m, c) = (shape[r - 2], shape[r - 1]);
        let mut want = vec![0.0f64; n];
        for b in 0..n / (m * c) {
            for i in 0..m {
                for j in 0..c {
                    want[b * m * c + j * m + i] = f64::from(x[b * m * c + i * c + j]);
                }
            }
        }
        let y = upload(&x, shape).transpose().unwrap();
        let mut ws = shape.to_vec();
        ws.swap(r - 2, r - 1);
        assert_eq!(y.shape(), &ws[..]);
        assert_close(
            &format!("transpose {shape:?}"),
            &y.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
        );
    }
    assert!(matches!(
        upload(&[1.0], &[1]).transpose(),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn gather_rows_by_ids() {
    let dev = shared_device();
    for (k, &(v, d, n)) in [
        (1usize, 1usize, 1usize),
        (7, 5, 13),
        (50, 333, 7),
        (300, 64, 70_000),
    ]
    .iter()
    .enumerate()
    {
        let table = random_vec(v * d, -1.0, 1.0, 600 + k as u64);
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7919 + k) % v) as u32).collect();
        let t = upload(&table, &[v, d]);
        let it = Tensor::from_u32(&dev, &ids, &[n]).unwrap();
        let y = t.gather_rows(&it).unwrap();
        assert_eq!(y.shape(), &[n, d]);
        let want: Vec<f64> = ids
            .iter()
            .flat_map(|&id| {
                table[id as usize * d..(id as usize + 1) * d]
                    .iter()
                    .map(|&x| f64::from(x))
            })
            .collect();
        assert_close(
            &format!("gather ({v},{d}) x {n}"),
            &y.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
        );
    }
    // 2-D ids keep their shape.
    let t = upload(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[3, 2]);
    let ids = Tensor::from_u32(&dev, &[2, 0, 1, 2], &[2, 2]).unwrap();
    let y = t.gather_rows(&ids).unwrap();
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(
        y.to_vec().unwrap(),
        vec![4.0, 5.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
    // Out-of-range ids are an error, not a silent zero row.
    let bad = Tensor::from_u32(&dev, &[0, 3], &[2]).unwrap();
    let err = t.gather_rows(&bad).unwrap_err().to_string();
    assert!(err.contains("id 3") && err.contains("3 rows"), "{err}");
    assert!(matches!(t.gather_rows(&t), Err(Error::DType { .. })));
}

#[test]
fn creation_and_reshape() {
    let dev = shared_device();
    assert_eq!(
        Tensor::zeros(&dev, &[7]).unwrap().to_vec().unwrap(),
        vec![0.0; 7]
    );
    assert_eq!(
        Tensor::ones(&dev, &[2, 3]).unwrap().to_vec().unwrap(),
        vec![1.0; 6]
    );
    assert_eq!(Tensor::full(&dev, &[], 2.5).unwrap().item().unwrap(), 2.5);
    let x = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let y = x.reshape(&[3, usize::MAX]).unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(y.to_vec().unwrap(), x.to_vec().unwrap());
    assert!(matches!(x.reshape(&[4, 2]), Err(Error::Shape { .. })));
    assert!(matches!(
        Tensor::from_slice(&dev, &[1.0, 2.0], &[3]),
        Err(Error::Shape { .. })
    ));
    let ids = Tensor::from_u32(&dev, &[3, 1, 4], &[3]).unwrap();
    assert_eq!(ids.to_vec_u32().unwrap(), vec![3, 1, 4]);
    assert!(matches!(ids.to_vec(), Err(Error::DType { .. })));
    assert!(matches!(ids.relu(), Err(Error::DType { .. })));
}

#[test]
fn seeded_random_is_reproducible_and_well_distributed() {
    let dev = shared_device();
    let n = 1 << 20;
    let a = Tensor::rand_uniform(&dev, &[n], -2.0, 3.0, 42)
        .unwrap()
        .to_vec()
        .unwrap();
    let b = Tensor::rand_uniform(&dev, &[n], -2.0, 3.0, 42)
        .unwrap()
        .to_vec()
        .unwrap();
    let c = Tensor::rand_uniform(&dev, &[n], -2.0, 3.0, 43)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(a, b, "same seed, same values");
    assert_ne!(a, c, "different seed, different values");
    assert!(a.iter().all(|&v| (-2.0..3.0).contains(&v)));
    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
    let z = Tensor::rand_normal(&dev, &[n], 1.0, 2.0, 7)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(z.iter().all(|v| v.is_finite()));
    let m = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = z.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n as f64;
    assert!(
        (m - 1.0).abs() < 0.01 && (var.sqrt() - 2.0).abs() < 0.01,
        "normal mean {m} std {}",
        var.sqrt()
    );
    assert!(matches!(
        Tensor::rand_normal(&dev, &[2], 0.0, -1.0, 0),
        Err(Error::InvalidArgument { .. })
    ));
}
