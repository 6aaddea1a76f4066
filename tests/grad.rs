//! The tape's semantics across ops (constants, reuse, inference mode, detach, recording a
//! whole forward and backward without a submit, determinism), and the matmul / linear
//! gradients (GPU backward vs analytic CPU backward in f64, and that vs finite differences).
//! Each op family's own forward, gradient and error tests are in `tests/ops_<family>.rs`.

mod common;

use common::{check_grad, constant, ids, inp};
use portagrad::testing::reference::unary;
use portagrad::testing::{assert_close, shared_device};
use portagrad::{Error, Tensor};

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
                Activation::Gelu => unary::gelu(z),
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
                Activation::Gelu => unary::dgelu(z),
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

#[test]
fn losses_record_forward_and_backward_without_a_submit() {
    let dev = portagrad::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let z = Tensor::rand_normal(&dev, &[64, 10], 0.0, 1.0, 3)
        .unwrap()
        .with_grad();
    let t = Tensor::from_u32(&dev, &ids(64, 10, 5), &[64]).unwrap();
    let y = Tensor::rand_uniform(&dev, &[64, 10], 0.0, 1.0, 4).unwrap();
    let gamma = Tensor::ones(&dev, &[10]).unwrap().with_grad();
    let beta = Tensor::zeros(&dev, &[10]).unwrap().with_grad();
    let table = Tensor::rand_normal(&dev, &[10, 10], 0.0, 1.0, 6)
        .unwrap()
        .with_grad();
    dev.sync().unwrap();
    dev.reset_stats();
    let h = z
        .add(&table.gather_rows(&t).unwrap())
        .unwrap()
        .layer_norm(&gamma, &beta, 1e-5)
        .unwrap()
        .dropout(0.1, 7)
        .unwrap();
    let loss = h
        .cross_entropy(&t, Some(3))
        .unwrap()
        .add(&h.mse_loss(&y).unwrap())
        .unwrap()
        .add(&h.bce_with_logits(&y).unwrap())
        .unwrap();
    let g = loss.backward().unwrap();
    let acc = h.accuracy(&t).unwrap();
    let bacc = h.binary_accuracy(&y).unwrap();
    let s = dev.stats();
    assert_eq!(
        (s.submits, s.readbacks),
        (0, 0),
        "forward + backward + metrics recorded without a submit: {s:?}"
    );
    assert_eq!(g.len(), 4);
    assert!(loss.item().unwrap().is_finite());
    assert!((0.0..=1.0).contains(&acc.item().unwrap()));
    assert!((0.0..=1.0).contains(&bacc.item().unwrap()));
}
