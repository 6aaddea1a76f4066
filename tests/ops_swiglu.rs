//! SwiGLU (`silu(gate) * up`), fused and two-input: forward against
//! `testing::reference::swiglu` on awkward shapes (odd F, vec4 F, one past a 2-D grid's first
//! dimension), gradients against finite differences, extreme gates, errors.

mod common;

use common::{check_grad, f64s, inp, up};
use portagrad::testing::reference::swiglu as r;
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{DType, Error, Tensor, swiglu, swiglu2};

/// The reference itself, by hand: silu(1) * 2 = 2 / (1 + e^-1).
#[test]
fn reference_by_hand() {
    let y = r::swiglu(&[1.0, 0.0, 2.0, 5.0], 2);
    assert!(
        (y[0] - 2.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-15 && y[1] == 0.0,
        "{y:?}"
    );
}

#[test]
fn fused_and_two_input_forward() {
    let dev = shared_device();
    // (rows..., F): F = 1, 7, 8 (vec4), 333; a rank-3 input; one unit past 65,535 workgroups.
    let shapes: &[&[usize]] = &[
        &[1],
        &[3, 7],
        &[5, 8],
        &[2, 333],
        &[2, 3, 12],
        &[65_535 * 256 + 1],
    ];
    for (i, &s) in shapes.iter().enumerate() {
        let f = *s.last().unwrap();
        let rows: usize = s[..s.len() - 1].iter().product();
        let mut fused_shape = s.to_vec();
        *fused_shape.last_mut().unwrap() = 2 * f;
        let x = random_vec(rows * 2 * f, -6.0, 6.0, 10 + i as u64);
        let y = swiglu(&up(&dev, &x, &fused_shape)).unwrap();
        assert_eq!(y.shape(), s);
        assert_close(
            &format!("swiglu {fused_shape:?}"),
            &y.to_vec().unwrap(),
            &r::swiglu(&f64s(&x), f),
            1e-5,
            1e-6,
        );
        let (gate, upv) = (
            random_vec(rows * f, -6.0, 6.0, 20 + i as u64),
            random_vec(rows * f, -6.0, 6.0, 30 + i as u64),
        );
        let y = swiglu2(&up(&dev, &gate, s), &up(&dev, &upv, s)).unwrap();
        assert_close(
            &format!("swiglu2 {s:?}"),
            &y.to_vec().unwrap(),
            &r::swiglu2(&f64s(&gate), &f64s(&upv)),
            1e-5,
            1e-6,
        );
    }
}

/// Very negative and very positive gates: no overflow, no NaN (silu(-100) = -0, silu(100) = 100).
#[test]
fn extreme_gates() {
    let dev = shared_device();
    let x = [-100.0f32, -30.0, 30.0, 100.0, 2.0, 2.0, 2.0, 2.0];
    let y = swiglu(&up(&dev, &x, &[1, 8])).unwrap().to_vec().unwrap();
    assert_close("extreme", &y, &r::swiglu(&f64s(&x), 4), 1e-6, 1e-12);
    let xt = up(&dev, &x, &[1, 8]).with_grad();
    let g = swiglu(&xt).unwrap().sum().unwrap().backward().unwrap();
    let dx = g.get(&xt).unwrap().to_vec().unwrap();
    assert!(dx.iter().all(|v| v.is_finite()), "{dx:?}");
    assert_close(
        "extreme dx",
        &dx,
        &r::swiglu_backward(&f64s(&x), &[1.0; 4], 4),
        1e-5,
        1e-6,
    );
}

#[test]
fn gradients() {
    for s in [&[3usize, 7][..], &[2, 8], &[2, 3, 5], &[1]] {
        let f = *s.last().unwrap();
        let mut fs = s.to_vec();
        *fs.last_mut().unwrap() = 2 * f;
        check_grad(
            &format!("swiglu {fs:?}"),
            &[inp(&fs, -4.0, 4.0)],
            &|x| swiglu(&x[0]),
            &|x| r::swiglu(&x[0], f),
            &|x, g| vec![r::swiglu_backward(&x[0], g, f)],
            1e-5,
            1e-4,
        );
        check_grad(
            &format!("swiglu2 {s:?}"),
            &[inp(s, -4.0, 4.0), inp(s, -4.0, 4.0)],
            &|x| swiglu2(&x[0], &x[1]),
            &|x| r::swiglu2(&x[0], &x[1]),
            &|x, g| {
                let (a, b) = r::swiglu2_backward(&x[0], &x[1], g);
                vec![a, b]
            },
            1e-5,
            1e-4,
        );
    }
}

/// The fused form equals the two-input form on the halves (the same arithmetic).
#[test]
fn fused_equals_two_input_on_halves() {
    let dev = shared_device();
    let (rows, f) = (5, 12);
    let x = random_vec(rows * 2 * f, -3.0, 3.0, 3);
    let (mut gate, mut upv) = (Vec::new(), Vec::new());
    for row in x.chunks(2 * f) {
        gate.extend_from_slice(&row[..f]);
        upv.extend_from_slice(&row[f..]);
    }
    let a = swiglu(&up(&dev, &x, &[rows, 2 * f]))
        .unwrap()
        .to_vec()
        .unwrap();
    let b = swiglu2(&up(&dev, &gate, &[rows, f]), &up(&dev, &upv, &[rows, f]))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_inputs_are_errors() {
    let dev = shared_device();
    let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    let e = swiglu(&z(&[2, 7])).unwrap_err().to_string();
    assert!(e.contains("swiglu") && e.contains("[2, 7]"), "{e}");
    let ids = Tensor::from_u32(&dev, &[0; 4], &[4]).unwrap();
    assert!(matches!(
        swiglu(&ids),
        Err(Error::DType { op: "swiglu", .. })
    ));
    let half = z(&[4]).to_dtype(DType::F16).unwrap();
    assert!(matches!(
        swiglu(&half),
        Err(Error::DType { op: "swiglu", .. })
    ));
    let e = swiglu2(&z(&[2, 3]), &z(&[3, 2])).unwrap_err().to_string();
    assert!(
        e.contains("swiglu2") && e.contains("[2, 3]") && e.contains("[3, 2]"),
        "{e}"
    );
    assert!(matches!(
        swiglu2(&ids, &z(&[4])),
        Err(Error::DType { op: "swiglu2", .. })
    ));
    assert!(matches!(
        swiglu2(&z(&[4]), &half),
        Err(Error::DType { op: "swiglu2", .. })
    ));
}
