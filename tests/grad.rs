//! Gradient checks for the core ops: GPU backward vs analytic CPU backward (f64), and CPU
//! backward vs central finite differences (f64), on awkward shapes; plus the tape's semantics.

mod common;

use common::{bcast_index, bcast_shape, check_grad, constant, inp};
use portagrad::testing::{assert_close, shared_device};
use portagrad::{Error, Tensor};

type F1 = fn(f64) -> f64;

fn unary_case(
    name: &str,
    f: &dyn Fn(&Tensor) -> portagrad::Result<Tensor>,
    fx: F1,
    dfx: F1,
    lo: f32,
    hi: f32,
) {
    // [4, 9]: a multiple of 4, the vec4 forward and backward entry points.
    for shape in [&[1usize][..], &[7], &[3, 37], &[4, 9]] {
        check_grad(
            &format!("{name} {shape:?}"),
            &[inp(shape, lo, hi)],
            &|t| f(&t[0]),
            &|x| x[0].iter().map(|&v| fx(v)).collect(),
            &|x, g| vec![x[0].iter().zip(g).map(|(&v, &g)| g * dfx(v)).collect()],
            1e-5,
            1e-4,
        );
    }
}

fn gelu(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
}
fn dgelu(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let t = (k * (x + 0.044715 * x.powi(3))).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
}
fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn unary_gradients() {
    unary_case("neg", &|t| t.neg(), |x| -x, |_| -1.0, -2.0, 2.0);
    unary_case(
        "add_scalar",
        &|t| t.add_scalar(3.0),
        |x| x + 3.0,
        |_| 1.0,
        -2.0,
        2.0,
    );
    unary_case(
        "mul_scalar",
        &|t| t.mul_scalar(-1.5),
        |x| -1.5 * x,
        |_| -1.5,
        -2.0,
        2.0,
    );
    unary_case("exp", &|t| t.exp(), f64::exp, f64::exp, -3.0, 3.0);
    unary_case("log", &|t| t.log(), f64::ln, |x| 1.0 / x, 0.1, 5.0);
    unary_case(
        "sqrt",
        &|t| t.sqrt(),
        f64::sqrt,
        |x| 0.5 / x.sqrt(),
        0.1,
        5.0,
    );
    unary_case(
        "pow3",
        &|t| t.powf(3.0),
        |x| x.powi(3),
        |x| 3.0 * x * x,
        -2.0,
        2.0,
    );
    unary_case(
        "pow1.5",
        &|t| t.powf(1.5),
        |x| x.powf(1.5),
        |x| 1.5 * x.sqrt(),
        0.1,
        3.0,
    );
    // relu: inputs kept off the kink at 0 so finite differences are meaningful.
    unary_case(
        "relu",
        &|t| t.relu().and_then(|r| r.add(&t.mul_scalar(0.0)?)),
        |x| x.max(0.0),
        |x| if x > 0.0 { 1.0 } else { 0.0 },
        0.05,
        2.0,
    );
    unary_case(
        "relu-neg",
        &|t| t.relu(),
        |x| x.max(0.0),
        |x| if x > 0.0 { 1.0 } else { 0.0 },
        -2.0,
        -0.05,
    );
    unary_case("gelu", &|t| t.gelu(), gelu, dgelu, -4.0, 4.0);
    unary_case(
        "sigmoid",
        &|t| t.sigmoid(),
        sig,
        |x| sig(x) * (1.0 - sig(x)),
        -6.0,
        6.0,
    );
    unary_case(
        "tanh",
        &|t| t.tanh(),
        f64::tanh,
        |x| 1.0 - x.tanh().powi(2),
        -3.0,
        3.0,
    );
}

