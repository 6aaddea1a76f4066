//! The row-wise kernels in each of their forms (one workgroup, one subgroup or one invocation
//! per row; see `src/ops/rows.rs`), forced one at a time whatever the adapter's rule picks:
//! softmax and log-softmax with their backward, sum / mean / max over the last axis and over
//! all elements, LayerNorm forward and backward, cross-entropy forward and backward (with an
//! ignore index), accuracy with ties. Against f64 CPU references, on row lengths below, at
//! and above the subgroup and workgroup sizes, and row counts that are not multiples of the
//! rows per workgroup.

use portagrad::testing::{
    assert_close, force_row_kernel, random_vec, row_kernel_for, shared_device,
};
use portagrad::{Device, Tensor};

const FORMS: [&str; 3] = ["workgroup", "subgroup", "invocation"];

/// (rows, cols): 1 and 7 columns (fewer than a subgroup), 65 (a vocabulary), 128 (n_embd),
/// 257 (one past a workgroup), 1000, 5000 (several strides of every form).
const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 7),
    (70, 65),
    (129, 128),
    (9, 257),
    (2, 1000),
    (65, 33),
    (3, 5000),
    (1, 3),
];

/// Force `form` on this thread and check it is what runs (subgroups may be missing: then the
/// rule's choice, which must not be the subgroup form).
fn force(dev: &Device, form: &str, cols: usize) -> portagrad::testing::RowKernelGuard {
    let g = force_row_kernel(form).unwrap();
    let ran = row_kernel_for(dev, cols);
    if form == "subgroup" && !dev.has_subgroups() {
        assert_ne!(ran, "subgroup");
    } else {
        assert_eq!(ran, form, "forced {form} for {cols} columns");
    }
    g
}

fn up(dev: &Device, v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, v, shape).unwrap()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn softmax_ref(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for v in row {
            out.push(if log {
                v - m - s.ln()
            } else {
                (v - m).exp() / s
            });
        }
    }
    out
}

#[test]
fn softmax_and_log_softmax_forward_and_backward() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let _g = force(&dev, form, cols);
            // Large offsets: the max subtraction must keep exp finite.
            let x: Vec<f32> = random_vec(rows * cols, -8.0, 8.0, 10 + i as u64)
                .iter()
                .enumerate()
                .map(|(j, v)| v + if (j / cols) % 2 == 0 { 500.0 } else { 0.0 })
                .collect();
            let g = random_vec(rows * cols, -1.0, 1.0, 20 + i as u64);
            let (x64, g64) = (f64s(&x), f64s(&g));
            let xt = up(&dev, &x, &[rows, cols]).with_grad();
            let gt = up(&dev, &g, &[rows, cols]);
            for log in [false, true] {
                let what = format!(
                    "{form} {} ({rows}, {cols})",
                    if log { "log_softmax" } else { "softmax" }
                );
                let y = if log { xt.log_softmax() } else { xt.softmax() }.unwrap();
                let want = softmax_ref(&x64, cols, log);
                // log_softmax is x - lse with both near 500 on half the rows: f32 spacing there
                // is 3e-5.
                let atol = if log { 1e-4 } else { 1e-6 };
                assert_close(&what, &y.to_vec().unwrap(), &want, 1e-5, atol);
                let grads = y.backward_with(&gt).unwrap();
                let dx = grads.get(&xt).unwrap().to_vec().unwrap();
                let mut want_dx = Vec::with_capacity(x.len());
                for (yr, gr) in want.chunks(cols).zip(g64.chunks(cols)) {
                    if log {
                        let s: f64 = gr.iter().sum();
                        want_dx.extend(yr.iter().zip(gr).map(|(y, g)| g - y.exp() * s));
                    } else {
                        let s: f64 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
                        want_dx.extend(yr.iter().zip(gr).map(|(y, g)| y * (g - s)));
                    }
                }
                // The log form reads exp(y), y carrying the forward's 3e-5.
                assert_close(
                    &format!("{what} backward"),
                    &dx,
                    &want_dx,
                    1e-4,
                    10.0 * atol,
                );
            }
        }
    }
}

