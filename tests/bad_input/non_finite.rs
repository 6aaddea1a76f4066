//! NaN and Inf: every op returns (no panic, no error); IEEE-determined results are asserted,
//! the rest printed.

use portagrad::testing::shared_device;
use portagrad::{Device, Tensor, attention};

use crate::{Corpus, ensure, ids, ok, t};

/// One op on non-finite data: it must return, and `check` must hold on its output, which is
/// printed at the end.
fn run(
    c: &mut Corpus,
    name: &str,
    f: &dyn Fn() -> portagrad::Result<Tensor>,
    check: &dyn Fn(&[f32]) -> bool,
) {
    let mut seen = None;
    c.case(name, || {
        let v = ok(ok(f())?.to_vec())?;
        seen = Some(format!("{name}: {v:?}"));
        ensure(check(&v), || format!("{name}: unexpected {v:?}"))
    });
    if let Some(n) = seen {
        c.note(n);
    }
}

/// `[1, NaN, inf, -inf]`.
fn non_finite(d: &Device) -> Tensor {
    t(d, &[1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &[4])
}

#[test]
fn arithmetic_propagates() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nan/inf arithmetic");
    let x = non_finite(d);
    run(&mut c, "add", &|| x.add(&x), &|v| {
        v[0] == 2.0 && v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::NEG_INFINITY
    });
    run(&mut c, "sub (inf - inf = NaN)", &|| x.sub(&x), &|v| {
        v[0] == 0.0 && v[1].is_nan() && v[2].is_nan() && v[3].is_nan()
    });
    run(&mut c, "mul", &|| x.mul(&x), &|v| {
        v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::INFINITY
    });
    run(&mut c, "div (inf / inf = NaN)", &|| x.div(&x), &|v| {
        v[0] == 1.0 && v[1].is_nan() && v[2].is_nan()
    });
    run(&mut c, "exp", &|| x.exp(), &|v| {
        v[1].is_nan() && v[2] == f32::INFINITY && v[3] == 0.0
    });
    run(&mut c, "log", &|| x.log(), &|v| {
        v[0] == 0.0 && v[1].is_nan() && v[2] == f32::INFINITY && v[3].is_nan()
    });
    run(&mut c, "sqrt", &|| x.sqrt(), &|v| {
        v[1].is_nan() && v[2] == f32::INFINITY && v[3].is_nan()
    });
    run(&mut c, "powf 2", &|| x.powf(2.0), &|v| {
        v[0] == 1.0 && v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::INFINITY
    });
    run(&mut c, "powf 0.5", &|| x.powf(0.5), &|v| {
        v[0] == 1.0 && v[1].is_nan() && v[2] == f32::INFINITY
    });
    run(
        &mut c,
        "powf 3 gradient at NaN",
        &|| {
            let w = x.with_grad();
            let g = w.powf(3.0)?.sum()?.backward()?;
            Ok(g.get(&w).expect("gradient of w").clone())
        },
        &|v| v[0] == 3.0 && v[1].is_nan(),
    );
    run(&mut c, "neg", &|| x.neg(), &|v| {
        v[1].is_nan() && v[2] == f32::NEG_INFINITY
    });
    run(&mut c, "mul_scalar NaN", &|| x.mul_scalar(f32::NAN), &|v| {
        v.iter().all(|a| a.is_nan())
    });
    run(
        &mut c,
        "add_scalar inf",
        &|| x.add_scalar(f32::INFINITY),
        &|v| v[0] == f32::INFINITY && v[3].is_nan(),
    );
    c.finish();
}

