//! Custom WGSL ops: forward and gradient against f64 references (kernel and closure
//! backwards), recording on the shared batch, the pipeline cache, and errors for bad WGSL,
//! wrong shapes, counts and element types.

use portagrad::custom::{CustomOp, groups_1d};
use portagrad::testing::{GradCheck, assert_close, random_vec, shared_device};
use portagrad::{DType, Error, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

const SWIGLU: &str = r#"
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> ga: array<f32>;
@group(0) @binding(6) var<storage, read_write> gb: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    out[i] = a[i] / (1.0 + exp(-a[i])) * b[i];
}

// Two passes, one gradient each (backward entry points run in order).
@compute @workgroup_size(64)
fn backward_a(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    let s = 1.0 / (1.0 + exp(-a[i]));
    ga[i] = g[i] * b[i] * (s + a[i] * s * (1.0 - s));
}

@compute @workgroup_size(64)
fn backward_b(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    gb[i] = g[i] * a[i] / (1.0 + exp(-a[i]));
}
"#;

/// Squared ReLU, forward only in WGSL; its backward composes built-in ops.
const SQRELU: &str = r#"
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    let r = max(x[i], 0.0);
    y[i] = r * r;
}
"#;

fn grid(shapes: &[&[usize]], _: &Params) -> Result<[u32; 3]> {
    groups_1d(shapes[0].iter().product(), 64)
}

fn swiglu_op() -> CustomOp<Params> {
    CustomOp::builder("swiglu", SWIGLU)
        .inputs(2)
        .outputs(|s| {
            if s[0] == s[1] {
                Ok(vec![s[0].to_vec()])
            } else {
                Err(format!("a {:?} and b {:?} differ", s[0], s[1]))
            }
        })
        .forward("forward", grid)
        .backward("backward_a", grid)
        .backward("backward_b", grid)
        .build()
        .expect("swiglu registers")
}

fn sqrelu_op() -> CustomOp<Params> {
    CustomOp::builder("squared_relu", SQRELU)
        .forward("main", grid)
        .backward_with(|a| {
            // d/dx relu(x)^2 = 2 relu(x)
            let dx = a.inputs[0].relu()?.mul_scalar(2.0)?.mul(a.grad)?;
            Ok(vec![Some(dx)])
        })
        .build()
        .expect("squared_relu registers")
}

