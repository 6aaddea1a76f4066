//! Softmax and log-softmax over the last axis: the GPU forward and backward against
//! `testing::reference::softmax` on awkward shapes, wide logits, in each row-kernel form
//! (forced), on rows longer than one shader loop may run, and the fallback of a forced form
//! that cannot run; gradients against finite differences.

mod common;

use common::{FORMS, ROW_SHAPES, check_grad, f64s, force, inp, up};
use portagrad::Tensor;
use portagrad::testing::reference::{reduce, softmax as r};
use portagrad::testing::{
    assert_close, force_row_kernel, random_vec, row_kernel_for, shared_device,
};

/// Past 65,535 workgroups of 256 invocations: 16,843,009 elements.
const BIG: [usize; 2] = [65_537, 257];

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

#[test]
fn softmax_and_log_softmax_match_cpu() {
    let shapes: &[&[usize]] = &[&[1], &[7], &[3, 333], &[2, 5, 1000], &BIG];
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        // Wide range: a naive exp would overflow at 100.
        let x = random_vec(n, -100.0, 100.0, 400 + k as u64);
        let t = upload(&x, shape);
        let cols = *shape.last().unwrap();
        assert_close(
            &format!("softmax {shape:?}"),
            &t.softmax().unwrap().to_vec().unwrap(),
            &r::softmax(&f64s(&x), cols),
            1e-5,
            1e-7,
        );
        assert_close(
            &format!("log_softmax {shape:?}"),
            &t.log_softmax().unwrap().to_vec().unwrap(),
            &r::log_softmax(&f64s(&x), cols),
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn softmax_gradients() {
    for c in [1usize, 7, 300] {
        let rows = 3;
        check_grad(
            &format!("softmax c={c}"),
            &[inp(&[rows, c], -3.0, 3.0)],
            &|t| t[0].softmax(),
            &|x| r::softmax(&x[0], c),
            &|x, g| vec![r::softmax_backward(&r::softmax(&x[0], c), g, c)],
            1e-5,
            1e-4,
        );
        check_grad(
            &format!("log_softmax c={c}"),
            &[inp(&[rows, c], -3.0, 3.0)],
            &|t| t[0].log_softmax(),
            &|x| r::log_softmax(&x[0], c),
            &|x, g| vec![r::log_softmax_backward(&r::log_softmax(&x[0], c), g, c)],
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn softmax_and_log_softmax_forward_and_backward() {
    let dev = shared_device();
    for form in FORMS {
        for (i, &(rows, cols)) in ROW_SHAPES.iter().enumerate() {
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
                let want = if log {
                    r::log_softmax(&x64, cols)
                } else {
                    r::softmax(&x64, cols)
                };
                // log_softmax is x - lse with both near 500 on half the rows: f32 spacing there
                // is 3e-5.
                let atol = if log { 1e-4 } else { 1e-6 };
                assert_close(&what, &y.to_vec().unwrap(), &want, 1e-5, atol);
                let grads = y.backward_with(&gt).unwrap();
                let dx = grads.get(&xt).unwrap().to_vec().unwrap();
                let want_dx = if log {
                    r::log_softmax_backward(&want, &g64, cols)
                } else {
                    r::softmax_backward(&want, &g64, cols)
                };
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
        &r::softmax(&f64s(&x), cols),
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
        let want = r::softmax(&f64s(&x), cols);
        let want_max = reduce::max_rows(&f64s(&x), cols);
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