#[test]
fn activations_reductions_and_softmax_propagate() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nan/inf activations");
    let x = non_finite(d);
    run(&mut c, "relu", &|| x.relu(), &|v| {
        v[0] == 1.0 && v[2] == f32::INFINITY && v[3] == 0.0
    });
    run(&mut c, "gelu", &|| x.gelu(), &|v| v[0].is_finite());
    run(&mut c, "sigmoid", &|| x.sigmoid(), &|v| {
        v[2] == 1.0 && v[3] == 0.0
    });
    run(&mut c, "tanh", &|| x.tanh(), &|v| {
        v[2] == 1.0 && v[3] == -1.0
    });
    run(&mut c, "sum", &|| x.sum(), &|v| v[0].is_nan());
    run(&mut c, "mean", &|| x.mean(), &|v| v[0].is_nan());
    run(&mut c, "max", &|| x.max(), &|v| v.len() == 1);
    run(
        &mut c,
        "sum_last of inf and -inf",
        &|| t(d, &[f32::INFINITY, f32::NEG_INFINITY], &[1, 2]).sum_last(),
        &|v| v[0].is_nan(),
    );
    run(&mut c, "softmax", &|| x.softmax(), &|v| v.len() == 4);
    run(
        &mut c,
        "softmax of a row with one inf",
        &|| t(d, &[0.0, f32::INFINITY, 1.0], &[3]).softmax(),
        &|v| v.len() == 3,
    );
    run(
        &mut c,
        "softmax of an all -inf row",
        &|| t(d, &[f32::NEG_INFINITY; 3], &[3]).softmax(),
        &|v| v.len() == 3,
    );
    run(
        &mut c,
        "softmax of a finite row is finite",
        &|| t(d, &[1e30, -1e30, 0.0], &[3]).softmax(),
        &|v| v.iter().all(|a| a.is_finite()) && (v[0] - 1.0).abs() < 1e-6,
    );
    run(&mut c, "log_softmax", &|| x.log_softmax(), &|v| {
        v.len() == 4
    });
    c.finish();
}

#[test]
fn matmul_norm_losses_gather_and_gradients_propagate() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nan/inf ops");
    let x = non_finite(d);
    let nan_at_1 = |v: &[f32]| v[1].is_nan();
    run(
        &mut c,
        "matmul",
        &|| t(d, &[1.0, f32::NAN, 2.0, 3.0], &[2, 2]).matmul(&t(d, &[1.0; 4], &[2, 2])),
        &|v| v[0].is_nan() && v[1].is_nan() && v[2] == 5.0 && v[3] == 5.0,
    );
    run(
        &mut c,
        "layer_norm of a row with inf",
        &|| {
            x.reshape(&[1, 4])?
                .layer_norm(&t(d, &[1.0; 4], &[4]), &t(d, &[0.0; 4], &[4]), 1e-5)
        },
        &|v| v.iter().any(|a| !a.is_finite()),
    );
    run(
        &mut c,
        "mse_loss",
        &|| x.mse_loss(&t(d, &[0.0; 4], &[4])),
        &|v| v[0].is_nan(),
    );
    run(
        &mut c,
        "bce_with_logits",
        &|| x.bce_with_logits(&t(d, &[1.0; 4], &[4])),
        &|v| v[0].is_nan(),
    );
    run(
        &mut c,
        "cross_entropy of NaN logits",
        &|| t(d, &[f32::NAN, 0.0, 0.0, 1.0], &[2, 2]).cross_entropy(&ids(d, &[0, 1], &[2]), None),
        &|v| v[0].is_nan(),
    );
    run(
        &mut c,
        "gather_rows copies NaN",
        &|| t(d, &[f32::NAN, 1.0], &[2, 1]).gather_rows(&ids(d, &[0, 1, 0], &[3])),
        &|v| v[0].is_nan() && v[1] == 1.0 && v[2].is_nan(),
    );
    run(
        &mut c,
        "broadcast_to copies inf",
        &|| t(d, &[f32::INFINITY], &[1]).broadcast_to(&[3]),
        &|v| v.iter().all(|a| *a == f32::INFINITY),
    );
    run(
        &mut c,
        "gradient through NaN",
        &|| {
            let w = x.with_grad();
            let g = w.mul(&w)?.sum()?.backward()?;
            Ok(g.get(&w).expect("gradient of w").clone())
        },
        &nan_at_1,
    );
    run(
        &mut c,
        "attention with a NaN query",
        &|| {
            let mut q = vec![0.0; 8];
            q[0] = f32::NAN;
            let q = t(d, &q, &[1, 1, 2, 4]);
            let k = Tensor::zeros(d, &[1, 1, 2, 4])?;
            attention(&q, &k, &k, true)
        },
        &|v| v.len() == 8,
    );
    c.finish();
}