#[test]
fn binary_gradients_reduce_over_broadcast_axes() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[7], &[7]),
        (&[3, 5], &[5]),
        (&[4, 1, 3], &[1, 5, 1]),
        (&[1], &[2, 3]),
        (&[6, 4], &[6, 1]),
    ];
    for &(sa, sb) in cases {
        let out = bcast_shape(sa, sb);
        let n: usize = out.iter().product();
        for op in ["add", "sub", "mul", "div"] {
            let (o1, o2) = (out.clone(), out.clone());
            let (a1, b1, a2, b2) = (sa.to_vec(), sb.to_vec(), sa.to_vec(), sb.to_vec());
            let f = move |x: &[Vec<f64>]| -> Vec<f64> {
                (0..n)
                    .map(|i| {
                        let (u, v) = (
                            x[0][bcast_index(&a1, &o1, i)],
                            x[1][bcast_index(&b1, &o1, i)],
                        );
                        match op {
                            "add" => u + v,
                            "sub" => u - v,
                            "mul" => u * v,
                            _ => u / v,
                        }
                    })
                    .collect()
            };
            let b = move |x: &[Vec<f64>], g: &[f64]| -> Vec<Vec<f64>> {
                let mut ga = vec![0.0; x[0].len()];
                let mut gb = vec![0.0; x[1].len()];
                for (i, &gi) in g.iter().enumerate().take(n) {
                    let (ia, ib) = (bcast_index(&a2, &o2, i), bcast_index(&b2, &o2, i));
                    let (u, v) = (x[0][ia], x[1][ib]);
                    let (da, db) = match op {
                        "add" => (1.0, 1.0),
                        "sub" => (1.0, -1.0),
                        "mul" => (v, u),
                        _ => (1.0 / v, -u / (v * v)),
                    };
                    ga[ia] += gi * da;
                    gb[ib] += gi * db;
                }
                vec![ga, gb]
            };
            check_grad(
                &format!("{op} {sa:?} {sb:?}"),
                &[inp(sa, -2.0, 2.0), inp(sb, 0.5, 2.0)],
                &|t| match op {
                    "add" => t[0].add(&t[1]),
                    "sub" => t[0].sub(&t[1]),
                    "mul" => t[0].mul(&t[1]),
                    _ => t[0].div(&t[1]),
                },
                &f,
                &b,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn reduction_and_layout_gradients() {
    let (r, c) = (5usize, 33usize);
    check_grad(
        "sum_last",
        &[inp(&[r, c], -1.0, 1.0)],
        &|t| t[0].sum_last(),
        &|x| x[0].chunks(c).map(|row| row.iter().sum()).collect(),
        &|x, g| vec![(0..x[0].len()).map(|i| g[i / c]).collect()],
        1e-5,
        1e-4,
    );
    check_grad(
        "mean_last",
        &[inp(&[r, c], -1.0, 1.0)],
        &|t| t[0].mean_last(),
        &|x| {
            x[0].chunks(c)
                .map(|row| row.iter().sum::<f64>() / c as f64)
                .collect()
        },
        &|x, g| vec![(0..x[0].len()).map(|i| g[i / c] / c as f64).collect()],
        1e-5,
        1e-4,
    );
    check_grad(
        "sum",
        &[inp(&[3, 4, 5], -1.0, 1.0)],
        &|t| t[0].sum(),
        &|x| vec![x[0].iter().sum()],
        &|x, g| vec![vec![g[0]; x[0].len()]],
        1e-5,
        1e-4,
    );
    check_grad(
        "mean",
        &[inp(&[7, 9], -1.0, 1.0)],
        &|t| t[0].mean(),
        &|x| vec![x[0].iter().sum::<f64>() / 63.0],
        &|x, g| vec![vec![g[0] / 63.0; x[0].len()]],
        1e-5,
        1e-4,
    );
    let (m, n) = (3usize, 7usize);
    check_grad(
        "transpose",
        &[inp(&[2, m, n], -1.0, 1.0)],
        &|t| t[0].transpose(),
        &|x| {
            let mut o = vec![0.0; 2 * m * n];
            for b in 0..2 {
                for i in 0..m {
                    for j in 0..n {
                        o[b * m * n + j * m + i] = x[0][b * m * n + i * n + j];
                    }
                }
            }
            o
        },
        &|_, g| {
            let mut o = vec![0.0; 2 * m * n];
            for b in 0..2 {
                for i in 0..m {
                    for j in 0..n {
                        o[b * m * n + i * n + j] = g[b * m * n + j * m + i];
                    }
                }
            }
            vec![o]
        },
        0.0,
        1e-6,
    );
    check_grad(
        "reshape+exp",
        &[inp(&[4, 6], -1.0, 1.0)],
        &|t| t[0].reshape(&[2, 12])?.exp(),
        &|x| x[0].iter().map(|v| v.exp()).collect(),
        &|x, g| vec![x[0].iter().zip(g).map(|(v, g)| g * v.exp()).collect()],
        1e-5,
        1e-4,
    );
    check_grad(
        "broadcast_to",
        &[inp(&[3, 1], -1.0, 1.0)],
        &|t| t[0].broadcast_to(&[2, 3, 4]),
        &|x| (0..24).map(|i| x[0][(i / 4) % 3]).collect(),
        &|_, g| {
            let mut o = vec![0.0; 3];
            for i in 0..24 {
                o[(i / 4) % 3] += g[i];
            }
            vec![o]
        },
        0.0,
        1e-5,
    );
}

fn softmax_rows(x: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            row.iter()
                .map(move |v| (v - m).exp() / s)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_gradients() {
    for c in [1usize, 7, 300] {
        let r = 3;
        check_grad(
            &format!("softmax c={c}"),
            &[inp(&[r, c], -3.0, 3.0)],
            &|t| t[0].softmax(),
            &|x| softmax_rows(&x[0], c),
            &|x, g| {
                let y = softmax_rows(&x[0], c);
                let mut o = vec![0.0; r * c];
                for i in 0..r {
                    let s: f64 = (0..c).map(|j| g[i * c + j] * y[i * c + j]).sum();
                    for j in 0..c {
                        o[i * c + j] = y[i * c + j] * (g[i * c + j] - s);
                    }
                }
                vec![o]
            },
            1e-5,
            1e-4,
        );
        check_grad(
            &format!("log_softmax c={c}"),
            &[inp(&[r, c], -3.0, 3.0)],
            &|t| t[0].log_softmax(),
            &|x| softmax_rows(&x[0], c).iter().map(|p| p.ln()).collect(),
            &|x, g| {
                let y = softmax_rows(&x[0], c);
                let mut o = vec![0.0; r * c];
                for i in 0..r {
                    let s: f64 = (0..c).map(|j| g[i * c + j]).sum();
                    for j in 0..c {
                        o[i * c + j] = g[i * c + j] - y[i * c + j] * s;
                    }
                }
                vec![o]
            },
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn constants_get_no_gradient() {
    check_grad(
        "mul by constant",
        &[inp(&[5], -1.0, 1.0), constant(&[5], -1.0, 1.0)],
        &|t| t[0].mul(&t[1]),
        &|x| x[0].iter().zip(&x[1]).map(|(a, b)| a * b).collect(),
        &|x, g| {
            vec![
                x[1].iter().zip(g).map(|(b, g)| b * g).collect(),
                vec![0.0; 5],
            ]
        },
        1e-6,
        1e-5,
    );
}

#[test]
fn a_tensor_used_twice_accumulates() {
    let dev = shared_device();
    let x = Tensor::from_slice(&dev, &[1.0, -2.0, 3.0], &[3])
        .unwrap()
        .with_grad();
    // y = sum(x * x + 3x) -> dy/dx = 2x + 3
    let y = x
        .mul(&x)
        .unwrap()
        .add(&x.mul_scalar(3.0).unwrap())
        .unwrap()
        .sum()
        .unwrap();
    let g = y.backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), vec![5.0, -1.0, 9.0]);
}

#[test]
fn inference_mode_records_nothing() {
    let dev = shared_device();
    let x = Tensor::ones(&dev, &[4]).unwrap().with_grad();
    let y = portagrad::inference(|| x.exp().unwrap().sum().unwrap());
    assert!(!y.requires_grad());
    assert!(matches!(y.backward(), Err(Error::InvalidArgument { .. })));
    assert!(
        x.exp().unwrap().requires_grad(),
        "recording is back on after the closure"
    );
}

#[test]
fn detach_stops_the_gradient_and_non_scalar_needs_a_seed() {
    let dev = shared_device();
    let x = Tensor::from_slice(&dev, &[1.0, 2.0], &[2])
        .unwrap()
        .with_grad();
    let y = x.mul(&x.detach()).unwrap(); // d/dx = x (not 2x)
    assert!(matches!(y.backward(), Err(Error::Shape { .. })));
    let g = y.backward_with(&Tensor::ones(&dev, &[2]).unwrap()).unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), vec![1.0, 2.0]);
}

#[test]
fn max_reports_missing_gradient_instead_of_a_wrong_one() {
    let dev = shared_device();
    let x = Tensor::from_slice(&dev, &[1.0, 2.0], &[2])
        .unwrap()
        .with_grad();
    let err = x.max().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("max"), "{err}");
}

#[test]
fn backward_is_deterministic_and_stays_on_the_gpu() {
    let dev = portagrad::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let x = Tensor::rand_normal(&dev, &[64, 129], 0.0, 1.0, 3)
        .unwrap()
        .with_grad();
    let b = Tensor::rand_normal(&dev, &[129], 0.0, 1.0, 4)
        .unwrap()
        .with_grad();
    let run = || {
        let y = x
            .add(&b)
            .unwrap()
            .gelu()
            .unwrap()
            .log_softmax()
            .unwrap()
            .mean()
            .unwrap();
        let g = y.backward().unwrap();
        (g.get(&x).unwrap().clone(), g.get(&b).unwrap().clone())
    };
    dev.sync().unwrap();
    dev.reset_stats();
    let (gx, gb) = run();
    let s = dev.stats();
    assert_eq!(
        (s.submits, s.readbacks),
        (0, 0),
        "forward + backward recorded without a submit: {s:?}"
    );
    let (gx2, gb2) = run();
    assert_eq!(gx.to_vec().unwrap(), gx2.to_vec().unwrap());
    assert_eq!(gb.to_vec().unwrap(), gb2.to_vec().unwrap());
    // b is broadcast over the rows of x, so d/db is the column sum of d/dx.
    let col_sums: Vec<f64> = gx
        .transpose()
        .unwrap()
        .sum_last()
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_close(
        "d/db = column sums of d/dx",
        &gb.to_vec().unwrap(),
        &col_sums,
        1e-4,
        1e-7,
    );
}

#[test]
fn bias_gradient_over_more_rows_than_one_loop_may_run() {
    // llvmpipe ends any shader loop after 65,535 iterations; the broadcast-gradient reduction
    // must chunk its work so 70,001 rows still sum correctly.
    let rows = 70_001;
    check_grad(
        "bias over 70001 rows",
        &[constant(&[rows, 3], -1.0, 1.0), inp(&[3], -1.0, 1.0)],
        &|t| t[0].add(&t[1]),
        &|x| (0..rows * 3).map(|i| x[0][i] + x[1][i % 3]).collect(),
        &|_, g| {
            let mut gb = vec![0.0; 3];
            for (i, v) in g.iter().enumerate() {
                gb[i % 3] += v;
            }
            vec![vec![0.0; rows * 3], gb]
        },
        1e-5,
        1e-4,
    );
}

/// C = op(A)·op(B) for 2-D row-major A, B (op = transpose when its flag is set).
fn mm(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    av * bv
                })
                .sum();
        }
    }
    c
}

