//! The unary ops (neg, scalar add/mul, exp, log, sqrt, powf, relu, gelu, sigmoid, tanh, abs): the
//! GPU forward against `testing::reference::unary` on awkward shapes (size 1, 7, a
//! non-power-of-two, and one past 65,535 × 256 elements, so 2-D grid folding is exercised),
//! extreme inputs, and the GPU backward against the reference derivative and finite differences.

mod common;

use common::{check_grad, inp};
use portagrad::Tensor;
use portagrad::testing::reference::unary as r;
use portagrad::testing::{assert_close, random_vec, shared_device};

/// Past 65,535 workgroups of 256 invocations: 16,843,009 elements.
const BIG: [usize; 2] = [65_537, 257];
/// n % 4 == 0 shapes take the vec4 kernels, the others the scalar ones.
const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 333], &[5, 12], &[1000, 1000], &BIG];

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

fn check_unary(
    name: &str,
    f: impl Fn(&Tensor) -> portagrad::Result<Tensor>,
    r: impl Fn(f64) -> f64,
    lo: f32,
    hi: f32,
    rtol: f64,
    atol: f64,
) {
    for (k, shape) in SHAPES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = random_vec(n, lo, hi, 11 + k as u64);
        let y = f(&upload(&x, shape)).expect(name);
        assert_eq!(y.shape(), *shape);
        let want: Vec<f64> = x.iter().map(|&v| r(f64::from(v))).collect();
        assert_close(
            &format!("{name} {shape:?}"),
            &y.to_vec().unwrap(),
            &want,
            rtol,
            atol,
        );
    }
}

// Tolerances: exact ops (neg, relu, scalar add/mul) 1e-7 relative; transcendental ops 1e-5
// relative plus 1e-6 absolute (f32 evaluation of exp/log/tanh on the adapter).
#[test]
fn unary_ops_match_cpu() {
    check_unary("neg", |t| t.neg(), r::neg, -3.0, 3.0, 1e-7, 0.0);
    check_unary("relu", |t| t.relu(), r::relu, -3.0, 3.0, 1e-7, 0.0);
    check_unary(
        "add_scalar",
        |t| t.add_scalar(1.5),
        |x| r::add_scalar(x, 1.5),
        -3.0,
        3.0,
        1e-7,
        1e-7,
    );
    check_unary(
        "mul_scalar",
        |t| t.mul_scalar(-0.25),
        |x| r::mul_scalar(x, -0.25),
        -3.0,
        3.0,
        1e-7,
        0.0,
    );
    check_unary("exp", |t| t.exp(), r::exp, -10.0, 10.0, 1e-5, 1e-6);
    check_unary("log", |t| t.log(), r::log, 1e-3, 100.0, 1e-5, 1e-6);
    check_unary("sqrt", |t| t.sqrt(), r::sqrt, 0.0, 100.0, 1e-5, 1e-6);
    check_unary(
        "pow2",
        |t| t.powf(2.0),
        |x| r::powf(x, 2.0),
        -3.0,
        3.0,
        1e-5,
        1e-6,
    );
    check_unary(
        "pow3",
        |t| t.powf(3.0),
        |x| r::powf(x, 3.0),
        -3.0,
        3.0,
        1e-5,
        1e-6,
    );
    check_unary(
        "pow0.5",
        |t| t.powf(0.5),
        |x| r::powf(x, 0.5),
        0.0,
        9.0,
        1e-5,
        1e-6,
    );
    check_unary("gelu", |t| t.gelu(), r::gelu, -6.0, 6.0, 1e-5, 1e-6);
    check_unary(
        "sigmoid",
        |t| t.sigmoid(),
        r::sigmoid,
        -20.0,
        20.0,
        1e-5,
        1e-6,
    );
    check_unary("tanh", |t| t.tanh(), r::tanh, -10.0, 10.0, 1e-5, 1e-6);
    check_unary("abs", |t| t.abs(), r::abs, -3.0, 3.0, 0.0, 0.0);
}

