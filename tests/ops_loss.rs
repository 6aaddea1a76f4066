//! The losses and metrics: MSE, BCE-with-logits, cross-entropy (with an ignore index) and the
//! accuracy metrics. Forward vs `testing::reference::loss`, GPU backward vs the analytic
//! backward and the analytic backward vs central finite differences, on awkward shapes and in
//! each row-kernel form; extreme logits; bad inputs.

mod common;

use common::{FORMS, ROW_SHAPES, check_grad, constant, f64s, force, ids, inp, up};
use portagrad::testing::reference::loss as r;
use portagrad::testing::{assert_close, force_row_kernel, random_vec, shared_device};
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

// ---------------------------------------------------------------------------------------------
// MSE and BCE

fn mse_case(shape: &[usize]) {
    let n: usize = shape.iter().product();
    check_grad(
        &format!("mse_loss {shape:?}"),
        &[inp(shape, -2.0, 2.0), constant(shape, -2.0, 2.0)],
        &|t| t[0].mse_loss(&t[1]),
        &|x| vec![r::mse(&x[0], &x[1])],
        &|x, g| vec![r::mse_backward(&x[0], &x[1], g[0]), vec![0.0; n]],
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

fn bce_ref(x: &[Vec<f64>]) -> Vec<f64> {
    vec![r::bce_with_logits(&x[0], &x[1])]
}

fn bce_grad(x: &[Vec<f64>], g: &[f64]) -> Vec<Vec<f64>> {
    let n = x[0].len();
    vec![
        r::bce_with_logits_backward(&x[0], &x[1], g[0]),
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
            let want = r::bce_term(f64::from(z), f64::from(t));
            assert!(
                (l - want).abs() <= want * 2e-6,
                "z = {z}, t = {t}: loss {l}, want {want}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

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
        &|x| vec![r::cross_entropy(&x[0], c, &tf, ignore).0],
        &|x, g| {
            vec![
                r::cross_entropy(&x[0], c, &tb, ignore)
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
        &|x| vec![r::cross_entropy(&x[0], c, &tf, None).0],
        &|x, g| {
            vec![
                r::cross_entropy(&x[0], c, &tb, None)
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
    let (want, _) = r::cross_entropy(&z64, c, &t, Some(ignore));
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
        let got = z.accuracy(&tt).unwrap();
        assert!(got.shape().is_empty());
        assert_close(
            &format!("accuracy ({rows}, {c})"),
            &[got.item().unwrap()],
            &[r::accuracy(&f64s(&zv2), c, &t)],
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
        let z = Tensor::from_slice(&dev, &zv, &[n]).unwrap();
        let t = Tensor::from_slice(&dev, &tv, &[n]).unwrap();
        let got = z.binary_accuracy(&t).unwrap();
        assert!(got.shape().is_empty());
        assert_close(
            &format!("binary_accuracy {n}"),
            &[got.item().unwrap()],
            &[r::binary_accuracy(&f64s(&zv), &f64s(&tv))],
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

    // Empty inputs have no mean.
    let empty = Tensor::zeros(&dev, &[0, 4]).unwrap();
    assert!(empty.mse_loss(&empty).is_err());
}

// ---------------------------------------------------------------------------------------------
// Each row-kernel form

#[test]
fn cross_entropy_forward_backward_and_accuracy() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in ROW_SHAPES.iter().enumerate() {
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
                let (want, want_dz) = r::cross_entropy(&f64s(&z), cols, &ids, ign);
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
        let mse = r::mse(&x64, &t64);
        let bce = r::bce_with_logits(&x64, &t64);
        let acc = r::binary_accuracy(&x64, &t64);
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

// ---------------------------------------------------------------------------------------------
// The lm_head fused with the loss: linear_cross_entropy

/// f64 loss and gradients (dx (N, C), dw (V, C)) of `cross_entropy(x · wᵀ, t)`.
fn lce_ref(x: &[f64], w: &[f64], c: usize, t: &[u32]) -> (f64, Vec<f64>, Vec<f64>) {
    let (n, v) = (x.len() / c, w.len() / c);
    let mut z = vec![0.0; n * v];
    for i in 0..n {
        for j in 0..v {
            z[i * v + j] = (0..c).map(|k| x[i * c + k] * w[j * c + k]).sum();
        }
    }
    let (loss, dz) = r::cross_entropy(&z, v, t, None);
    let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; v * c]);
    for i in 0..n {
        for j in 0..v {
            let g = dz[i * v + j];
            for k in 0..c {
                dx[i * c + k] += g * w[j * c + k];
                dw[j * c + k] += g * x[i * c + k];
            }
        }
    }
    (loss, dx, dw)
}

#[test]
fn linear_cross_entropy_matches_the_composition_for_any_chunking() {
    let dev = shared_device();
    // (N, C, V): V > C and V < C, C and V not multiples of 4, N past a 64-row workgroup.
    for (n, c, v) in [(1, 3, 7), (13, 5, 67), (130, 33, 9), (70, 16, 257)] {
        let xs = random_vec(n * c, -1.5, 1.5, (n * c) as u64);
        let ws = random_vec(v * c, -1.5, 1.5, (v * c + 1) as u64);
        let t = ids(n, v, (n + v) as u64);
        let (wl, wdx, wdw) = lce_ref(&f64s(&xs), &f64s(&ws), c, &t);
        for chunk in [1, 3, 64, n, n + 5] {
            let x = up(&dev, &xs, &[n, c]).with_grad();
            let w = up(&dev, &ws, &[v, c]).with_grad();
            let tt = Tensor::from_u32(&dev, &t, &[n]).unwrap();
            let what = format!("linear_cross_entropy ({n}, {c}) x ({v}, {c}), chunks of {chunk}");
            let loss = x.linear_cross_entropy(&w, &tt, chunk).unwrap();
            assert_close(&what, &loss.to_vec().unwrap(), &[wl], 1e-5, 1e-5);
            // An upstream gradient of 2.5: the backward scales by it.
            let g = loss
                .backward_with(&Tensor::from_slice(&dev, &[2.5], &[]).unwrap())
                .unwrap();
            let scaled = |d: &[f64]| d.iter().map(|v| v * 2.5).collect::<Vec<_>>();
            let got = |p: &Tensor| g.get(p).unwrap().to_vec().unwrap();
            assert_close(&format!("{what} dx"), &got(&x), &scaled(&wdx), 1e-4, 1e-5);
            assert_close(&format!("{what} dw"), &got(&w), &scaled(&wdw), 1e-4, 1e-5);
            // Without recording: the same loss, and no gradient work.
            let plain = portagrad::inference(|| x.linear_cross_entropy(&w, &tt, chunk)).unwrap();
            assert_close(
                &format!("{what} no grad"),
                &plain.to_vec().unwrap(),
                &[wl],
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn linear_cross_entropy_gradients_match_finite_differences() {
    let t = vec![4u32, 0, 6, 6, 2];
    for chunk in [2, 5] {
        check_grad(
            &format!("linear_cross_entropy chunks of {chunk}"),
            &[inp(&[5, 3], -1.5, 1.5), inp(&[7, 3], -1.5, 1.5)],
            &|x| {
                let tt = Tensor::from_u32(x[0].device(), &t, &[5])?;
                x[0].linear_cross_entropy(&x[1], &tt, chunk)
            },
            &|x| vec![lce_ref(&x[0], &x[1], 3, &t).0],
            &|x, g| {
                let (_, dx, dw) = lce_ref(&x[0], &x[1], 3, &t);
                vec![
                    dx.iter().map(|v| v * g[0]).collect(),
                    dw.iter().map(|v| v * g[0]).collect(),
                ]
            },
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn linear_cross_entropy_bad_inputs_are_errors() {
    let dev = shared_device();
    let x = Tensor::zeros(&dev, &[4, 3]).unwrap();
    let w = Tensor::zeros(&dev, &[7, 3]).unwrap();
    let t = Tensor::from_u32(&dev, &[0, 1, 2, 3], &[4]).unwrap();
    let text = |r: Result<Tensor>| r.unwrap_err().to_string();
    let w4 = Tensor::zeros(&dev, &[7, 4]).unwrap();
    let e = text(x.linear_cross_entropy(&w4, &t, 2));
    assert!(
        e.contains("linear_cross_entropy") && e.contains("[7, 4]"),
        "{e}"
    );
    let t3 = Tensor::from_u32(&dev, &[0, 1, 2], &[3]).unwrap();
    assert!(text(x.linear_cross_entropy(&w, &t3, 2)).contains("linear_cross_entropy"));
    assert!(text(x.linear_cross_entropy(&w, &t, 0)).contains("chunk_rows"));
    let bad = Tensor::from_u32(&dev, &[0, 1, 9, 3], &[4]).unwrap();
    for chunk in [2, 4] {
        let e = text(x.linear_cross_entropy(&w, &bad, chunk));
        assert!(e.contains("target 9 at position 2"), "{e}");
    }
    assert!(matches!(
        t.linear_cross_entropy(&w, &t, 2),
        Err(Error::DType { .. })
    ));
}