#[test]
fn sums_means_and_maxima_over_rows_and_all_elements() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let _g = force(&dev, form, cols);
            let mut x = random_vec(rows * cols, -2.0, 2.0, 30 + i as u64);
            // A row of -inf stays -inf under max.
            if rows > 2 {
                x[cols..2 * cols].fill(f32::NEG_INFINITY);
            }
            let finite: Vec<f32> = x
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.5 })
                .collect();
            let xt = up(&dev, &x, &[rows, cols]);
            let ft = up(&dev, &finite, &[rows, cols]);
            let what = format!("{form} ({rows}, {cols})");
            let rows_of = |v: &[f32], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
                f64s(v).chunks(cols).map(f).collect()
            };
            let sum = |r: &[f64]| r.iter().sum::<f64>();
            let max = |r: &[f64]| r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tol = 1e-5 * cols as f64;
            assert_close(
                &format!("{what} sum_last"),
                &ft.sum_last().unwrap().to_vec().unwrap(),
                &rows_of(&finite, &sum),
                1e-5,
                tol,
            );
            assert_close(
                &format!("{what} mean_last"),
                &ft.mean_last().unwrap().to_vec().unwrap(),
                &rows_of(&finite, &|r| sum(r) / cols as f64),
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} max_last"),
                &xt.max_last().unwrap().to_vec().unwrap(),
                &rows_of(&x, &max),
                0.0,
                0.0,
            );
            let all: f64 = f64s(&finite).iter().sum();
            let n = (rows * cols) as f64;
            assert_close(
                &format!("{what} sum"),
                &ft.sum().unwrap().to_vec().unwrap(),
                &[all],
                1e-5,
                1e-5 * n,
            );
            assert_close(
                &format!("{what} mean"),
                &ft.mean().unwrap().to_vec().unwrap(),
                &[all / n],
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} max"),
                &xt.max().unwrap().to_vec().unwrap(),
                &[max(&f64s(&x))],
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn full_reductions_over_many_elements() {
    // Chunked first pass (1024 rows of ~cols) then the partials: both passes in each form.
    let dev = shared_device();
    let n = 300_007;
    let x = random_vec(n, -1.0, 1.0, 41);
    let want_sum: f64 = f64s(&x).iter().sum();
    let want_max = f64s(&x).iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for form in FORMS {
        let _g = force_row_kernel(form).unwrap();
        let xt = up(&dev, &x, &[n]);
        assert_close(
            &format!("{form} sum of {n}"),
            &xt.sum().unwrap().to_vec().unwrap(),
            &[want_sum],
            1e-5,
            1e-2,
        );
        assert_close(
            &format!("{form} max of {n}"),
            &xt.max().unwrap().to_vec().unwrap(),
            &[want_max],
            0.0,
            0.0,
        );
    }
}

#[test]
fn a_forced_form_that_cannot_run_falls_back_to_the_rule() {
    let dev = shared_device();
    let _g = force_row_kernel("invocation").unwrap();
    // Too long for one invocation's loops under llvmpipe's iteration cap.
    assert_ne!(row_kernel_for(&dev, 100_000), "invocation");
    let cols = 40_000;
    let x = random_vec(2 * cols, -3.0, 3.0, 5);
    let y = up(&dev, &x, &[2, cols]).softmax().unwrap();
    assert_close(
        "softmax (2, 40000)",
        &y.to_vec().unwrap(),
        &softmax_ref(&f64s(&x), cols, false),
        1e-5,
        1e-7,
    );
    assert!(force_row_kernel("fastest").is_err());
}

#[test]
fn long_rows_in_every_form_that_takes_them() {
    // A vocabulary-sized row and one past it: every form that accepts the length must loop
    // over all of it (llvmpipe silently ends loops after 65,535 iterations).
    let dev = shared_device();
    for cols in [50_257, 120_001] {
        let x = random_vec(3 * cols, -3.0, 3.0, cols as u64);
        let want = softmax_ref(&f64s(&x), cols, false);
        let want_max: Vec<f64> = f64s(&x)
            .chunks(cols)
            .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
            .collect();
        for form in FORMS {
            let _g = force_row_kernel(form).unwrap();
            let what = format!("{form} (ran {}) (3, {cols})", row_kernel_for(&dev, cols));
            let xt = up(&dev, &x, &[3, cols]);
            assert_close(
                &format!("{what} softmax"),
                &xt.softmax().unwrap().to_vec().unwrap(),
                &want,
                1e-5,
                1e-8,
            );
            assert_close(
                &format!("{what} max_last"),
                &xt.max_last().unwrap().to_vec().unwrap(),
                &want_max,
                0.0,
                0.0,
            );
        }
    }
}

fn layer_norm_ref(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    g: &[f64],
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut y, mut dx) = (Vec::new(), Vec::new());
    let (mut dgamma, mut dbeta) = (vec![0.0; cols], vec![0.0; cols]);
    for (xr, gr) in x.chunks(cols).zip(g.chunks(cols)) {
        let n = cols as f64;
        let mean = xr.iter().sum::<f64>() / n;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        y.extend(xhat.iter().enumerate().map(|(c, h)| h * gamma[c] + beta[c]));
        let h: Vec<f64> = gr.iter().enumerate().map(|(c, g)| g * gamma[c]).collect();
        let mh = h.iter().sum::<f64>() / n;
        let mhx = h.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
        dx.extend(
            h.iter()
                .zip(&xhat)
                .map(|(h, xh)| rstd * (h - mh - xh * mhx)),
        );
        for c in 0..cols {
            dgamma[c] += gr[c] * xhat[c];
            dbeta[c] += gr[c];
        }
    }
    (y, dx, dgamma, dbeta)
}