#[test]
fn unary_ops_saturate_on_extreme_inputs() {
    let x = [-100.0f32, -88.0, 88.0, 100.0];
    let t = upload(&x, &[4]);
    let want_s: Vec<f64> = x.iter().map(|&v| r::sigmoid(f64::from(v))).collect();
    assert_close(
        "sigmoid extreme",
        &t.sigmoid().unwrap().to_vec().unwrap(),
        &want_s,
        1e-5,
        1e-30,
    );
    assert_close(
        "tanh extreme",
        &t.tanh().unwrap().to_vec().unwrap(),
        &[-1.0, -1.0, 1.0, 1.0],
        1e-7,
        0.0,
    );
    let want_g: Vec<f64> = x.iter().map(|&v| r::gelu(f64::from(v))).collect();
    assert_close(
        "gelu extreme",
        &t.gelu().unwrap().to_vec().unwrap(),
        &want_g,
        1e-6,
        1e-6,
    );
}

fn unary_case(
    name: &str,
    f: &dyn Fn(&Tensor) -> portagrad::Result<Tensor>,
    fx: &dyn Fn(f64) -> f64,
    dfx: &dyn Fn(f64) -> f64,
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

#[test]
fn unary_gradients() {
    unary_case("neg", &|t| t.neg(), &r::neg, &r::dneg, -2.0, 2.0);
    unary_case(
        "add_scalar",
        &|t| t.add_scalar(3.0),
        &|x| r::add_scalar(x, 3.0),
        &|_| 1.0,
        -2.0,
        2.0,
    );
    unary_case(
        "mul_scalar",
        &|t| t.mul_scalar(-1.5),
        &|x| r::mul_scalar(x, -1.5),
        &|_| -1.5,
        -2.0,
        2.0,
    );
    unary_case("exp", &|t| t.exp(), &r::exp, &r::exp, -3.0, 3.0);
    unary_case("log", &|t| t.log(), &r::log, &r::dlog, 0.1, 5.0);
    unary_case("sqrt", &|t| t.sqrt(), &r::sqrt, &r::dsqrt, 0.1, 5.0);
    unary_case(
        "pow3",
        &|t| t.powf(3.0),
        &|x| r::powf(x, 3.0),
        &|x| r::dpowf(x, 3.0),
        -2.0,
        2.0,
    );
    unary_case(
        "pow1.5",
        &|t| t.powf(1.5),
        &|x| r::powf(x, 1.5),
        &|x| r::dpowf(x, 1.5),
        0.1,
        3.0,
    );
    // relu: inputs kept off the kink at 0 so finite differences are meaningful.
    unary_case(
        "relu",
        &|t| t.relu().and_then(|r| r.add(&t.mul_scalar(0.0)?)),
        &r::relu,
        &r::drelu,
        0.05,
        2.0,
    );
    unary_case("relu-neg", &|t| t.relu(), &r::relu, &r::drelu, -2.0, -0.05);
    unary_case("gelu", &|t| t.gelu(), &r::gelu, &r::dgelu, -4.0, 4.0);
    unary_case(
        "sigmoid",
        &|t| t.sigmoid(),
        &r::sigmoid,
        &r::dsigmoid,
        -6.0,
        6.0,
    );
    unary_case("tanh", &|t| t.tanh(), &r::tanh, &r::dtanh, -3.0, 3.0);
    // abs: each side of the kink at 0, as for relu.
    unary_case("abs+", &|t| t.abs(), &r::abs, &r::dabs, 0.05, 2.0);
    unary_case("abs-", &|t| t.abs(), &r::abs, &r::dabs, -2.0, -0.05);
}

/// At the kink the gradient of |x| is 0 (PyTorch's sign convention), and -0 maps to +0.
#[test]
fn abs_at_zero() {
    let x = upload(&[0.0, -0.0, -1.5, 2.0, f32::NEG_INFINITY], &[5]).with_grad();
    let y = x.abs().unwrap();
    assert_eq!(y.to_vec().unwrap(), [0.0, 0.0, 1.5, 2.0, f32::INFINITY]);
    assert!(y.to_vec().unwrap()[1].is_sign_positive());
    let grads = y.sum().unwrap().backward().unwrap();
    let g = grads.get(&x).expect("x has a gradient").to_vec().unwrap();
    assert_eq!(g, [0.0, 0.0, -1.0, 1.0, -1.0]);
    let want: Vec<f32> = [0.0, -0.0, -1.5, 2.0, f64::NEG_INFINITY]
        .iter()
        .map(|&v| r::dabs(v) as f32)
        .collect();
    assert_eq!(g, want);
}
