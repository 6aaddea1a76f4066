//! Neural-net ops and losses: LayerNorm, dropout, the embedding gather's backward, MSE,
//! BCE-with-logits, cross-entropy (with ignore index), and the accuracy metrics. Forward vs an
//! f64 CPU reference, GPU backward vs the analytic CPU backward, and the CPU backward vs central
//! finite differences, on awkward shapes; extreme logits; determinism; bad inputs.

mod common;

use common::{check_grad, constant, inp};
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Error, Result, Tensor};

// ---------------------------------------------------------------------------------------------
// A variant of `common::check_grad` on given (not random) input data, for extreme values.

struct Fixed {
    data: Vec<f32>,
    shape: Vec<usize>,
    grad: bool,
}

fn fixed(data: Vec<f32>, shape: &[usize], grad: bool) -> Fixed {
    assert_eq!(data.len(), shape.iter().product::<usize>());
    Fixed {
        data,
        shape: shape.to_vec(),
        grad,
    }
}

/// Same checks as `check_grad`: forward vs CPU, GPU gradients vs CPU gradients, CPU gradients
/// vs central differences (f64) of the CPU forward; also requires every value to be finite.
#[allow(clippy::type_complexity)]
fn check_fixed(
    name: &str,
    inputs: &[Fixed],
    gpu: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    fwd: &dyn Fn(&[Vec<f64>]) -> Vec<f64>,
    bwd: &dyn Fn(&[Vec<f64>], &[f64]) -> Vec<Vec<f64>>,
    fwd_tol: f64,
    grad_tol: f64,
) {
    let dev = shared_device();
    let data64: Vec<Vec<f64>> = inputs
        .iter()
        .map(|s| s.data.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let ts: Vec<Tensor> = inputs
        .iter()
        .map(|s| {
            let t = Tensor::from_slice(&dev, &s.data, &s.shape).unwrap();
            if s.grad { t.with_grad() } else { t }
        })
        .collect();
    let out = gpu(&ts).unwrap_or_else(|e| panic!("{name} forward: {e}"));
    let got = out.to_vec().unwrap();
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{name}: non-finite forward {got:?}"
    );
    assert_close(
        &format!("{name} forward"),
        &got,
        &fwd(&data64),
        fwd_tol,
        1e-5,
    );
    let w = random_vec(out.numel(), -1.0, 1.0, 77);
    let w64: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    let wt = Tensor::from_slice(&dev, &w, out.shape()).unwrap();
    let grads = out.mul(&wt).unwrap().sum().unwrap().backward().unwrap();
    let cpu = bwd(&data64, &w64);
    for (i, s) in inputs.iter().enumerate() {
        if !s.grad {
            assert!(
                grads.get(&ts[i]).is_none(),
                "{name}: constant {i} got a gradient"
            );
            continue;
        }
        let g = grads.get(&ts[i]).unwrap().to_vec().unwrap();
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient {g:?}"
        );
        assert_close(
            &format!("{name} d/dinput{i} GPU vs CPU"),
            &g,
            &cpu[i],
            grad_tol,
            grad_tol / 10.0,
        );
        let h = 1e-5;
        let loss_at = |x: &[Vec<f64>]| -> f64 { fwd(x).iter().zip(&w64).map(|(a, b)| a * b).sum() };
        let (mut fd, mut an) = (Vec::new(), Vec::new());
        for j in 0..data64[i].len() {
            let mut xp = data64.clone();
            xp[i][j] += h;
            let mut xm = data64.clone();
            xm[i][j] -= h;
            fd.push(((loss_at(&xp) - loss_at(&xm)) / (2.0 * h)) as f32);
            an.push(cpu[i][j]);
        }
        assert_close(
            &format!("{name} d/dinput{i} CPU vs finite differences"),
            &fd,
            &an,
            1e-5,
            1e-7,
        );
    }
}