#[test]
fn matmul_gradients_in_every_form() {
    let (m, k, n) = (3usize, 5usize, 4usize);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let sa = if ta { [k, m] } else { [m, k] };
        let sb = if tb { [n, k] } else { [k, n] };
        check_grad(
            &format!("matmul_t ta={ta} tb={tb}"),
            &[inp(&sa, -1.0, 1.0), inp(&sb, -1.0, 1.0)],
            &|t| t[0].matmul_t(&t[1], ta, tb),
            &|x| mm(&x[0], &x[1], m, k, n, ta, tb),
            &|x, g| {
                // dA' = G·B'ᵀ, dB' = A'ᵀ·G, computed elementwise from the definition.
                let mut ga = vec![0.0; m * k];
                let mut gb = vec![0.0; k * n];
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            let ai = if ta { p * m + i } else { i * k + p };
                            let bi = if tb { j * k + p } else { p * n + j };
                            ga[ai] += g[i * n + j] * x[1][bi];
                            gb[bi] += g[i * n + j] * x[0][ai];
                        }
                    }
                }
                vec![ga, gb]
            },
            1e-5,
            1e-4,
        );
    }
    // Batched, with the 2-D operand broadcast over the batch: its gradient sums over it.
    let bsz = 3;
    check_grad(
        "batched matmul with broadcast rhs",
        &[inp(&[bsz, m, k], -1.0, 1.0), inp(&[k, n], -1.0, 1.0)],
        &|t| t[0].matmul(&t[1]),
        &|x| {
            (0..bsz)
                .flat_map(|b| {
                    mm(
                        &x[0][b * m * k..(b + 1) * m * k],
                        &x[1],
                        m,
                        k,
                        n,
                        false,
                        false,
                    )
                })
                .collect()
        },
        &|x, g| {
            let mut ga = vec![0.0; bsz * m * k];
            let mut gb = vec![0.0; k * n];
            for b in 0..bsz {
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            ga[b * m * k + i * k + p] += g[b * m * n + i * n + j] * x[1][p * n + j];
                            gb[p * n + j] += g[b * m * n + i * n + j] * x[0][b * m * k + i * k + p];
                        }
                    }
                }
            }
            vec![ga, gb]
        },
        1e-5,
        1e-4,
    );
}

