//! The broadcasting binary ops (add, sub, mul, div) and `broadcast_to`: the GPU forward
//! against `testing::reference::elementwise` (NumPy rules, up to rank 8, past 65,535 × 256
//! elements), shape errors, and the backward that sums over the broadcast axes (`sum_to`) in
//! each of its layouts, over more rows than one shader loop may run.

mod common;

use common::{check_grad, constant, f64s, inp, up};
use portagrad::testing::reference::elementwise as r;
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Error, Tensor};

/// Past 65,535 workgroups of 256 invocations: 16,843,009 elements.
const BIG: [usize; 2] = [65_537, 257];

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

type F = fn(f64, f64) -> f64;
type DF = fn(f64, f64) -> (f64, f64);
/// Each binary op: name, reference forward, reference partials.
const OPS: [(&str, F, DF); 4] = [
    ("add", r::add, r::dadd),
    ("sub", r::sub, r::dsub),
    ("mul", r::mul, r::dmul),
    ("div", r::div, r::ddiv),
];

fn gpu(name: &str, a: &Tensor, b: &Tensor) -> portagrad::Result<Tensor> {
    match name {
        "add" => a.add(b),
        "sub" => a.sub(b),
        "mul" => a.mul(b),
        _ => a.div(b),
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[1], &[1]),
        (&[7], &[7]),
        (&[3, 333], &[3, 333]),
        (&BIG, &BIG),
        (&[5, 12], &[5, 12]),
        (&[1000, 1000], &[1000, 1000]),
        (&[7, 1], &[1, 5]),
        (&[2, 3, 4], &[4]),
        (&[4], &[2, 3, 4]),
        (&[5, 1, 3], &[1, 4, 1]),
        (&[], &[7]),
        (&[3, 1, 333], &[3, 2, 333]),
        (&BIG, &[257]),
        (&[2, 1, 3, 1, 2, 1, 2, 1, 3], &[1, 2, 1, 2, 1, 2, 1, 3][..]),
    ];
    for (k, (sa, sb)) in cases.iter().enumerate() {
        if sa.len().max(sb.len()) > 8 {
            let a = upload(&random_vec(sa.iter().product(), -1.0, 1.0, 1), sa);
            let b = upload(&random_vec(sb.iter().product(), -1.0, 1.0, 2), sb);
            assert!(
                matches!(a.add(&b), Err(Error::Shape { .. })),
                "rank 9 must be rejected"
            );
            continue;
        }
        let a = random_vec(sa.iter().product(), -2.0, 2.0, 100 + k as u64);
        // Divisors kept away from zero.
        let b: Vec<f32> = random_vec(sb.iter().product(), 0.5, 2.0, 200 + k as u64)
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 2 == 0 { v } else { -v })
            .collect();
        let (ta, tb) = (upload(&a, sa), upload(&b, sb));
        let (a64, b64) = (f64s(&a), f64s(&b));
        for (name, f, _) in OPS {
            let got = gpu(name, &ta, &tb).unwrap();
            let (shape, want) = r::binary(&a64, sa, &b64, sb, &f);
            assert_eq!(got.shape(), &shape[..], "{name} {sa:?} {sb:?}");
            assert_close(
                &format!("{name} {sa:?} {sb:?}"),
                &got.to_vec().unwrap(),
                &want,
                1e-6,
                0.0,
            );
        }
    }
}

#[test]
fn binary_shape_errors_name_both_shapes() {
    let a = upload(&[0.0; 6], &[2, 3]);
    let b = upload(&[0.0; 4], &[4]);
    let err = a.add(&b).unwrap_err().to_string();
    assert!(
        err.contains("[2, 3]") && err.contains("[4]") && err.contains("add"),
        "{err}"
    );
}

#[test]
fn binary_gradients_reduce_over_broadcast_axes() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[7], &[7]),
        (&[3, 5], &[5]),
        (&[4, 1, 3], &[1, 5, 1]),
        (&[1], &[2, 3]),
        (&[6, 4], &[6, 1]),
    ];
    for &(sa, sb) in cases {
        for (op, f, df) in OPS {
            check_grad(
                &format!("{op} {sa:?} {sb:?}"),
                &[inp(sa, -2.0, 2.0), inp(sb, 0.5, 2.0)],
                &|t| gpu(op, &t[0], &t[1]),
                &|x| r::binary(&x[0], sa, &x[1], sb, &f).1,
                &|x, g| {
                    let (ga, gb) = r::binary_backward(&x[0], sa, &x[1], sb, g, &df);
                    vec![ga, gb]
                },
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn bias_gradient_over_more_rows_than_one_loop_may_run() {
    // llvmpipe ends any shader loop after 65,535 iterations; the broadcast-gradient reduction
    // must chunk its work so 70,001 rows still sum correctly.
    let rows = 70_001;
    check_grad(
        "bias over 70001 rows",
        &[constant(&[rows, 3], -1.0, 1.0), inp(&[3], -1.0, 1.0)],
        &|t| t[0].add(&t[1]),
        &|x| r::binary(&x[0], &[rows, 3], &x[1], &[3], &r::add).1,
        &|_, g| vec![vec![0.0; rows * 3], r::sum_to(g, &[rows, 3], &[3])],
        1e-5,
        1e-4,
    );
}

#[test]
fn broadcast_to_gradient() {
    check_grad(
        "broadcast_to",
        &[inp(&[3, 1], -1.0, 1.0)],
        &|t| t[0].broadcast_to(&[2, 3, 4]),
        &|x| r::broadcast_to(&x[0], &[3, 1], &[2, 3, 4]),
        &|_, g| vec![r::sum_to(g, &[2, 3, 4], &[3, 1])],
        0.0,
        1e-5,
    );
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
        let want = r::sum_to(&f64s(&g), &shape, &[n]);
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
        assert_close(
            &format!("broadcast_to {src:?} -> {dst:?}"),
            &got,
            &r::broadcast_to(&f64s(&x), src, dst),
            0.0,
            0.0,
        );
    }
}
