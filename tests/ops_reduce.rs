//! The reductions (sum / mean / max over the last axis and over all elements): the GPU
//! against `testing::reference::reduce` on awkward shapes and in each row-kernel form,
//! infinities, empty inputs, and the gradients of sum and mean.

mod common;

use common::{FORMS, ROW_SHAPES, check_grad, f64s, force, inp, up};
use portagrad::testing::reference::reduce as r;
use portagrad::testing::{assert_close, force_row_kernel, random_vec, shared_device};
use portagrad::{Error, Tensor};

/// Past 65,535 workgroups of 256 invocations: 16,843,009 elements.
const BIG: [usize; 2] = [65_537, 257];

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
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
        let (_, cols) = rows_of(shape);
        let x64 = f64s(&x);
        let sum = r::sum_rows(&x64, cols);
        let abs: Vec<f64> = x64
            .chunks(cols)
            .map(|row| row.iter().map(|v| v.abs()).sum())
            .collect();
        let mx = r::max_rows(&x64, cols);
        let tol = 1e-6 * abs.iter().cloned().fold(0.0, f64::max);
        assert_close(
            &format!("sum_last {shape:?}"),
            &t.sum_last().unwrap().to_vec().unwrap(),
            &sum,
            0.0,
            tol.max(1e-7),
        );
        assert_close(
            &format!("mean_last {shape:?}"),
            &t.mean_last().unwrap().to_vec().unwrap(),
            &r::mean_rows(&x64, cols),
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
        let total_abs: f64 = abs.iter().sum();
        assert_close(
            &format!("sum {shape:?}"),
            &[t.sum().unwrap().item().unwrap()],
            &[r::sum(&x64)],
            0.0,
            1e-6 * total_abs + 1e-7,
        );
        assert_close(
            &format!("mean {shape:?}"),
            &[t.mean().unwrap().item().unwrap()],
            &[r::mean(&x64)],
            0.0,
            1e-6 * total_abs / n as f64 + 1e-9,
        );
        assert_close(
            &format!("max {shape:?}"),
            &[t.max().unwrap().item().unwrap()],
            &[r::max(&x64)],
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

#[test]
fn sums_means_and_maxima_over_rows_and_all_elements() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in ROW_SHAPES.iter().enumerate() {
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
            let tol = 1e-5 * cols as f64;
            assert_close(
                &format!("{what} sum_last"),
                &ft.sum_last().unwrap().to_vec().unwrap(),
                &r::sum_rows(&f64s(&finite), cols),
                1e-5,
                tol,
            );
            assert_close(
                &format!("{what} mean_last"),
                &ft.mean_last().unwrap().to_vec().unwrap(),
                &r::mean_rows(&f64s(&finite), cols),
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} max_last"),
                &xt.max_last().unwrap().to_vec().unwrap(),
                &r::max_rows(&f64s(&x), cols),
                0.0,
                0.0,
            );
            let all = r::sum(&f64s(&finite));
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
                &[r::max(&f64s(&x))],
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
    let want_sum = r::sum(&f64s(&x));
    let want_max = r::max(&f64s(&x));
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
fn reduction_gradients() {
    let (rows, c) = (5usize, 33usize);
    check_grad(
        "sum_last",
        &[inp(&[rows, c], -1.0, 1.0)],
        &|t| t[0].sum_last(),
        &|x| r::sum_rows(&x[0], c),
        &|_, g| vec![r::sum_rows_backward(g, c)],
        1e-5,
        1e-4,
    );
    check_grad(
        "mean_last",
        &[inp(&[rows, c], -1.0, 1.0)],
        &|t| t[0].mean_last(),
        &|x| r::mean_rows(&x[0], c),
        &|_, g| vec![r::mean_rows_backward(g, c)],
        1e-5,
        1e-4,
    );
    check_grad(
        "sum",
        &[inp(&[3, 4, 5], -1.0, 1.0)],
        &|t| t[0].sum(),
        &|x| vec![r::sum(&x[0])],
        &|x, g| vec![r::sum_rows_backward(g, x[0].len())],
        1e-5,
        1e-4,
    );
    check_grad(
        "mean",
        &[inp(&[7, 9], -1.0, 1.0)],
        &|t| t[0].mean(),
        &|x| vec![r::mean(&x[0])],
        &|x, g| vec![r::mean_rows_backward(g, x[0].len())],
        1e-5,
        1e-4,
    );
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