fn n_of(t: &Tensor) -> Params {
    Params {
        n: t.numel() as u32,
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
fn swiglu_forward_and_kernel_backward() {
    let op = swiglu_op();
    let fwd = |x: &[Vec<f64>]| -> Vec<f64> {
        x[0].iter().zip(&x[1]).map(|(&a, &b)| silu(a) * b).collect()
    };
    let bwd = |x: &[Vec<f64>], g: &[f64]| -> Vec<Vec<f64>> {
        let mut ga = Vec::new();
        let mut gb = Vec::new();
        for ((&a, &b), &g) in x[0].iter().zip(&x[1]).zip(g) {
            let s = 1.0 / (1.0 + (-a).exp());
            ga.push(g * b * (s + a * s * (1.0 - s)));
            gb.push(g * silu(a));
        }
        vec![ga, gb]
    };
    let gpu = |t: &[Tensor]| op.apply(&[&t[0], &t[1]], &n_of(&t[0]));
    // Odd sizes (not a multiple of the workgroup), with and without an analytic backward.
    for shape in [&[1usize][..], &[3, 37], &[2, 5, 67]] {
        GradCheck::new("swiglu", &shared_device())
            .input(shape, -3.0, 3.0)
            .input(shape, -2.0, 2.0)
            .tolerances(1e-5, 1e-4)
            .cpu_backward(&bwd)
            .assert(&gpu, &fwd);
        GradCheck::new("swiglu fd", &shared_device())
            .input(shape, -3.0, 3.0)
            .input(shape, -2.0, 2.0)
            .tolerances(1e-5, 1e-4)
            .assert(&gpu, &fwd);
    }
    // A constant input gets no gradient.
    GradCheck::new("swiglu const b", &shared_device())
        .input(&[4, 9], -3.0, 3.0)
        .constant(&[4, 9], -2.0, 2.0)
        .tolerances(1e-5, 1e-4)
        .assert(&gpu, &fwd);
}

#[test]
fn squared_relu_closure_backward() {
    let op = sqrelu_op();
    GradCheck::new("squared_relu", &shared_device())
        // Away from the kink at 0 is not needed: the derivative is continuous there.
        .input(&[5, 41], -2.0, 2.0)
        .tolerances(1e-5, 1e-4)
        .cpu_backward(&|x, g| {
            vec![
                x[0].iter()
                    .zip(g)
                    .map(|(&x, &g)| 2.0 * x.max(0.0) * g)
                    .collect(),
            ]
        })
        .assert(&|t| op.apply(&[&t[0]], &n_of(&t[0])), &|x| {
            x[0].iter().map(|&v| v.max(0.0).powi(2)).collect()
        });
}

#[test]
fn records_on_the_shared_batch_and_caches_pipelines() {
    // Its own device: the counters of the shared one move with the other tests' work.
    let dev = portagrad::testing::device().unwrap_or_else(|e| panic!("{e}"));
    let op = swiglu_op();
    let xs = random_vec(300, -2.0, 2.0, 5);
    let a = Tensor::from_slice(&dev, &xs, &[300]).unwrap();
    // Warm the cache, then count.
    op.apply(&[&a, &a], &n_of(&a))
        .unwrap()
        .tanh()
        .unwrap()
        .to_vec()
        .unwrap();
    dev.sync().unwrap();
    dev.reset_stats();
    let mut y = a.clone();
    for _ in 0..5 {
        y = op.apply(&[&y, &a], &n_of(&a)).unwrap().tanh().unwrap();
    }
    let s = dev.stats();
    assert_eq!(s.submits, 0, "custom ops record without submitting");
    assert_eq!(s.dispatches, 10);
    assert_eq!(
        s.pipelines_compiled, 0,
        "the pipeline is cached after the first use"
    );
    let mut want: Vec<f64> = xs.iter().map(|&v| f64::from(v)).collect();
    for _ in 0..5 {
        want = want
            .iter()
            .zip(&xs)
            .map(|(&y, &a)| (silu(y) * f64::from(a)).tanh())
            .collect();
    }
    assert_close("chained", &y.to_vec().unwrap(), &want, 1e-4, 1e-5);
    assert_eq!(dev.stats().submits, 1);

    // Registering the same source again shares the cached module; another source does not.
    let again = swiglu_op();
    assert_eq!(again.shader_name(), op.shader_name());
    let other = CustomOp::<Params>::builder("swiglu", &SWIGLU.replace("* b[i]", "* b[i] * 2.0"))
        .inputs(2)
        .forward("forward", grid)
        .build()
        .unwrap();
    assert_ne!(other.shader_name(), op.shader_name());
    let got = other.apply(&[&a, &a], &n_of(&a)).unwrap().to_vec().unwrap();
    let base = op.apply(&[&a, &a], &n_of(&a)).unwrap().to_vec().unwrap();
    for (o, b) in got.iter().zip(&base) {
        assert!((o - 2.0 * b).abs() <= 1e-5 * b.abs().max(1.0));
    }
}

#[test]
fn bad_wgsl_is_an_error() {
    let e = CustomOp::<Params>::builder("broken", "fn forward( { oops")
        .forward("forward", grid)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("does not parse"), "{e}");

    // Parses but does not validate (an array in a uniform needs a 16-byte stride).
    let src = SQRELU.replace(
        "struct Params { n: u32 }",
        "struct Params { n: u32, v: array<f32, 3> }",
    );
    let e = CustomOp::<Params>::builder("ill_typed", &src)
        .forward("main", grid)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("does not validate"), "{e}");

    let e = CustomOp::<Params>::builder("no_entry", SQRELU)
        .forward("forward", grid)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("no entry point \"forward\""), "{e}");

    let e = CustomOp::<Params>::builder("no_forward", SQRELU)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("no forward"), "{e}");
}

#[test]
fn device_side_mismatch_is_a_gpu_error() {
    // Valid WGSL whose Params (32 bytes) is larger than the Rust struct (4 -> 16 bytes bound):
    // only the device can tell, and it must come back as an error, not a panic.
    let src = SQRELU.replace(
        "struct Params { n: u32 }",
        "struct Params { n: u32, pad: vec3<u32>, more: vec4<f32> }",
    );
    let op = CustomOp::<Params>::builder("too_big_params", &src)
        .forward("main", grid)
        .build()
        .unwrap();
    // A device of its own: device errors are reported per device, and the other tests of this
    // binary share one.
    let dev = portagrad::testing::device().unwrap();
    let x = Tensor::from_slice(&dev, &[1.0, 2.0], &[2]).unwrap();
    let r = op.apply(&[&x], &n_of(&x)).and_then(|y| y.to_vec());
    assert!(matches!(r, Err(Error::Gpu(_))), "{r:?}");
    // The device stays usable.
    assert_eq!(x.add(&x).unwrap().to_vec().unwrap(), vec![2.0, 4.0]);
}

#[test]
fn shape_count_and_dtype_errors() {
    let dev = shared_device();
    let op = swiglu_op();
    let a = Tensor::from_slice(&dev, &[1.0; 6], &[2, 3]).unwrap();
    let b = Tensor::from_slice(&dev, &[1.0; 6], &[3, 2]).unwrap();
    let e = op.apply(&[&a, &b], &n_of(&a)).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "swiglu", .. }), "{e}");
    assert!(e.to_string().contains("differ"), "{e}");

    let e = op.apply(&[&a], &n_of(&a)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("takes 2 input(s), got 1"), "{e}");

    let ids = Tensor::from_u32(&dev, &[0; 6], &[2, 3]).unwrap();
    let e = op.apply(&[&a, &ids], &n_of(&a)).unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");

    // A dtype the op declares is accepted (and gets no gradient).
    let src = SQRELU
        .replace(
            "var<storage, read> x: array<f32>",
            "var<storage, read> x: array<u32>",
        )
        .replace("max(x[i], 0.0)", "f32(x[i])");
    let op = CustomOp::<Params>::builder("u32_square", &src)
        .input_dtypes(&[DType::U32])
        .forward("main", grid)
        .build()
        .unwrap();
    let ids = Tensor::from_u32(&dev, &[1, 2, 3], &[3]).unwrap();
    assert_eq!(
        op.apply(&[&ids], &n_of(&ids)).unwrap().to_vec().unwrap(),
        vec![1.0, 4.0, 9.0]
    );

    // No backward registered: the forward works, backward says so.
    let op = CustomOp::<Params>::builder("fwd_only", SQRELU)
        .forward("main", grid)
        .build()
        .unwrap();
    let x = Tensor::from_slice(&dev, &[1.0, -1.0], &[2])
        .unwrap()
        .with_grad();
    let y = op.apply(&[&x], &n_of(&x)).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![1.0, 0.0]);
    let e = y.sum().unwrap().backward().unwrap_err();
    assert!(e.to_string().contains("no backward"), "{e}");
}