#[test]
fn layer_norm_forward_and_backward() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            if cols < 2 {
                continue;
            }
            let _g = force(&dev, form, cols);
            // A large mean: the two-pass variance keeps its precision.
            let x: Vec<f32> = random_vec(rows * cols, -1.0, 1.0, 50 + i as u64)
                .iter()
                .map(|v| v * 3.0 + 100.0)
                .collect();
            let gamma = random_vec(cols, 0.5, 1.5, 60 + i as u64);
            let beta = random_vec(cols, -0.5, 0.5, 70 + i as u64);
            let g = random_vec(rows * cols, -1.0, 1.0, 80 + i as u64);
            let xt = up(&dev, &x, &[rows, cols]).with_grad();
            let gt = up(&dev, &gamma, &[cols]).with_grad();
            let bt = up(&dev, &beta, &[cols]).with_grad();
            let y = xt.layer_norm(&gt, &bt, 1e-5).unwrap();
            let (wy, wdx, wdg, wdb) = layer_norm_ref(
                &f64s(&x),
                &f64s(&gamma),
                &f64s(&beta),
                &f64s(&g),
                cols,
                1e-5,
            );
            let what = format!("{form} layer_norm ({rows}, {cols})");
            assert_close(&what, &y.to_vec().unwrap(), &wy, 1e-4, 1e-4);
            let grads = y.backward_with(&up(&dev, &g, &[rows, cols])).unwrap();
            let get = |t: &Tensor| grads.get(t).unwrap().to_vec().unwrap();
            assert_close(&format!("{what} dx"), &get(&xt), &wdx, 1e-3, 1e-3);
            let tol = 1e-4 * rows as f64;
            assert_close(&format!("{what} dgamma"), &get(&gt), &wdg, 1e-3, tol);
            assert_close(&format!("{what} dbeta"), &get(&bt), &wdb, 1e-4, tol);
        }
    }
}