#[test]
fn linear_gradients_for_each_layout_and_epilogue() {
    use portagrad::{Activation, WeightLayout};
    let (bsz, t, k, n) = (2usize, 3usize, 5usize, 7usize);
    let m = bsz * t;
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        for (act, name) in [
            (Activation::None, "none"),
            (Activation::Relu, "relu"),
            (Activation::Gelu, "gelu"),
        ] {
            let ws = if layout == WeightLayout::InOut {
                [k, n]
            } else {
                [n, k]
            };
            let tb = layout == WeightLayout::OutIn;
            let f = |z: f64| match act {
                Activation::None => z,
                Activation::Relu => z.max(0.0),
                Activation::Gelu => gelu(z),
            };
            let df = |z: f64| match act {
                Activation::None => 1.0,
                Activation::Relu => {
                    if z > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Activation::Gelu => dgelu(z),
            };
            let pre = move |x: &[Vec<f64>]| -> Vec<f64> {
                let z = mm(&x[0], &x[1], m, k, n, false, tb);
                z.iter().enumerate().map(|(i, v)| v + x[2][i % n]).collect()
            };
            check_grad(
                &format!("linear {layout:?} {name}"),
                &[
                    inp(&[bsz, t, k], -1.0, 1.0),
                    inp(&ws, -1.0, 1.0),
                    inp(&[n], -0.5, 0.5),
                ],
                &|ts| ts[0].linear(&ts[1], Some(&ts[2]), layout, act),
                &|x| pre(x).into_iter().map(f).collect(),
                &|x, g| {
                    let z = pre(x);
                    let dz: Vec<f64> = z.iter().zip(g).map(|(z, g)| g * df(*z)).collect();
                    let mut gx = vec![0.0; m * k];
                    let mut gw = vec![0.0; k * n];
                    let mut gb = vec![0.0; n];
                    for i in 0..m {
                        for j in 0..n {
                            gb[j] += dz[i * n + j];
                            for p in 0..k {
                                let wi = if tb { j * k + p } else { p * n + j };
                                gx[i * k + p] += dz[i * n + j] * x[1][wi];
                                gw[wi] += dz[i * n + j] * x[0][i * k + p];
                            }
                        }
                    }
                    vec![gx, gw, gb]
                },
                1e-5,
                1e-4,
            );
        }
    }
}