#[test]
fn binding_mistake_names_the_convention() {
    // An input declared read_write: the layout binds inputs read-only.
    let src = SQRELU.replace("var<storage, read> x", "var<storage, read_write> x");
    let op = CustomOp::<Params>::builder("rw_input", &src)
        .forward("main", grid)
        .build()
        .unwrap();
    // A device of its own: device errors are reported per device, and the other tests of this
    // binary share one.
    let dev = portagrad::testing::device().unwrap();
    let x = Tensor::from_slice(&dev, &[1.0, 2.0], &[2]).unwrap();
    let e = op
        .apply(&[&x], &n_of(&x))
        .and_then(|y| y.to_vec())
        .unwrap_err();
    println!("{e}");
    assert!(matches!(e, Error::Gpu(_)), "{e}");
    assert!(e.to_string().contains("rw_input"), "{e}");
    assert!(e.to_string().contains("1 = inputs (read)"), "{e}");
}

#[test]
fn grids_past_65535_workgroups_fold_into_2d() {
    let op = sqrelu_op();
    assert_eq!(groups_1d(65_535 * 64, 64).unwrap(), [65_535, 1, 1]);
    let n = 65_535 * 64 + 100;
    let g = groups_1d(n, 64).unwrap();
    assert_eq!(g[1], 2, "{g:?}");
    let dev = shared_device();
    let xs: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let x = Tensor::from_slice(&dev, &xs, &[n]).unwrap();
    let y = op.apply(&[&x], &n_of(&x)).unwrap().to_vec().unwrap();
    let want: Vec<f64> = xs.iter().map(|&v| f64::from(v.max(0.0)).powi(2)).collect();
    assert_close("folded grid", &y, &want, 0.0, 0.0);
    let e = portagrad::testing::compare_tensor(&x, &want, 0.0, 0.0).unwrap_err();
    assert!(e.contains("worst at"), "{e}");
    assert!(groups_1d(10, 0).is_err());
}

/// Two outputs (exp(x) and x^2); the backward reads output 0 back instead of recomputing it.
const EXP2: &str = r#"
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> sq: array<f32>;
@group(0) @binding(4) var<storage, read> gy: array<f32>;
@group(0) @binding(5) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    y[i] = exp(x[i]);
    sq[i] = x[i] * x[i];
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    if (i >= p.n) { return; }
    gx[i] = y[i] * gy[i];
}
"#;

#[test]
fn several_outputs_and_a_backward_that_reads_them() {
    let op = CustomOp::<Params>::builder("exp_and_square", EXP2)
        .outputs(|s| Ok(vec![s[0].to_vec(), s[0].to_vec()]))
        .forward("forward", grid)
        .backward("backward", grid)
        .build()
        .unwrap();
    let dev = shared_device();
    let xs = random_vec(70, -2.0, 2.0, 9);
    let x = Tensor::from_slice(&dev, &xs, &[7, 10]).unwrap().with_grad();
    let outs = op.apply_all(&[&x], &n_of(&x)).unwrap();
    assert_eq!(outs.len(), 2);
    let x64: Vec<f64> = xs.iter().map(|&v| f64::from(v)).collect();
    let e: Vec<f64> = x64.iter().map(|v| v.exp()).collect();
    assert_close("exp", &outs[0].to_vec().unwrap(), &e, 1e-6, 1e-7);
    let sq: Vec<f64> = x64.iter().map(|v| v * v).collect();
    assert_close("square", &outs[1].to_vec().unwrap(), &sq, 1e-6, 1e-7);
    assert!(outs[0].requires_grad() && !outs[1].requires_grad());
    let g = outs[0].sum().unwrap().backward().unwrap();
    assert_close(
        "d exp",
        &g.get(&x).unwrap().to_vec().unwrap(),
        &e,
        1e-6,
        1e-7,
    );

    GradCheck::new("exp_and_square", &dev)
        .input(&[3, 33], -2.0, 2.0)
        .tolerances(1e-5, 1e-4)
        .assert(&|t| op.apply(&[&t[0]], &n_of(&t[0])), &|x| {
            x[0].iter().map(|v| v.exp()).collect()
        });
}