#[test]
fn cross_entropy_forward_backward_and_accuracy() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let _g = force(&dev, form, cols);
            let z: Vec<f32> = random_vec(rows * cols, -6.0, 6.0, 90 + i as u64)
                .iter()
                .enumerate()
                .map(|(j, v)| v + if (j / cols) % 3 == 1 { 200.0 } else { 0.0 })
                .collect();
            let ids: Vec<u32> = (0..rows).map(|r| ((r * 7 + i) % cols) as u32).collect();
            let ignore = (rows > 1).then_some(ids[rows / 2]);
            for ign in [None, ignore] {
                let zt = up(&dev, &z, &[rows, cols]).with_grad();
                let tt = Tensor::from_u32(&dev, &ids, &[rows]).unwrap();
                let loss = zt.cross_entropy(&tt, ign).unwrap();
                let lsm = softmax_ref(&f64s(&z), cols, true);
                let counted: Vec<bool> = ids.iter().map(|&t| Some(t) != ign).collect();
                let count = counted.iter().filter(|&&c| c).count();
                let mut total = 0.0;
                let mut want_dz = vec![0.0; rows * cols];
                for r in 0..rows {
                    if !counted[r] {
                        continue;
                    }
                    total -= lsm[r * cols + ids[r] as usize];
                    for c in 0..cols {
                        let p = lsm[r * cols + c].exp();
                        want_dz[r * cols + c] =
                            (p - f64::from(c == ids[r] as usize)) / count as f64;
                    }
                }
                let want = if count > 0 { total / count as f64 } else { 0.0 };
                let what = format!("{form} cross_entropy ({rows}, {cols}) ignore {ign:?}");
                assert_close(&what, &loss.to_vec().unwrap(), &[want], 1e-5, 1e-5);
                let grads = loss.backward().unwrap();
                assert_close(
                    &format!("{what} dz"),
                    &grads.get(&zt).unwrap().to_vec().unwrap(),
                    &want_dz,
                    1e-4,
                    1e-6,
                );
            }
            // Accuracy with ties: the first maximum counts. Every row's max appears twice; even
            // rows target the first, odd rows the second.
            let mut za = random_vec(rows * cols, -1.0, 1.0, 99 + i as u64);
            let mut targets = Vec::with_capacity(rows);
            let mut want = 0.0;
            for r in 0..rows {
                let (a, b) = ((r * 5) % cols, ((r * 5) % cols + 3) % cols);
                za[r * cols + a] = 2.0;
                za[r * cols + b] = 2.0;
                let t = if r % 2 == 0 { a.min(b) } else { a.max(b) };
                want += f64::from(t == a.min(b));
                targets.push(t as u32);
            }
            let acc = up(&dev, &za, &[rows, cols])
                .accuracy(&Tensor::from_u32(&dev, &targets, &[rows]).unwrap())
                .unwrap();
            assert_close(
                &format!("{form} accuracy ({rows}, {cols})"),
                &acc.to_vec().unwrap(),
                &[want / rows as f64],
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn bias_gradients_take_the_column_sum_path() {
    // sum_to over leading dims (a bias gradient): (rows, n) and (b, t, n) -> (n), over more
    // rows than one chunk, against the broadcast_to backward reference.
    let dev = shared_device();
    for (shape, n) in [
        (vec![2048usize, 384], 384usize),
        (vec![3, 700, 5], 5),
        (vec![70_001, 3], 3),
        (vec![513, 1], 1),
    ] {
        let total: usize = shape.iter().product();
        let g = random_vec(total, -1.0, 1.0, 7);
        let b = Tensor::zeros(&dev, &[n]).unwrap().with_grad();
        let y = b.broadcast_to(&shape).unwrap();
        let grads = y.backward_with(&up(&dev, &g, &shape)).unwrap();
        let mut want = vec![0.0f64; n];
        for (j, v) in g.iter().enumerate() {
            want[j % n] += f64::from(*v);
        }
        assert_close(
            &format!("sum_to {shape:?} -> ({n})"),
            &grads.get(&b).unwrap().to_vec().unwrap(),
            &want,
            1e-5,
            1e-4 * (total / n) as f64,
        );
    }
}

#[test]
fn broadcast_layouts_of_expand() {
    // expand (broadcast_to, and the backward of sum / mean) has an index path per layout: one
    // element, each element repeated (a reduced trailing axis), the whole source repeated, and
    // general strides. Each against a CPU broadcast.
    let dev = shared_device();
    let cases: [(&[usize], &[usize]); 7] = [
        (&[1], &[5, 7]),
        (&[], &[3, 4]),
        (&[6, 1], &[6, 9]),
        (&[2, 3, 1, 1], &[2, 3, 4, 5]),
        (&[3, 4], &[2, 3, 4]),
        (&[1, 4], &[5, 4]),
        (&[3, 1], &[2, 3, 4]),
    ];
    for (src, dst) in cases {
        let nx: usize = src.iter().product();
        let x = random_vec(nx, -1.0, 1.0, 3);
        let got = up(&dev, &x, src)
            .broadcast_to(dst)
            .unwrap()
            .to_vec()
            .unwrap();
        let rank = dst.len();
        let padded: Vec<usize> = std::iter::repeat_n(1, rank - src.len())
            .chain(src.iter().copied())
            .collect();
        let n: usize = dst.iter().product();
        let want: Vec<f64> = (0..n)
            .map(|i| {
                let (mut rem, mut ia, mut stride) = (i, 0, 1);
                for d in (0..rank).rev() {
                    let c = rem % dst[d];
                    rem /= dst[d];
                    if padded[d] != 1 {
                        ia += c * stride;
                    }
                    stride *= padded[d];
                }
                f64::from(x[ia])
            })
            .collect();
        assert_close(
            &format!("broadcast_to {src:?} -> {dst:?}"),
            &got,
            &want,
            0.0,
            0.0,
        );
    }
}

#[test]
fn elementwise_means_in_each_form() {
    // mse, bce-with-logits and binary accuracy reduce chunks of elements like rows: one
    // invocation per chunk on CPU adapters, one workgroup per chunk otherwise.
    let dev = shared_device();
    for n in [1usize, 1000, 300_007] {
        let x = random_vec(n, -4.0, 4.0, n as u64);
        let t: Vec<f32> = random_vec(n, 0.0, 1.0, 2 * n as u64)
            .iter()
            .map(|v| v.round())
            .collect();
        let (x64, t64) = (f64s(&x), f64s(&t));
        let mean = |f: &dyn Fn(f64, f64) -> f64| -> f64 {
            x64.iter().zip(&t64).map(|(&a, &b)| f(a, b)).sum::<f64>() / n as f64
        };
        let mse = mean(&|a, b| (a - b) * (a - b));
        let bce = mean(&|z, y| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p());
        let acc = mean(&|z, y| f64::from((z > 0.0) == (y > 0.5)));
        for form in FORMS {
            let _g = force_row_kernel(form).unwrap();
            let (xt, tt) = (up(&dev, &x, &[n]), up(&dev, &t, &[n]));
            let what = format!("{form} n {n}");
            assert_close(
                &format!("{what} mse"),
                &xt.mse_loss(&tt).unwrap().to_vec().unwrap(),
                &[mse],
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("{what} bce"),
                &xt.bce_with_logits(&tt).unwrap().to_vec().unwrap(),
                &[bce],
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("{what} accuracy"),
                &xt.binary_accuracy(&tt).unwrap().to_vec().unwrap(),
                &[acc],
                1e-6,
                1e-6,
            );
        }
    }
}
