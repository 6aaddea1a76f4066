//! The norm family: LayerNorm (forward vs `testing::reference::norm`, GPU backward vs the
//! analytic backward and finite differences, in each row-kernel form, deterministic, bad
//! inputs) and dropout (mask, scale, gradient, keep rate, identity cases, bad p).

mod common;

use common::{FORMS, ROW_SHAPES, bits, check_grad, constant, f64s, force, inp, up};
use portagrad::testing::reference::norm as r;
use portagrad::testing::{GradCheck, assert_close, random_vec, shared_device};
use portagrad::{Error, Result, Tensor};

const EPS: f64 = 1e-5;

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
            &|x| r::layer_norm(&x[0], &x[1], &x[2], EPS),
            &|x, g| {
                let (dx, dg, db) = r::layer_norm_backward(&x[0], &x[1], g, EPS);
                vec![dx, dg, db]
            },
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
        &|x| r::layer_norm(&x[0], &x[1], &x[2], EPS),
        &|x, g| {
            let (dx, _, _) = r::layer_norm_backward(&x[0], &x[1], g, EPS);
            vec![dx, vec![0.0; 33], vec![0.0; 33]]
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

#[test]
fn layer_norm_forward_and_backward() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in ROW_SHAPES.iter().enumerate() {
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
            let wy = r::layer_norm(&f64s(&x), &f64s(&gamma), &f64s(&beta), 1e-5);
            let (wdx, wdg, wdb) = r::layer_norm_backward(&f64s(&x), &f64s(&gamma), &f64s(&g), 1e-5);
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

fn err_text(r: Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.shape()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn layer_norm_bad_inputs_are_errors_naming_op_and_shapes() {
    let dev = shared_device();
    let x = Tensor::zeros(&dev, &[3, 4]).unwrap();
    let ids4 = Tensor::from_u32(&dev, &[0, 1, 2, 3], &[4]).unwrap();
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
}
// ---------------------------------------------------------------------------------------------
// Residual add + LayerNorm (one kernel each way)

/// f64 `(sum, LayerNorm(sum))` for `sum = x + res`: the unfused composition. With `f32_sum`
/// the sum is rounded to f32 once, as the composition's f32 tensor holds it (with 3 columns
/// around 50 that rounding alone moves a normalised value by ~1e-4); finite differences need
/// the exact f64 sum.
fn add_ln_ref(
    x: &[f64],
    res: &[f64],
    gamma: &[f64],
    beta: &[f64],
    f32_sum: bool,
) -> (Vec<f64>, Vec<f64>) {
    let sum: Vec<f64> = x
        .iter()
        .zip(res)
        .map(|(&a, &b)| match f32_sum {
            true => f64::from(a as f32 + b as f32),
            false => a + b,
        })
        .collect();
    let y = r::layer_norm(&sum, gamma, beta, EPS);
    (sum, y)
}

#[test]
fn add_layer_norm_gradients_match_finite_differences() {
    // out = sum + y * w: sum has a use besides the LayerNorm that the backward must add in
    // (the next residual add of a Transformer). C = 1, 7, 333; a rank-3 input; 130 rows.
    let shapes: &[&[usize]] = &[&[3, 1], &[5, 7], &[3, 333], &[2, 3, 7], &[130, 7], &[6]];
    for &shape in shapes {
        let c = *shape.last().unwrap();
        GradCheck::new(&format!("add_layer_norm {shape:?}"), &shared_device())
            .input(shape, -2.0, 2.0)
            .input(shape, -2.0, 2.0)
            .input(&[c], 0.5, 1.5)
            .input(&[c], -0.5, 0.5)
            .constant(shape, -1.0, 1.0)
            .tolerances(1e-4, 2e-3)
            .assert(
                &|t| {
                    let (sum, y) = t[0].add_layer_norm(&t[1], &t[2], &t[3], EPS as f32)?;
                    sum.add(&y.mul(&t[4])?)
                },
                &|x| {
                    let (sum, y) = add_ln_ref(&x[0], &x[1], &x[2], &x[3], false);
                    (0..sum.len()).map(|i| sum[i] + y[i] * x[4][i]).collect()
                },
            );
    }
}

/// Forward (sum and y) and backward (x, res, gamma, beta) of `add_layer_norm` in `form` on
/// (rows, cols) against the f64 composition; `other` also gives `sum` a second use.
/// `wide`: x around 50 with spread 3 (a large common mean tests the two-pass variance);
/// otherwise x has spread 1 about a ramp of 4 per column, so that among a million rows of
/// three columns none is so nearly constant that f32 LayerNorm itself (fused or not) loses
/// 1e-3 of its values.
fn add_layer_norm_case(
    dev: &portagrad::Device,
    form: &str,
    (rows, cols): (usize, usize),
    other: bool,
    wide: bool,
) {
    let _g = force(dev, form, cols);
    let seed = (rows * 31 + cols) as u64;
    let x: Vec<f32> = random_vec(rows * cols, -1.0, 1.0, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| match wide {
            true => v * 3.0 + 50.0,
            false => v + 4.0 * (i % cols) as f32,
        })
        .collect();
    let res = random_vec(rows * cols, -2.0, 2.0, seed + 1);
    let gamma = random_vec(cols, 0.5, 1.5, seed + 2);
    let beta = random_vec(cols, -0.5, 0.5, seed + 3);
    let gy = random_vec(rows * cols, -1.0, 1.0, seed + 4);
    let gs = random_vec(rows * cols, -1.0, 1.0, seed + 5);
    let xt = up(dev, &x, &[rows, cols]).with_grad();
    let rt = up(dev, &res, &[rows, cols]).with_grad();
    let gt = up(dev, &gamma, &[cols]).with_grad();
    let bt = up(dev, &beta, &[cols]).with_grad();
    let (sum, y) = xt.add_layer_norm(&rt, &gt, &bt, EPS as f32).unwrap();
    let (wsum, wy) = add_ln_ref(&f64s(&x), &f64s(&res), &f64s(&gamma), &f64s(&beta), true);
    let what = format!("{form} add_layer_norm ({rows}, {cols}) other use {other}");
    assert_close(
        &format!("{what} sum"),
        &sum.to_vec().unwrap(),
        &wsum,
        1e-6,
        1e-6,
    );
    assert_close(&format!("{what} y"), &y.to_vec().unwrap(), &wy, 1e-4, 1e-4);
    // loss = sum(y * gy) (+ sum(sum * gs)); with the second use, sum's node comes after y's
    // in the backward order only through this add, which runs first: the fused kernel adds gs.
    let gyt = up(dev, &gy, &[rows, cols]);
    let loss = if other {
        let gst = up(dev, &gs, &[rows, cols]);
        sum.mul(&gst)
            .unwrap()
            .add(&y.mul(&gyt).unwrap())
            .unwrap()
            .sum()
            .unwrap()
    } else {
        y.mul(&gyt).unwrap().sum().unwrap()
    };
    let grads = loss.backward().unwrap();
    let (mut wdx, wdg, wdb) = r::layer_norm_backward(&wsum, &f64s(&gamma), &f64s(&gy), EPS);
    if other {
        wdx.iter_mut()
            .zip(&gs)
            .for_each(|(d, &g)| *d += f64::from(g));
    }
    let get = |t: &Tensor| grads.get(t).unwrap().to_vec().unwrap();
    assert_close(&format!("{what} dx"), &get(&xt), &wdx, 1e-3, 1e-3);
    assert_close(&format!("{what} dres"), &get(&rt), &wdx, 1e-3, 1e-3);
    let tol = 1e-4 * rows as f64;
    assert_close(&format!("{what} dgamma"), &get(&gt), &wdg, 1e-3, tol);
    assert_close(&format!("{what} dbeta"), &get(&bt), &wdb, 1e-4, tol);
}

#[test]
fn add_layer_norm_forward_and_backward_in_every_form() {
    let dev = shared_device();
    for form in FORMS {
        for &(rows, cols) in ROW_SHAPES.iter() {
            for other in [false, true] {
                add_layer_norm_case(&dev, form, (rows, cols), other, true);
            }
        }
    }
}

#[test]
fn add_layer_norm_rows_past_one_grid_dimension() {
    // Rows one workgroup past 65,535 workgroups of each form (1, 8 and 64 rows per workgroup),
    // C = 3 (no vec4 path): the grid folds into 2-D.
    let dev = shared_device();
    for (form, per_wg) in [("workgroup", 1), ("subgroup", 8), ("invocation", 64)] {
        add_layer_norm_case(&dev, form, (65_536 * per_wg + 3, 3), true, false);
    }
}

#[test]
fn add_layer_norm_is_one_dispatch_each_way() {
    // A device of its own: its counters see this test's dispatches only.
    let dev = portagrad::testing::device().unwrap();
    let x = Tensor::rand_normal(&dev, &[37, 65], 0.0, 1.0, 1)
        .unwrap()
        .with_grad();
    let res = Tensor::rand_normal(&dev, &[37, 65], 0.0, 1.0, 2)
        .unwrap()
        .with_grad();
    let gamma = Tensor::ones(&dev, &[65]).unwrap();
    let beta = Tensor::zeros(&dev, &[65]).unwrap();
    dev.sync().unwrap();
    dev.reset_stats();
    let (sum, y) = x.add_layer_norm(&res, &gamma, &beta, 1e-5).unwrap();
    assert_eq!(dev.stats().dispatches, 1, "forward");
    // sum's other use is added inside the LayerNorm backward kernel: with gamma and beta
    // constant the backward of the fused op is that one kernel (the add's own backward and
    // the seed are the other dispatches counted here).
    let out = sum.add(&y).unwrap();
    let seed = Tensor::ones(&dev, &[37, 65]).unwrap();
    dev.sync().unwrap();
    dev.reset_stats();
    let g = out.backward_with(&seed).unwrap();
    assert_eq!(dev.stats().dispatches, 1, "backward");
    assert!(g.get(&x).is_some() && g.get(&res).is_some());
}

#[test]
fn add_layer_norm_bad_inputs_are_errors() {
    let dev = shared_device();
    let x = Tensor::zeros(&dev, &[3, 4]).unwrap();
    let g4 = Tensor::ones(&dev, &[4]).unwrap();
    let r5 = Tensor::zeros(&dev, &[3, 5]).unwrap();
    let e = x
        .add_layer_norm(&r5, &g4, &g4, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("add_layer_norm") && e.contains("[3, 5]"), "{e}");
    let g5 = Tensor::ones(&dev, &[5]).unwrap();
    let e = x
        .add_layer_norm(&x, &g5, &g4, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("add_layer_norm") && e.contains("[5]"), "{e}");
    let ids = Tensor::from_u32(&dev, &[0; 12], &[3, 4]).unwrap();
    assert!(matches!(
        x.add_layer_norm(&ids, &g4, &g4, 1e-5),
        Err(Error::DType {
            op: "add_layer_norm",
            ..
        })
    ));
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
// RMSNorm

#[test]
fn rms_norm_gradients() {
    // C = 1, 7, 333; a rank-3 input; 130 rows (several chunks of the weight's column sums);
    // C = 64 (the vec4 forms).
    let shapes: &[&[usize]] = &[
        &[3, 1],
        &[5, 7],
        &[3, 333],
        &[2, 3, 7],
        &[130, 7],
        &[7],
        &[9, 64],
    ];
    for &shape in shapes {
        let c = *shape.last().unwrap();
        check_grad(
            &format!("rms_norm {shape:?}"),
            &[inp(shape, -2.0, 2.0), inp(&[c], 0.5, 1.5)],
            &|t| t[0].rms_norm(&t[1], EPS as f32),
            &|x| r::rms_norm(&x[0], &x[1], EPS),
            &|x, g| {
                let (dx, dw) = r::rms_norm_backward(&x[0], &x[1], g, EPS);
                vec![dx, dw]
            },
            1e-4,
            1e-4,
        );
    }
    // A constant weight: only x gets a gradient.
    check_grad(
        "rms_norm constant weight",
        &[inp(&[5, 33], -3.0, 3.0), constant(&[33], 0.5, 1.5)],
        &|t| t[0].rms_norm(&t[1], 1e-6),
        &|x| r::rms_norm(&x[0], &x[1], 1e-6),
        &|x, g| {
            let (dx, _) = r::rms_norm_backward(&x[0], &x[1], g, 1e-6);
            vec![dx, vec![0.0; 33]]
        },
        1e-4,
        1e-4,
    );
}

/// The reference itself on values worked by hand: x = (3, 4), mean(x²) = 12.5.
#[test]
fn rms_norm_reference_by_hand() {
    let y = r::rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
    let s = 12.5f64.sqrt();
    assert!(
        (y[0] - 3.0 / s).abs() < 1e-15 && (y[1] - 8.0 / s).abs() < 1e-15,
        "{y:?}"
    );
}

#[test]
fn rms_norm_forward_and_backward_in_every_form() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in ROW_SHAPES.iter().chain(&[(33, 64), (5, 4096)]).enumerate() {
            let _g = force(&dev, form, cols);
            let x = random_vec(rows * cols, -3.0, 3.0, 150 + i as u64);
            let w = random_vec(cols, 0.5, 1.5, 160 + i as u64);
            let g = random_vec(rows * cols, -1.0, 1.0, 180 + i as u64);
            let xt = up(&dev, &x, &[rows, cols]).with_grad();
            let wt = up(&dev, &w, &[cols]).with_grad();
            let y = xt.rms_norm(&wt, 1e-5).unwrap();
            let wy = r::rms_norm(&f64s(&x), &f64s(&w), 1e-5);
            let (wdx, wdw) = r::rms_norm_backward(&f64s(&x), &f64s(&w), &f64s(&g), 1e-5);
            let what = format!("{form} rms_norm ({rows}, {cols})");
            assert_close(&what, &y.to_vec().unwrap(), &wy, 1e-4, 1e-5);
            let grads = y.backward_with(&up(&dev, &g, &[rows, cols])).unwrap();
            let get = |t: &Tensor| grads.get(t).unwrap().to_vec().unwrap();
            assert_close(&format!("{what} dx"), &get(&xt), &wdx, 1e-3, 1e-4);
            assert_close(
                &format!("{what} dweight"),
                &get(&wt),
                &wdw,
                1e-3,
                1e-4 * rows as f64,
            );
        }
    }
}

/// More rows than one grid dimension holds workgroups (65,535), in each form.
#[test]
fn rms_norm_rows_past_one_grid_dimension() {
    let dev = shared_device();
    for (form, rows, cols) in [
        ("workgroup", 65_537, 3),
        ("subgroup", 65_535 * 8 + 9, 2),
        ("invocation", 65_535 * 64 + 65, 1),
    ] {
        let _g = force(&dev, form, cols);
        let x = random_vec(rows * cols, -2.0, 2.0, 7);
        let w = random_vec(cols, 0.5, 1.5, 8);
        let y = up(&dev, &x, &[rows, cols])
            .rms_norm(&up(&dev, &w, &[cols]), 1e-5)
            .unwrap();
        let want = r::rms_norm(&f64s(&x), &f64s(&w), 1e-5);
        assert_close(
            &format!("{form} rms_norm ({rows}, {cols})"),
            &y.to_vec().unwrap(),
            &want,
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn rms_norm_backward_is_deterministic() {
    let dev = shared_device();
    let x = Tensor::rand_normal(&dev, &[300, 65], 0.0, 1.0, 5)
        .unwrap()
        .with_grad();
    let w = Tensor::rand_uniform(&dev, &[65], 0.5, 1.5, 6)
        .unwrap()
        .with_grad();
    let m = Tensor::rand_normal(&dev, &[300, 65], 0.0, 1.0, 7).unwrap();
    let run = || {
        let g = x
            .rms_norm(&w, 1e-5)
            .unwrap()
            .mul(&m)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        [&x, &w].map(|p| bits(&g.get(p).unwrap().to_vec().unwrap()))
    };
    assert_eq!(run(), run());
}

#[test]
fn rms_norm_bad_inputs_are_errors_naming_op_and_shapes() {
    let dev = shared_device();
    let x = Tensor::zeros(&dev, &[3, 4]).unwrap();
    let w5 = Tensor::ones(&dev, &[5]).unwrap();
    let w4 = Tensor::ones(&dev, &[4]).unwrap();
    let e = err_text(x.rms_norm(&w5, 1e-5));
    assert!(
        e.contains("rms_norm") && e.contains("[5]") && e.contains("[3, 4]"),
        "{e}"
    );
    let e = err_text(x.rms_norm(&Tensor::ones(&dev, &[1, 4]).unwrap(), 1e-5));
    assert!(e.contains("rms_norm") && e.contains("[1, 4]"), "{e}");
    let empty = Tensor::zeros(&dev, &[3, 0]).unwrap();
    let e = err_text(empty.rms_norm(&Tensor::zeros(&dev, &[0]).unwrap(), 1e-5));
    assert!(e.contains("rms_norm"), "{e}");
    let ids4 = Tensor::from_u32(&dev, &[0, 1, 2, 3], &[4]).unwrap();
    assert!(matches!(
        ids4.rms_norm(&w4, 1e-5),
        Err(Error::DType { op: "rms_norm", .. })
    ));
    assert!(matches!(
        w4.rms_norm(&ids4, 1e-5),
        Err(Error::DType { op: "rms_norm", .. })
    ));
    let half = w4.to_dtype(portagrad::DType::F16).unwrap();
    assert!(matches!(
        half.rms_norm(&w4, 1e-5),
        Err(Error::DType { op: "rms_norm", .. })
    ));
    for eps in [f32::NAN, -1.0, f32::INFINITY] {
        assert!(matches!(
            x.rms_norm(&w4, eps),
            Err(Error::InvalidArgument { op: "rms_norm", .. })
        ));
    }
}