// The row-chunk ops of a split embedding and lm_head, on awkward shapes: a masked gather whose
// ids fall below, inside and past the chunk (repeats included), and a concatenation of three
// uneven parts with a constant in the middle.
#[test]
fn row_chunk_op_gradients() {
    let dev = shared_device();
    let (rows, d, off) = (6usize, 5usize, 4usize);
    let id: Vec<u32> = vec![0, 4, 5, 9, 4, 11, 3, 6, 6, 10, 9, 2];
    let gather_fwd = |x: &[Vec<f64>]| -> Vec<f64> {
        id.iter()
            .flat_map(|&i| {
                let r = (i as usize).wrapping_sub(off);
                (0..d).map(move |c| if r < rows { x[0][r * d + c] } else { 0.0 })
            })
            .collect()
    };
    check_grad(
        "gather_rows_masked",
        &[inp(&[rows, d], -1.0, 1.0)],
        &|t| {
            let ids = Tensor::from_u32(&shared_device(), &id, &[3, 4])?;
            t[0].gather_rows_masked(&ids, off)
        },
        &gather_fwd,
        &|_, g| {
            let mut gx = vec![0.0; rows * d];
            for (k, &i) in id.iter().enumerate() {
                let r = (i as usize).wrapping_sub(off);
                if r < rows {
                    for c in 0..d {
                        gx[r * d + c] += g[k * d + c];
                    }
                }
            }
            vec![gx]
        },
        1e-6,
        1e-4,
    );
    // An id past every chunk is no error here (the model checks ids against the vocabulary).
    let t = Tensor::ones(&dev, &[2, 3]).unwrap();
    let far = Tensor::from_u32(&dev, &[u32::MAX, 1], &[2]).unwrap();
    assert_eq!(
        t.gather_rows_masked(&far, 1).unwrap().to_vec().unwrap(),
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    );

    let widths = [4usize, 1, 7];
    let lead = 2 * 3;
    let total: usize = widths.iter().sum();
    let concat_fwd = |x: &[Vec<f64>]| -> Vec<f64> {
        (0..lead)
            .flat_map(|r| {
                widths
                    .iter()
                    .enumerate()
                    .flat_map(move |(p, &w)| (0..w).map(move |j| (p, r * w + j)))
            })
            .map(|(p, i)| x[p][i])
            .collect()
    };
    check_grad(
        "concat_last",
        &[
            inp(&[2, 3, widths[0]], -1.0, 1.0),
            constant(&[2, 3, widths[1]], -1.0, 1.0),
            inp(&[2, 3, widths[2]], -1.0, 1.0),
        ],
        &|t| Tensor::concat_last(t),
        &concat_fwd,
        &|_, g| {
            let mut out: Vec<Vec<f64>> = widths.iter().map(|&w| vec![0.0; lead * w]).collect();
            for r in 0..lead {
                let mut off = 0;
                for (p, &w) in widths.iter().enumerate() {
                    for j in 0..w {
                        out[p][r * w + j] = g[r * total + off + j];
                    }
                    off += w;
                }
            }
            out
        },
        1e-6,
        1e-4,
    );
    let a = Tensor::zeros(&dev, &[2, 3]).unwrap();
    let b = Tensor::zeros(&dev, &[3, 3]).unwrap();
    assert!(matches!(
        Tensor::concat_last(&[a.clone(), b]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Tensor::concat_last(&[]),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(Tensor::concat_last(&[a]).unwrap().shape(), &[2, 3]);
}