/// Deterministic ids in [0, n).
fn ids(count: usize, n: usize, seed: u64) -> Vec<u32> {
    random_vec(count, 0.0, n as f32, seed)
        .iter()
        .map(|&v| (v as u32).min(n as u32 - 1))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

const EPS: f64 = 1e-5;

fn ln_fwd(x: &[f64], gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let c = gamma.len();
    x.chunks(c)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + EPS).sqrt();
            row.iter()
                .enumerate()
                .map(move |(j, v)| (v - mean) * rstd * gamma[j] + beta[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ln_bwd(x: &[f64], gamma: &[f64], g: &[f64]) -> Vec<Vec<f64>> {
    let c = gamma.len();
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    for (r, row) in x.chunks(c).enumerate() {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + EPS).sqrt();
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
    vec![dx, dgamma, dbeta]
}

#[test]
fn layer_norm_gradients() {
    // (shape of x): C = 1, 7, 333; 3 and 5 rows; a rank-3 input; 130 rows (several chunks of
    // the deterministic gamma/beta column sums).
    let shapes: &[&[usize]] = &[&[3, 1], &[5, 7], &[3, 333], &[2, 3, 7], &[130, 7], &[7]];
    for &shape in shapes {
        let c = *shape.last().unwrap();
        check_grad(
            &format!("layer_norm {shape:?}"),
            &[
                inp(shape, -2.0, 2.0),
                inp(&[c], 0.5, 1.5),
                inp(&[c], -0.5, 0.5),
            ],
            &|t| t[0].layer_norm(&t[1], &t[2], EPS as f32),
            &|x| ln_fwd(&x[0], &x[1], &x[2]),
            &|x, g| ln_bwd(&x[0], &x[1], g),
            1e-4,
            1e-4,
        );
    }
    // Constant gamma/beta: only x gets a gradient. And a shifted input (mean 100).
    check_grad(
        "layer_norm constant params",
        &[
            inp(&[5, 33], 99.0, 101.0),
            constant(&[33], 0.5, 1.5),
            constant(&[33], -0.5, 0.5),
        ],
        &|t| t[0].layer_norm(&t[1], &t[2], EPS as f32),
        &|x| ln_fwd(&x[0], &x[1], &x[2]),
        &|x, g| {
            let mut v = ln_bwd(&x[0], &x[1], g);
            v[1] = vec![0.0; 33];
            v[2] = vec![0.0; 33];
            v
        },
        1e-3,
        1e-3,
    );
}

#[test]
fn layer_norm_backward_is_deterministic() {
    let dev = shared_device();
    let x = Tensor::rand_normal(&dev, &[300, 65], 0.0, 1.0, 5)
        .unwrap()
        .with_grad();
    let gamma = Tensor::rand_uniform(&dev, &[65], 0.5, 1.5, 6)
        .unwrap()
        .with_grad();
    let beta = Tensor::zeros(&dev, &[65]).unwrap().with_grad();
    let w = Tensor::rand_normal(&dev, &[300, 65], 0.0, 1.0, 7).unwrap();
    let run = || {
        let g = x
            .layer_norm(&gamma, &beta, 1e-5)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        [&x, &gamma, &beta].map(|p| bits(&g.get(p).unwrap().to_vec().unwrap()))
    };
    assert_eq!(run(), run());
}

// ---------------------------------------------------------------------------------------------
// Dropout

#[test]
fn dropout_mask_scale_and_gradient() {
    let dev = shared_device();
    let (p, shape) = (0.3f32, [5usize, 333]);
    let n = 5 * 333;
    let data = random_vec(n, 1.0, 2.0, 11); // never zero, so a zero output means dropped
    let x = Tensor::from_slice(&dev, &data, &shape).unwrap().with_grad();
    let y = x.dropout(p, 42).unwrap();
    let yv = y.to_vec().unwrap();
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<bool> = yv.iter().map(|&v| v != 0.0).collect();
    for i in 0..n {
        if mask[i] {
            assert_eq!(
                yv[i],
                data[i] * scale,
                "kept element {i} is scaled by 1/(1-p)"
            );
        }
    }
    // Gradient = mask / (1 - p) * g.
    let w = random_vec(n, -1.0, 1.0, 12);
    let wt = Tensor::from_slice(&dev, &w, &shape).unwrap();
    let g = y.mul(&wt).unwrap().sum().unwrap().backward().unwrap();
    let gx = g.get(&x).unwrap().to_vec().unwrap();
    for i in 0..n {
        let want = if mask[i] { w[i] * scale } else { 0.0 };
        assert_eq!(gx[i], want, "gradient at {i}");
    }
    // Same seed, same mask (bitwise the same output); another seed, another mask.
    assert_eq!(
        bits(&x.dropout(p, 42).unwrap().to_vec().unwrap()),
        bits(&yv)
    );
    let other: Vec<bool> = x
        .dropout(p, 43)
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .map(|&v| v != 0.0)
        .collect();
    let differ = mask.iter().zip(&other).filter(|(a, b)| a != b).count();
    assert!(
        differ > n / 5,
        "seeds 42 and 43 give nearly the same mask ({differ} of {n} differ)"
    );
}

#[test]
fn dropout_keep_rate() {
    let dev = shared_device();
    let n = 200_003;
    let x = Tensor::ones(&dev, &[n]).unwrap();
    for (p, seed) in [(0.1f32, 1u64), (0.5, 2), (0.9, 3), (0.5, u64::MAX)] {
        let y = x.dropout(p, seed).unwrap().to_vec().unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // Binomial standard deviation is at most 0.0012 here: allow about 5 of them.
        assert!(
            (kept - (1.0 - f64::from(p))).abs() < 0.006,
            "p = {p}: kept fraction {kept}"
        );
        // The mean is preserved in expectation.
        let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.06, "p = {p}: mean {mean}");
        // Block structure: the keep rate in each quarter is close too (no index bias).
        for q in y.chunks_exact(n / 4) {
            let k = q.iter().filter(|&&v| v != 0.0).count() as f64 / q.len() as f64;
            assert!(
                (k - (1.0 - f64::from(p))).abs() < 0.012,
                "p = {p}: block {k}"
            );
        }
    }
}

#[test]
fn dropout_identity_in_inference_and_at_p0_and_bad_p_errors() {
    let dev = shared_device();
    let data = random_vec(77, -1.0, 1.0, 13);
    let x = Tensor::from_slice(&dev, &data, &[7, 11])
        .unwrap()
        .with_grad();
    let y = portagrad::inference(|| x.dropout(0.5, 1).unwrap());
    assert_eq!(y.to_vec().unwrap(), data);
    let y0 = x.dropout(0.0, 1).unwrap();
    assert_eq!(y0.to_vec().unwrap(), data);
    let g = y0.sum().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), vec![1.0; 77]);
    for p in [1.0f32, 1.5, -0.1, f32::NAN] {
        let e = x.dropout(p, 1).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { op: "dropout", .. }),
            "p = {p}: {e}"
        );
    }
    let ids = Tensor::from_u32(&dev, &[1, 2], &[2]).unwrap();
    assert!(matches!(
        ids.dropout(0.5, 1),
        Err(Error::DType { op: "dropout", .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Embedding (gather_rows) backward

#[test]
fn gather_rows_gradients_with_repeated_ids() {
    for (v, d, idshape) in [
        (11usize, 7usize, vec![3usize, 5]),
        (4, 333, vec![9]),
        (1, 1, vec![5]),
        (50, 3, vec![2, 2, 3]),
    ] {
        let n: usize = idshape.iter().product();
        let id = ids(n, v.min(6), v as u64 + 5); // few distinct ids: repeats; rows >= 6 unused
        let (idf, idb, ids_shape) = (id.clone(), id.clone(), idshape.clone());
        check_grad(
            &format!("gather_rows ({v}, {d}) by {idshape:?}"),
            &[inp(&[v, d], -1.0, 1.0)],
            &|t| {
                let ids = Tensor::from_u32(t[0].device(), &id, &ids_shape)?;
                t[0].gather_rows(&ids)
            },
            &|x| {
                idf.iter()
                    .flat_map(|&i| x[0][i as usize * d..(i as usize + 1) * d].to_vec())
                    .collect()
            },
            &|_, g| {
                let mut gt = vec![0.0; v * d];
                for (k, &i) in idb.iter().enumerate() {
                    for c in 0..d {
                        gt[i as usize * d + c] += g[k * d + c];
                    }
                }
                vec![gt]
            },
            0.0,
            1e-5,
        );
    }
}

#[test]
fn gather_rows_backward_is_deterministic() {
    let dev = shared_device();
    let (v, d, n) = (13usize, 33usize, 70_000usize);
    let table = Tensor::rand_normal(&dev, &[v, d], 0.0, 1.0, 21)
        .unwrap()
        .with_grad();
    // 70,000 positions over 3 ids, id 0 at more than 65,535 of them (lavapipe silently ends
    // a loop after 65,535 iterations, so long sums must be split).
    let id: Vec<u32> = ids(n, 3, 22)
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % 16 == 0 { x } else { 0 })
        .collect();
    assert!(id.iter().filter(|&&x| x == 0).count() > 65_535);
    let idt = Tensor::from_u32(&dev, &id, &[n]).unwrap();
    let w = Tensor::rand_normal(&dev, &[n, d], 0.0, 1.0, 23).unwrap();
    let run = || {
        let g = table
            .gather_rows(&idt)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        g.get(&table).unwrap().to_vec().unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(bits(&a), bits(&b), "same input, same bits");
    // Rows never referenced are exactly zero; the others match an f64 sum.
    let wv = w.to_vec().unwrap();
    let mut want = vec![0.0f64; v * d];
    for (k, &i) in id.iter().enumerate() {
        for c in 0..d {
            want[i as usize * d + c] += f64::from(wv[k * d + c]);
        }
    }
    assert!(a[3 * d..].iter().all(|&x| x == 0.0));
    assert_close("gather_rows backward sums", &a, &want, 1e-4, 1e-4);
}

// ---------------------------------------------------------------------------------------------
// MSE and BCE

fn mse_case(shape: &[usize]) {
    let n: usize = shape.iter().product();
    check_grad(
        &format!("mse_loss {shape:?}"),
        &[inp(shape, -2.0, 2.0), constant(shape, -2.0, 2.0)],
        &|t| t[0].mse_loss(&t[1]),
        &|x| {
            vec![
                x[0].iter()
                    .zip(&x[1])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    / n as f64,
            ]
        },
        &|x, g| {
            vec![
                x[0].iter()
                    .zip(&x[1])
                    .map(|(a, b)| g[0] * 2.0 * (a - b) / n as f64)
                    .collect(),
                vec![0.0; n],
            ]
        },
        1e-5,
        1e-4,
    );
}

#[test]
fn mse_gradients() {
    // 1665 and 85,547 elements take the two-pass (partials, then final sum) path.
    for shape in [
        &[1usize][..],
        &[7],
        &[3, 333],
        &[5, 333],
        &[5, 7, 3],
        &[77, 1111],
    ] {
        mse_case(shape);
    }
}

fn bce_term(z: f64, t: f64) -> f64 {
    z.max(0.0) - z * t + (-z.abs()).exp().ln_1p()
}

fn bce_ref(x: &[Vec<f64>]) -> Vec<f64> {
    let n = x[0].len() as f64;
    vec![
        x[0].iter()
            .zip(&x[1])
            .map(|(&z, &t)| bce_term(z, t))
            .sum::<f64>()
            / n,
    ]
}

fn bce_grad(x: &[Vec<f64>], g: &[f64]) -> Vec<Vec<f64>> {
    let n = x[0].len();
    vec![
        x[0].iter()
            .zip(&x[1])
            .map(|(&z, &t)| g[0] * (1.0 / (1.0 + (-z).exp()) - t) / n as f64)
            .collect(),
        vec![0.0; n],
    ]
}

#[test]
fn bce_with_logits_gradients() {
    for shape in [&[1usize][..], &[7], &[3, 333], &[5, 333], &[2, 5, 3]] {
        check_grad(
            &format!("bce_with_logits {shape:?}"),
            &[inp(shape, -6.0, 6.0), constant(shape, 0.0, 1.0)],
            &|t| t[0].bce_with_logits(&t[1]),
            &bce_ref,
            &bce_grad,
            1e-5,
            1e-4,
        );
        // Logits spread over [-80, 80].
        check_grad(
            &format!("bce_with_logits wide {shape:?}"),
            &[inp(shape, -80.0, 80.0), constant(shape, 0.0, 1.0)],
            &|t| t[0].bce_with_logits(&t[1]),
            &bce_ref,
            &bce_grad,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn bce_with_extreme_logits_is_finite_and_exact() {
    // Confident right, confident wrong, soft targets, tiny logits.
    let z = vec![
        80.0, -80.0, 80.0, -80.0, 80.0, -80.0, 1e-4, -1e-4, 0.0, 17.0, -17.0,
    ];
    let t = vec![1.0, 0.0, 0.0, 1.0, 0.999, 0.001, 1.0, 0.0, 0.5, 1.0, 0.0];
    let n = z.len();
    check_fixed(
        "bce ±80",
        &[fixed(z, &[n], true), fixed(t, &[n], false)],
        &|t| t[0].bce_with_logits(&t[1]),
        &bce_ref,
        &bce_grad,
        1e-6,
        1e-5,
    );
    // Confident and right: the loss is about exp(-80), tiny but not a rounded-up 0 or NaN.
    let dev = shared_device();
    let z = Tensor::from_slice(&dev, &[80.0, -80.0], &[2]).unwrap();
    let t = Tensor::from_slice(&dev, &[1.0, 0.0], &[2]).unwrap();
    let l = f64::from(z.bce_with_logits(&t).unwrap().item().unwrap());
    let want = (-80.0f64).exp().ln_1p();
    assert!((l - want).abs() <= want * 1e-5, "loss {l}, want {want}");
    // Small losses keep their relative precision (log1p of exp(-|z|) over the whole range).
    for zv in [
        0.5f32, 1.0, 2.0, 2.7, 2.8, 3.0, 4.0, 6.0, 10.0, 16.0, 30.0, 80.0,
    ] {
        for (z, t) in [(zv, 1.0f32), (-zv, 0.0)] {
            let zt = Tensor::from_slice(&dev, &[z], &[1]).unwrap();
            let tt = Tensor::from_slice(&dev, &[t], &[1]).unwrap();
            let l = f64::from(zt.bce_with_logits(&tt).unwrap().item().unwrap());
            let want = bce_term(f64::from(z), f64::from(t));
            assert!(
                (l - want).abs() <= want * 2e-6,
                "z = {z}, t = {t}: loss {l}, want {want}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// f64 cross-entropy: (loss, dloss/dz) over rows of C with an optional ignore index.
fn ce_ref(z: &[f64], c: usize, t: &[u32], ignore: Option<u32>) -> (f64, Vec<f64>) {
    let counted: Vec<bool> = t.iter().map(|&id| Some(id) != ignore).collect();
    let count = counted.iter().filter(|&&b| b).count() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; z.len()];
    for (r, row) in z.chunks(c).enumerate() {
        if !counted[r] {
            continue;
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let lse = m + s.ln();
        loss += lse - row[t[r] as usize];
        for j in 0..c {
            let onehot = if j == t[r] as usize { 1.0 } else { 0.0 };
            grad[r * c + j] = ((row[j] - lse).exp() - onehot) / count;
        }
    }
    if count == 0.0 {
        (0.0, grad)
    } else {
        (loss / count, grad)
    }
}

fn ce_case(name: &str, shape: &[usize], lo: f32, hi: f32, t: Vec<u32>, ignore: Option<u32>) {
    let c = *shape.last().unwrap();
    let tshape = shape[..shape.len() - 1].to_vec();
    let (tf, tb) = (t.clone(), t.clone());
    check_grad(
        name,
        &[inp(shape, lo, hi)],
        &|x| {
            let ids = Tensor::from_u32(x[0].device(), &t, &tshape)?;
            x[0].cross_entropy(&ids, ignore)
        },
        &|x| vec![ce_ref(&x[0], c, &tf, ignore).0],
        &|x, g| {
            vec![
                ce_ref(&x[0], c, &tb, ignore)
                    .1
                    .iter()
                    .map(|d| d * g[0])
                    .collect(),
            ]
        },
        1e-5,
        1e-4,
    );
}

#[test]
fn cross_entropy_gradients() {
    for shape in [
        &[3usize, 1][..],
        &[5, 7],
        &[3, 333],
        &[2, 3, 7],
        &[7],
        &[300, 5],
    ] {
        let c = *shape.last().unwrap();
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let t = ids(rows, c, rows as u64 * 31 + c as u64);
        ce_case(
            &format!("cross_entropy {shape:?}"),
            shape,
            -3.0,
            3.0,
            t.clone(),
            None,
        );
        ce_case(
            &format!("cross_entropy wide {shape:?}"),
            shape,
            -80.0,
            80.0,
            t,
            None,
        );
    }
}

#[test]
fn cross_entropy_with_extreme_logits_is_finite_and_exact() {
    // Rows: confident right, confident wrong, all equal at +80, mixed ±80 with a near tie.
    let c = 4;
    let z = vec![
        80.0, -80.0, -80.0, -80.0, //
        80.0, -80.0, -80.0, -80.0, //
        80.0, 80.0, 80.0, 80.0, //
        -80.0, 80.0, 79.99, -80.0, //
    ];
    let t = vec![0u32, 1, 2, 2];
    let (tf, tb, tg) = (t.clone(), t.clone(), t.clone());
    check_fixed(
        "cross_entropy ±80",
        &[fixed(z, &[4, c], true)],
        &|x| {
            let ids = Tensor::from_u32(x[0].device(), &tg, &[4])?;
            x[0].cross_entropy(&ids, None)
        },
        &|x| vec![ce_ref(&x[0], c, &tf, None).0],
        &|x, g| {
            vec![
                ce_ref(&x[0], c, &tb, None)
                    .1
                    .iter()
                    .map(|d| d * g[0])
                    .collect(),
            ]
        },
        1e-5,
        1e-4,
    );
    // A confidently right row alone: loss ~ 3 exp(-160) (0 in f32 is within tolerance), never
    // NaN; a confident wrong row: exactly 160.
    let dev = shared_device();
    let z = Tensor::from_slice(&dev, &[80.0, -80.0, -80.0, -80.0], &[1, 4]).unwrap();
    for (id, want) in [(0u32, 0.0f32), (1, 160.0)] {
        let t = Tensor::from_u32(&dev, &[id], &[1]).unwrap();
        let l = z.cross_entropy(&t, None).unwrap().item().unwrap();
        assert!((l - want).abs() <= 1e-5 * want.max(1.0), "target {id}: {l}");
    }
}

#[test]
fn cross_entropy_ignore_index() {
    let (rows, c) = (5usize, 7usize);
    let ignore = 9u32; // outside the classes, like PyTorch's -100 padding id
    let mut t = ids(rows, c, 3);
    t[1] = ignore;
    t[3] = ignore;
    ce_case(
        "cross_entropy ignore",
        &[rows, c],
        -3.0,
        3.0,
        t.clone(),
        Some(ignore),
    );
    // The ignore index may also be a real class.
    let mut t2 = t.clone();
    t2[1] = 2;
    t2[3] = 2;
    t2[0] = 4;
    ce_case(
        "cross_entropy ignore class 2",
        &[rows, c],
        -3.0,
        3.0,
        t2,
        Some(2),
    );

    // Ignored rows get exactly zero gradient; the mean is over the 3 counted rows.
    let dev = shared_device();
    let zv = random_vec(rows * c, -3.0, 3.0, 4);
    let z = Tensor::from_slice(&dev, &zv, &[rows, c])
        .unwrap()
        .with_grad();
    let ti = Tensor::from_u32(&dev, &t, &[rows]).unwrap();
    let loss = z.cross_entropy(&ti, Some(ignore)).unwrap();
    let z64: Vec<f64> = zv.iter().map(|&v| f64::from(v)).collect();
    let (want, _) = ce_ref(&z64, c, &t, Some(ignore));
    assert_close("ignore loss", &[loss.item().unwrap()], &[want], 1e-5, 1e-6);
    let g = loss.backward().unwrap().get(&z).unwrap().to_vec().unwrap();
    for r in [1usize, 3] {
        assert!(
            g[r * c..(r + 1) * c].iter().all(|&v| v == 0.0),
            "row {r}: {g:?}"
        );
    }
    // Counted rows: the gradient sums to zero over classes and has 1/3 scale.
    let row0: f64 = g[..c].iter().map(|&v| f64::from(v)).sum();
    assert!(row0.abs() < 1e-6);
}

#[test]
fn cross_entropy_all_ignored_is_zero_loss_and_zero_gradient() {
    let dev = shared_device();
    let z = Tensor::rand_normal(&dev, &[3, 5], 0.0, 1.0, 9)
        .unwrap()
        .with_grad();
    let t = Tensor::from_u32(&dev, &[7, 7, 7], &[3]).unwrap();
    let loss = z.cross_entropy(&t, Some(7)).unwrap();
    assert_eq!(loss.item().unwrap(), 0.0);
    let g = loss.backward().unwrap();
    assert_eq!(g.get(&z).unwrap().to_vec().unwrap(), vec![0.0; 15]);
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

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn accuracy_metrics_match_the_cpu() {
    let dev = shared_device();
    for (rows, c) in [(5usize, 1usize), (3, 7), (37, 333), (1, 5)] {
        let zv = random_vec(rows * c, -1.0, 1.0, rows as u64 + c as u64);
        // Make some rows right: put the maximum on the target.
        let t = ids(rows, c, 8);
        let mut zv2 = zv.clone();
        for r in (0..rows).step_by(2) {
            zv2[r * c + t[r] as usize] = 2.0;
        }
        let z = Tensor::from_slice(&dev, &zv2, &[rows, c]).unwrap();
        let tt = Tensor::from_u32(&dev, &t, &[rows]).unwrap();
        let right = (0..rows)
            .filter(|&r| {
                let row = &zv2[r * c..(r + 1) * c];
                let mut best = 0;
                for j in 1..c {
                    if row[j] > row[best] {
                        best = j;
                    }
                }
                best == t[r] as usize
            })
            .count();
        let got = z.accuracy(&tt).unwrap();
        assert!(got.shape().is_empty());
        assert_close(
            &format!("accuracy ({rows}, {c})"),
            &[got.item().unwrap()],
            &[right as f64 / rows as f64],
            1e-6,
            0.0,
        );
    }
    // Ties go to the first index.
    let z = Tensor::from_slice(&dev, &[1.0, 3.0, 3.0, 0.0, 0.0, 0.0], &[2, 3]).unwrap();
    let t = Tensor::from_u32(&dev, &[1, 0], &[2]).unwrap();
    assert_eq!(z.accuracy(&t).unwrap().item().unwrap(), 1.0);

    for n in [1usize, 7, 999, 5000] {
        let zv = random_vec(n, -2.0, 2.0, n as u64);
        let tv: Vec<f32> = random_vec(n, 0.0, 1.0, n as u64 + 1)
            .iter()
            .map(|&v| if v > 0.4 { 1.0 } else { 0.0 })
            .collect();
        let right = zv
            .iter()
            .zip(&tv)
            .filter(|&(&z, &t)| (z > 0.0) == (t > 0.5))
            .count();
        let z = Tensor::from_slice(&dev, &zv, &[n]).unwrap();
        let t = Tensor::from_slice(&dev, &tv, &[n]).unwrap();
        let got = z.binary_accuracy(&t).unwrap();
        assert!(got.shape().is_empty());
        assert_close(
            &format!("binary_accuracy {n}"),
            &[got.item().unwrap()],
            &[right as f64 / n as f64],
            1e-6,
            0.0,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bad inputs

fn err_text(r: Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.shape()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_errors_naming_op_and_shapes() {
    let dev = shared_device();
    let x = Tensor::zeros(&dev, &[3, 4]).unwrap();
    let x5 = Tensor::zeros(&dev, &[3, 5]).unwrap();
    let ids3 = Tensor::from_u32(&dev, &[0, 1, 2], &[3]).unwrap();
    let ids4 = Tensor::from_u32(&dev, &[0, 1, 2, 3], &[4]).unwrap();
    let ids_bad = Tensor::from_u32(&dev, &[0, 4, 1], &[3]).unwrap();

    let e = err_text(x.mse_loss(&x5));
    assert!(
        e.contains("mse_loss") && e.contains("[3, 4]") && e.contains("[3, 5]"),
        "{e}"
    );
    let e = err_text(x.bce_with_logits(&x5));
    assert!(e.contains("bce_with_logits") && e.contains("[3, 5]"), "{e}");
    assert!(matches!(
        x.mse_loss(&ids3),
        Err(Error::DType { op: "mse_loss", .. })
    ));
    assert!(matches!(
        ids3.bce_with_logits(&x),
        Err(Error::DType {
            op: "bce_with_logits",
            ..
        })
    ));

    // Cross-entropy: f32 targets, wrong target shape, out-of-range id, u32 logits.
    assert!(matches!(
        x.cross_entropy(&x, None),
        Err(Error::DType {
            op: "cross_entropy",
            expected: "u32",
            got: "f32"
        })
    ));
    let e = err_text(x.cross_entropy(&ids4, None));
    assert!(
        e.contains("cross_entropy") && e.contains("[3, 4]") && e.contains("[4]"),
        "{e}"
    );
    let e = err_text(x.cross_entropy(&ids_bad, None));
    assert!(e.contains("cross_entropy") && e.contains("target 4"), "{e}");
    // ... unless that id is the ignore index.
    assert!(x.cross_entropy(&ids_bad, Some(4)).is_ok());
    assert!(matches!(
        ids3.cross_entropy(&ids3, None),
        Err(Error::DType {
            op: "cross_entropy",
            ..
        })
    ));
    let scalar = Tensor::zeros(&dev, &[]).unwrap();
    let e = err_text(scalar.cross_entropy(&ids3, None));
    assert!(e.contains("cross_entropy"), "{e}");

    // Accuracy metrics.
    let e = err_text(x.accuracy(&ids4));
    assert!(e.contains("accuracy") && e.contains("[4]"), "{e}");
    assert!(matches!(
        x.accuracy(&x),
        Err(Error::DType { op: "accuracy", .. })
    ));
    let e = err_text(x.binary_accuracy(&x5));
    assert!(e.contains("binary_accuracy"), "{e}");

    // LayerNorm: wrong gamma/beta shapes, u32 input, bad eps.
    let g4 = Tensor::ones(&dev, &[4]).unwrap();
    let g5 = Tensor::ones(&dev, &[5]).unwrap();
    let e = err_text(x.layer_norm(&g5, &g4, 1e-5));
    assert!(
        e.contains("layer_norm") && e.contains("[5]") && e.contains("[3, 4]"),
        "{e}"
    );
    let e = err_text(x.layer_norm(&g4, &g5, 1e-5));
    assert!(e.contains("layer_norm"), "{e}");
    assert!(matches!(
        ids4.layer_norm(&g4, &g4, 1e-5),
        Err(Error::DType {
            op: "layer_norm",
            ..
        })
    ));
    assert!(matches!(
        x.layer_norm(&g4, &g4, f32::NAN),
        Err(Error::InvalidArgument {
            op: "layer_norm",
            ..
        })
    ));

    // Empty inputs have no mean.
    let empty = Tensor::zeros(&dev, &[0, 4]).unwrap();
    assert!(empty.mse_loss(&empty).is_err());
}
