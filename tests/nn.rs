//! Modules and the autograd contract they rely on: the transposed-A matmul that the linear
//! backward uses for dW = xᵀ·dz, checked on non-square shapes against the CPU; the `Linear`
//! layer's gradients against an f64 reference; a backward that returns a wrongly shaped
//! gradient reported as a shape error naming the op and both shapes.

use portagrad::custom::{CustomOp, groups_1d};
use portagrad::nn::{Linear, Module};
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Activation, Error, Result, Tensor};

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

fn read(t: &Tensor) -> Vec<f32> {
    t.to_vec().expect("readback")
}

/// `aᵀ · b` per batch in f64: `a` (batch, K, M), `b` (batch, K, N) -> (batch, M, N).
fn transposed_a_product(
    a: &[f32],
    b: &[f32],
    batch: usize,
    k: usize,
    m: usize,
    n: usize,
) -> Vec<f64> {
    let mut out = vec![0f64; batch * m * n];
    for s in 0..batch {
        let (a, b) = (&a[s * k * m..], &b[s * k * n..]);
        for i in 0..m {
            for j in 0..n {
                out[(s * m + i) * n + j] = (0..k)
                    .map(|p| f64::from(a[p * m + i]) * f64::from(b[p * n + j]))
                    .sum();
            }
        }
    }
    out
}

#[test]
fn matmul_t_transposed_a_matches_the_cpu_on_non_square_shapes() {
    // (batch, K, M, N): every dim different from the others, vec4-aligned and not, small M
    // (row kernels) and large (tiled/subgroup kernels), one batched.
    let cases = [
        (1, 5, 3, 7),
        (1, 40, 33, 28),
        (1, 64, 48, 20),
        (1, 17, 2, 130),
        (1, 128, 96, 64),
        (1, 300, 12, 5),
        (3, 9, 6, 11),
    ];
    for (i, &(batch, k, m, n)) in cases.iter().enumerate() {
        let av = random_vec(batch * k * m, -1.0, 1.0, 100 + i as u64);
        let bv = random_vec(batch * k * n, -1.0, 1.0, 200 + i as u64);
        let (ash, bsh): (Vec<usize>, Vec<usize>) = if batch == 1 {
            (vec![k, m], vec![k, n])
        } else {
            (vec![batch, k, m], vec![batch, k, n])
        };
        let y = upload(&av, &ash)
            .matmul_t(&upload(&bv, &bsh), true, false)
            .expect("matmul_t");
        let mut want_shape = if batch == 1 { vec![] } else { vec![batch] };
        want_shape.extend([m, n]);
        assert_eq!(y.shape(), want_shape.as_slice(), "case {i}");
        assert_close(
            &format!("matmul_t(a, true, false), a {ash:?}, b {bsh:?}"),
            &read(&y),
            &transposed_a_product(&av, &bv, batch, k, m, n),
            1e-4,
            1e-5 * k as f64,
        );
    }
}

/// The `Linear` layer's gradients of `sum(y · c)` against f64: dz = act'(z)·c, dW = xᵀ·dz,
/// db = column sums of dz, dx = dz·Wᵀ, with rows, in and out all different.
fn check_linear_gradients(act: Activation) {
    let (outer, rows, fin, fout) = (2, 7, 5, 3);
    let r = outer * rows;
    let xv = random_vec(r * fin, -1.0, 1.0, 1);
    let wv = random_vec(fin * fout, -1.0, 1.0, 2);
    let bv = random_vec(fout, -0.5, 0.5, 3);
    let cv = random_vec(r * fout, -1.0, 1.0, 4);
    let x = upload(&xv, &[outer, rows, fin]).with_grad();
    let w = upload(&wv, &[fin, fout]).with_grad();
    let b = upload(&bv, &[fout]).with_grad();
    let layer = Linear::from_parts(w.clone(), Some(b.clone()))
        .expect("linear")
        .activation(act);
    let c = upload(&cv, &[outer, rows, fout]);
    let y = layer.forward(&x).expect("forward");
    let grads = y
        .mul(&c)
        .and_then(|l| l.sum())
        .expect("loss")
        .backward()
        .expect("backward");

    let f = |v: &[f32], i: usize| f64::from(v[i]);
    let mut dz = vec![0f64; r * fout];
    for i in 0..r {
        for j in 0..fout {
            let z = f(&bv, j)
                + (0..fin)
                    .map(|p| f(&xv, i * fin + p) * f(&wv, p * fout + j))
                    .sum::<f64>();
            let d = match act {
                Activation::Relu if z <= 0.0 => 0.0,
                _ => 1.0,
            };
            dz[i * fout + j] = d * f(&cv, i * fout + j);
        }
    }
    let dw: Vec<f64> = (0..fin * fout)
        .map(|e| {
            (0..r)
                .map(|i| f(&xv, i * fin + e / fout) * dz[i * fout + e % fout])
                .sum()
        })
        .collect();
    let db: Vec<f64> = (0..fout)
        .map(|j| (0..r).map(|i| dz[i * fout + j]).sum())
        .collect();
    let dx: Vec<f64> = (0..r * fin)
        .map(|e| {
            (0..fout)
                .map(|j| dz[(e / fin) * fout + j] * f(&wv, (e % fin) * fout + j))
                .sum()
        })
        .collect();
    let got = |t: &Tensor, shape: &[usize]| {
        let g = grads.get(t).expect("a gradient");
        assert_eq!(g.shape(), shape);
        read(g)
    };
    assert_close(
        &format!("{act:?} dW"),
        &got(&w, &[fin, fout]),
        &dw,
        1e-5,
        1e-5,
    );
    assert_close(&format!("{act:?} db"), &got(&b, &[fout]), &db, 1e-5, 1e-5);
    assert_close(
        &format!("{act:?} dx"),
        &got(&x, &[outer, rows, fin]),
        &dx,
        1e-5,
        1e-5,
    );
}

#[test]
fn linear_gradients_on_non_square_shapes() {
    check_linear_gradients(Activation::None);
    check_linear_gradients(Activation::Relu);
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

const COPY: &str = r#"
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    y[i] = x[i];
}
"#;

#[test]
fn a_wrongly_shaped_gradient_is_a_shape_error_naming_the_op() -> Result<()> {
    // A closure backward that returns a (2) gradient for a (3) input: the caller's bug, so a
    // shape error, not a GPU error.
    let op = CustomOp::<Params>::builder("bad_grad", COPY)
        .forward("main", |s, _| groups_1d(s[0].iter().product(), 64))
        .backward_with(|a| Ok(vec![Some(Tensor::zeros(a.grad.device(), &[2])?)]))
        .build()?;
    let x = upload(&[1.0, 2.0, 3.0], &[3]).with_grad();
    let y = op.apply(&[&x], &Params { n: 3 })?;
    match y.sum()?.backward() {
        Err(Error::Shape { op, message }) => {
            assert_eq!(op, "bad_grad");
            assert!(
                message.contains("[2]") && message.contains("[3]"),
                "message names both shapes: {message}"
            );
        }
        other => panic!("expected Error::Shape from bad_grad, got {other:?}"),
    }
    Ok(())
}
