//! Matmul kernels against a plain-Rust reference that accumulates in f64.
//!
//! Tolerance: `|got - want| <= 1e-5 * |want| + 2e-6 * K` (inputs in [-1, 1)). f32 accumulation
//! over K products of magnitude <= 1 has a rounding error that grows at most like K * 2^-24
//! (about 6e-8 * K) and typically like sqrt(K) * 2^-24; the absolute term leaves headroom for
//! outputs that cancel to near zero, where a relative bound says nothing.
//!
//! Every kernel variant is forced on every case (`force_kernel`), not only the one the
//! adapter rule picks, so the workgroup-memory kernel and the GEMV path are tested here too.

use portagrad::testing::reference::matmul::{epilogue, gelu as gelu_ref, matmul as reference};
use portagrad::testing::{
    Family, KernelGuard, assert_close, force_kernel, random_vec, shared_device,
};
use portagrad::{Activation, DType, Device, Error, Tensor, WeightLayout};

/// Tests here run one at a time: concurrent `Device::poll` waits from several threads can trip
/// an assertion inside wgpu-core 30 ("If the queue is empty, the current submission index ...
/// should be at least the wait submission index", fixed upstream by gfx-rs/wgpu#9958).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every kernel configuration, forced whatever the adapter rule would pick: the rule's choice,
/// the tiled kernel with 4x4 and 8x4 register blocks, the 128 x 128 one, split-K, the rows (GEMV) kernel with the GPU and
/// the CPU workgroup shapes, and where the subgroup kernel applies, its entry point for this
/// adapter's subgroup size and the one for the *other* size, whose in-kernel fallback must
/// then give the same results.
fn kernels() -> Vec<&'static str> {
    let dev = shared_device();
    let mut k = vec![
        "auto", "tiled4", "tiled8", "wide", "gemv_gpu", "rows_gpu", "rows_cpu",
    ];
    if dev.has_subgroups() {
        match dev.info().subgroup_sizes {
            Some((8, 8)) => k.extend(["subgroup", "subgroup16"]),
            Some((16, 16)) => k.extend(["subgroup", "subgroup8"]),
            _ => {}
        }
    }
    k
}

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

/// A device of the test's own, for tests that count dispatches (tests run in parallel and
/// share `shared_device`).
fn own_device() -> Device {
    portagrad::testing::device().expect("device")
}

fn tol(k: usize) -> (f64, f64) {
    (1e-5, 2e-6 * k.max(1) as f64)
}

/// Force matmul kernel `kernel` on this thread while the guard lives.
fn force(kernel: &str) -> KernelGuard {
    force_kernel(Family::Matmul, kernel).unwrap_or_else(|e| panic!("{kernel}: {e}"))
}

/// Check `op(A)·op(B)` for shapes `sa`, `sb` with every kernel.
fn check(sa: &[usize], sb: &[usize], ta: bool, tb: bool, seed: u64) {
    let av = random_vec(sa.iter().product(), -1.0, 1.0, seed);
    let bv = random_vec(sb.iter().product(), -1.0, 1.0, seed + 1);
    let (want_shape, want) = reference(&av, sa, &bv, sb, ta, tb);
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let (a, b) = (upload(&av, sa), upload(&bv, sb));
    let (rtol, atol) = tol(k);
    for kernel in kernels() {
        let _kernel = force(kernel);
        let (c, ran) = a
            .matmul_t_with_entry(&b, ta, tb)
            .unwrap_or_else(|e| panic!("{kernel} {sa:?}·{sb:?}: {e}"));
        assert_eq!(c.shape(), want_shape.as_slice(), "{kernel} {sa:?}·{sb:?}");
        let what = format!(
            "{kernel} ({ran:?}) {sa:?}{} · {sb:?}{}",
            if ta { "ᵀ" } else { "" },
            if tb { "ᵀ" } else { "" }
        );
        assert_close(&what, &c.to_vec().unwrap(), &want, rtol, atol);
    }
}

/// (M, K, N) of a plain product.
fn check_mkn(m: usize, k: usize, n: usize, seed: u64) {
    check(&[m, k], &[k, n], false, false, seed);
}

#[test]
fn tiny_and_odd_shapes() {
    let _serial = serial();
    check_mkn(1, 1, 1, 1);
    check_mkn(7, 13, 5, 2);
    check_mkn(127, 129, 65, 3);
}

#[test]
fn aligned_shapes_that_are_not_tile_multiples() {
    let _serial = serial();
    // Multiples of 4 take the vec4 entry points; none is a multiple of a tile.
    check_mkn(68, 44, 36, 4);
    check_mkn(4, 8, 12, 5);
    check_mkn(132, 20, 200, 6);
    // Several 128 x 128 tiles with ragged edges, K not a multiple of the 16-deep slices.
    check_mkn(260, 52, 388, 60);
}

#[test]
fn gemv_decode_shape() {
    let _serial = serial();
    check_mkn(1, 768, 2304, 7);
    check_mkn(3, 65, 131, 8);
}

#[test]
fn large_odd_shape() {
    let _serial = serial();
    check_mkn(513, 1025, 257, 9);
}

#[test]
fn transposed_forms() {
    let _serial = serial();
    // Unaligned (scalar entries) and aligned (vec4 entries), neither a tile multiple.
    for (i, &(m, k, n)) in [
        (67usize, 45usize, 33usize),
        (68, 44, 36),
        (132, 20, 136),
        (5, 12, 70),
        (3, 16, 9),
    ]
    .iter()
    .enumerate()
    {
        let seed = 20 + 3 * i as u64;
        check(&[k, m], &[k, n], true, false, seed);
        check(&[m, k], &[n, k], false, true, seed + 1);
        check(&[k, m], &[n, k], true, true, seed + 2);
    }
}

#[test]
fn batched_with_broadcast() {
    let _serial = serial();
    // 3-D: a 2-D operand shared by every matrix, equal batches, a batch of 1 broadcast.
    check(&[2, 37, 29], &[29, 23], false, false, 40);
    check(&[29, 23], &[3, 23, 17], false, false, 41);
    check(&[3, 37, 29], &[3, 29, 23], false, false, 42);
    check(&[1, 36, 28], &[4, 28, 24], false, false, 43);
    // 4-D: attention-like (B, H) batches broadcasting both ways.
    check(&[2, 1, 17, 19], &[1, 3, 19, 21], false, false, 44);
    check(&[2, 3, 16, 20], &[20, 12], false, false, 45);
    check(&[2, 3, 16, 20], &[2, 3, 16, 20], false, true, 46);
    check(&[2, 3, 20, 16], &[1, 3, 20, 12], true, false, 47);
    check(&[5, 1, 2, 7, 9], &[1, 4, 1, 9, 6], false, false, 48);
    // Batched decode shapes (M <= 4, vec4 operands), B and Bᵀ.
    check(&[3, 2, 8], &[3, 8, 12], false, false, 49);
    check(&[2, 1, 16], &[2, 20, 16], false, true, 51);
}

#[test]
fn batch_grid_folds_past_65535_workgroups() {
    let _serial = serial();
    // 70,000 independent 1x2·2x1 products: one tile each, so every kernel's grid folds to 2-D.
    check(&[70_000, 1, 2], &[70_000, 2, 1], false, false, 50);
}

#[test]
fn long_k_is_split_across_dispatches() {
    let _serial = serial();
    // lavapipe ends an invocation after 65,535 loop iterations, so a K this long is summed
    // over several dispatches; aligned (vec4 entries) and not.
    check(&[70, 40_004], &[40_004, 9], false, false, 55);
    check(&[40_001, 6], &[7, 40_001], true, true, 56);
    check(&[2, 40_000], &[40_000, 12], false, false, 59);
    check(&[1, 40_000], &[9, 40_000], false, true, 61);
    let dev = shared_device();
    let (m, k, n) = (3, 33_333, 5);
    let xv = random_vec(m * k, -1.0, 1.0, 57);
    let wv = random_vec(n * k, -1.0, 1.0, 58);
    let bv = [0.5f32, -0.5, 1.0, -1.0, 0.0];
    let (_, xw) = reference(&xv, &[m, k], &wv, &[n, k], false, true);
    let want: Vec<f64> = xw
        .iter()
        .enumerate()
        .map(|(i, &v)| gelu_ref(v + f64::from(bv[i % n])))
        .collect();
    let x = Tensor::from_slice(&dev, &xv, &[m, k]).unwrap();
    let w = Tensor::from_slice(&dev, &wv, &[n, k]).unwrap();
    let b = Tensor::from_slice(&dev, &bv, &[n]).unwrap();
    let (rtol, atol) = tol(k);
    for kernel in kernels() {
        let _kernel = force(kernel);
        let y = x
            .linear(&w, Some(&b), WeightLayout::OutIn, Activation::Gelu)
            .unwrap();
        assert_close(
            &format!("linear long K {kernel}"),
            &y.to_vec().unwrap(),
            &want,
            rtol,
            atol,
        );
    }
}

#[test]
fn linear_epilogues() {
    let _serial = serial();
    let dev = own_device();
    let upload = |v: &[f32], shape: &[usize]| Tensor::from_slice(&dev, v, shape).unwrap();
    // (x shape, K, N): leading dims flatten into M; aligned and unaligned; M <= 4 (GEMV).
    let cases: [(&[usize], usize); 4] = [
        (&[3, 41, 36], 52),
        (&[2, 7, 37], 50),
        (&[2, 36], 20),
        (&[65], 9),
    ];
    for (ci, &(xs, n)) in cases.iter().enumerate() {
        let k = xs[xs.len() - 1];
        let m: usize = xs[..xs.len() - 1].iter().product();
        let xv = random_vec(m * k, -1.0, 1.0, 60 + ci as u64);
        let wv = random_vec(k * n, -1.0, 1.0, 70 + ci as u64);
        let bv = random_vec(n, -1.0, 1.0, 80 + ci as u64);
        let x = upload(&xv, xs);
        let bias = upload(&bv, &[n]);
        let (rtol, atol) = tol(k);
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let (w, tb) = match layout {
                WeightLayout::InOut => (upload(&wv, &[k, n]), false),
                WeightLayout::OutIn => (upload(&wv, &[n, k]), true),
            };
            let ws: Vec<usize> = w.shape().to_vec();
            let (_, xw) = reference(&xv, &[m, k], &wv, &ws, false, tb);
            for act in [Activation::None, Activation::Relu, Activation::Gelu] {
                for with_bias in [false, true] {
                    let want = epilogue(&xw, n, with_bias.then_some(&bv[..]), act);
                    let mut want_shape = xs[..xs.len() - 1].to_vec();
                    want_shape.push(n);
                    for kernel in kernels() {
                        let _kernel = force(kernel);
                        dev.reset_stats();
                        let y = x
                            .linear(&w, with_bias.then_some(&bias), layout, act)
                            .unwrap();
                        assert_eq!(dev.stats().dispatches, 1, "a dense layer is one dispatch");
                        assert_eq!(y.shape(), want_shape.as_slice());
                        let what = format!(
                            "linear {kernel} x {xs:?} w {ws:?} {layout:?} {act:?} bias {with_bias}"
                        );
                        assert_close(&what, &y.to_vec().unwrap(), &want, rtol, atol);
                    }
                }
            }
        }
    }
}

#[test]
fn public_entry_points_agree_with_the_reference() {
    let _serial = serial();
    let (m, k, n) = (33, 40, 28);
    let av = random_vec(m * k, -1.0, 1.0, 90);
    let bv = random_vec(k * n, -1.0, 1.0, 91);
    let (a, b) = (upload(&av, &[m, k]), upload(&bv, &[k, n]));
    let (_, want) = reference(&av, &[m, k], &bv, &[k, n], false, false);
    let (rtol, atol) = tol(k);
    assert_close(
        "matmul",
        &a.matmul(&b).unwrap().to_vec().unwrap(),
        &want,
        rtol,
        atol,
    );
    // Aᵀ stored as (K, M) via a materialised transpose, then read transposed in place.
    let at = a.transpose().unwrap();
    let bt = b.transpose().unwrap();
    assert_close(
        "matmul_t a",
        &at.matmul_t(&b, true, false).unwrap().to_vec().unwrap(),
        &want,
        rtol,
        atol,
    );
    assert_close(
        "matmul_t b",
        &a.matmul_t(&bt, false, true).unwrap().to_vec().unwrap(),
        &want,
        rtol,
        atol,
    );
    assert_close(
        "matmul_t ab",
        &at.matmul_t(&bt, true, true).unwrap().to_vec().unwrap(),
        &want,
        rtol,
        atol,
    );
    let y = a
        .linear(&b, None, WeightLayout::InOut, Activation::None)
        .unwrap();
    assert_close("linear", &y.to_vec().unwrap(), &want, rtol, atol);
}

#[test]
fn zero_sized_dimensions() {
    let _serial = serial();
    let dev = own_device();
    let upload = |v: &[f32], shape: &[usize]| Tensor::from_slice(&dev, v, shape).unwrap();
    for kernel in kernels() {
        let _kernel = force(kernel);
        // K == 0: zeros of the right shape.
        let a = Tensor::zeros(&dev, &[3, 0]).unwrap();
        let b = Tensor::zeros(&dev, &[0, 5]).unwrap();
        let (c, _) = a.matmul_t_with_entry(&b, false, false).unwrap();
        assert_eq!(c.shape(), &[3, 5]);
        assert_eq!(c.to_vec().unwrap(), vec![0.0; 15], "{kernel}");
        // K == 0 with a bias: act(bias) on every row.
        let bias = upload(&[-1.0, 2.0, 0.5, -0.25, 3.0], &[5]);
        let y = a
            .linear(&b, Some(&bias), WeightLayout::InOut, Activation::Relu)
            .unwrap();
        let row = [0.0, 2.0, 0.5, 0.0, 3.0];
        assert_eq!(y.to_vec().unwrap(), row.repeat(3), "{kernel}");
        // M == 0, N == 0, an empty batch: empty results, nothing dispatched.
        for (sa, sb, want) in [
            (vec![0, 4], vec![4, 5], vec![0, 5]),
            (vec![3, 4], vec![4, 0], vec![3, 0]),
            (vec![0, 3, 4], vec![4, 5], vec![0, 3, 5]),
        ] {
            let a = Tensor::zeros(&dev, &sa).unwrap();
            let b = Tensor::zeros(&dev, &sb).unwrap();
            dev.reset_stats();
            let (c, ran) = a.matmul_t_with_entry(&b, false, false).unwrap();
            assert_eq!(c.shape(), want.as_slice());
            assert_eq!(ran, None);
            assert_eq!(dev.stats().dispatches, 0);
            assert!(c.to_vec().unwrap().is_empty());
        }
    }
}

fn shape_err(r: portagrad::Result<Tensor>) -> String {
    match r {
        Err(e @ Error::Shape { .. }) => e.to_string(),
        Err(e) => panic!("expected a shape error, got {e:?}"),
        Ok(t) => panic!("expected a shape error, got a tensor {:?}", t.shape()),
    }
}

#[test]
fn bad_shapes_are_errors_naming_both_shapes() {
    let _serial = serial();
    let dev = shared_device();
    let t = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    let msg = shape_err(t(&[4, 3]).matmul(&t(&[5, 2])));
    assert!(msg.starts_with("matmul: "), "{msg}");
    assert!(
        msg.contains("lhs [4, 3] and rhs [5, 2] do not agree on the inner dimension"),
        "{msg}"
    );
    let msg = shape_err(t(&[3]).matmul(&t(&[3, 2])));
    assert!(
        msg.contains("[3]") && msg.contains("[3, 2]") && msg.contains("2 dimensions"),
        "{msg}"
    );
    let msg = shape_err(t(&[2, 4, 3]).matmul(&t(&[3, 3, 2])));
    assert!(
        msg.contains("[2, 4, 3]") && msg.contains("[3, 3, 2]") && msg.contains("broadcast"),
        "{msg}"
    );
    let msg = shape_err(t(&[4, 3]).matmul_t(&t(&[4, 2]), false, true));
    assert!(
        msg.starts_with("matmul_t: ")
            && msg.contains("[4, 3]")
            && msg.contains("[4, 2] (transposed)"),
        "{msg}"
    );
    let msg =
        shape_err(t(&[2, 5]).linear(&t(&[4, 3]), None, WeightLayout::InOut, Activation::None));
    assert!(
        msg.starts_with("linear: ") && msg.contains("[2, 5]") && msg.contains("[4, 3]"),
        "{msg}"
    );
    let msg = shape_err(t(&[2, 4]).linear(
        &t(&[3, 4]),
        Some(&t(&[4])),
        WeightLayout::OutIn,
        Activation::Relu,
    ));
    assert!(
        msg.contains("bias [4]") && msg.contains("[2, 4]") && msg.contains("[3, 4]"),
        "{msg}"
    );
    let msg = shape_err(t(&[2, 4]).linear(&t(&[4]), None, WeightLayout::InOut, Activation::None));
    assert!(msg.contains("[2, 4]") && msg.contains("[4]"), "{msg}");

    let ids = Tensor::from_u32(&dev, &[1, 2, 3, 4], &[2, 2]).unwrap();
    assert!(matches!(
        ids.matmul(&t(&[2, 2])),
        Err(Error::DType { op: "matmul", .. })
    ));
    assert!(matches!(
        t(&[2, 2]).matmul(&ids),
        Err(Error::DType { op: "matmul", .. })
    ));
    assert!(matches!(
        t(&[2, 2]).linear(&ids, None, WeightLayout::InOut, Activation::None),
        Err(Error::DType { op: "linear", .. })
    ));
    let other = portagrad::Device::new().unwrap();
    let far = Tensor::zeros(&other, &[2, 2]).unwrap();
    assert!(matches!(
        t(&[2, 2]).matmul(&far),
        Err(Error::DeviceMismatch { op: "matmul" })
    ));
    assert!(force_kernel(Family::Matmul, "fastest").is_err());
}

/// One kernel of each load path for 16-bit operands (the others differ from these in tile
/// sizes only): every pair's module compiles per kernel, which is what costs time on a CPU
/// adapter.
fn half_kernels() -> Vec<&'static str> {
    kernels()
        .into_iter()
        .filter(|k| !matches!(*k, "tiled8" | "rows_gpu" | "subgroup8" | "subgroup16"))
        .collect()
}

/// Operands of `dtype`: the values as stored (rounded to the type), for the reference.
fn half_operand(v: &[f32], shape: &[usize], dtype: DType) -> (Tensor, Vec<f32>) {
    let t = Tensor::from_slice_as(&shared_device(), v, shape, dtype).unwrap();
    let stored = t.to_vec().unwrap();
    (t, stored)
}

const HALF_PAIRS: [(DType, DType); 5] = [
    (DType::F16, DType::F16),
    (DType::BF16, DType::BF16),
    (DType::F32, DType::F16),
    (DType::F16, DType::F32),
    (DType::BF16, DType::F16),
];

/// 16-bit operands through every kernel form: each product equals the f64 product of the
/// values as stored (the kernels unpack exactly and accumulate in f32), with the f32
/// tolerance; the result is f32.
fn check_half(pairs: &[(DType, DType)], sa: &[usize], sb: &[usize], ta: bool, tb: bool, seed: u64) {
    let av = random_vec(sa.iter().product(), -1.0, 1.0, seed);
    let bv = random_vec(sb.iter().product(), -1.0, 1.0, seed + 1);
    let k = if ta {
        sa[sa.len() - 2]
    } else {
        sa[sa.len() - 1]
    };
    let (rtol, atol) = tol(k);
    for &(da, db) in pairs {
        let (a, a_stored) = half_operand(&av, sa, da);
        let (b, b_stored) = half_operand(&bv, sb, db);
        let (want_shape, want) = reference(&a_stored, sa, &b_stored, sb, ta, tb);
        for kernel in half_kernels() {
            let _kernel = force(kernel);
            let (c, ran) = a
                .matmul_t_with_entry(&b, ta, tb)
                .unwrap_or_else(|e| panic!("{kernel} {da:?}·{db:?}: {e}"));
            assert_eq!((c.shape(), c.dtype()), (want_shape.as_slice(), DType::F32));
            let what = format!("{kernel} ({ran:?}) {da:?} {sa:?} ta {ta} · {db:?} {sb:?} tb {tb}");
            assert_close(&what, &c.to_vec().unwrap(), &want, rtol, atol);
        }
    }
}

#[test]
fn half_operands_in_every_form() {
    let _serial = serial();
    // Every pair on one shape; the others rotate through the pairs.
    check_half(&HALF_PAIRS, &[68, 44], &[44, 36], false, false, 103); // vec4 entries
    let cases: [(&[usize], &[usize], bool, bool); 8] = [
        (&[7, 13], &[13, 5], false, false),
        (&[1, 1], &[1, 1], false, false),
        (&[3, 65], &[65, 131], false, false), // GEMV rows
        (&[37, 45], &[29, 45], false, true),  // A·Bᵀ
        (&[44, 36], &[44, 52], true, false),  // Aᵀ·B, aligned
        (&[45, 37], &[29, 45], true, true),
        (&[2, 3, 9, 11], &[3, 11, 6], false, false), // batched, broadcast
        (&[260, 52], &[52, 388], false, false),      // several wide tiles
    ];
    for (i, (sa, sb, ta, tb)) in cases.into_iter().enumerate() {
        let pair = HALF_PAIRS[i % HALF_PAIRS.len()];
        check_half(&[pair], sa, sb, ta, tb, 110 + i as u64);
    }
}

/// The fused layer with 16-bit x and weight: bias and activation in the epilogue as for f32.
#[test]
fn half_linear_epilogue() {
    let _serial = serial();
    let (m, k, n) = (5, 36, 20);
    let xv = random_vec(m * k, -1.0, 1.0, 120);
    let wv = random_vec(k * n, -1.0, 1.0, 121);
    let bv = random_vec(n, -1.0, 1.0, 122);
    let bias = upload(&bv, &[n]);
    let (rtol, atol) = tol(k);
    for (dx, dw) in HALF_PAIRS {
        let (x, xs) = half_operand(&xv, &[m, k], dx);
        let (w, ws) = half_operand(&wv, &[n, k], dw);
        let (_, xw) = reference(&xs, &[m, k], &ws, &[n, k], false, true);
        for act in [Activation::None, Activation::Gelu] {
            let want = epilogue(&xw, n, Some(&bv), act);
            for kernel in half_kernels() {
                let _kernel = force(kernel);
                let y = x.linear(&w, Some(&bias), WeightLayout::OutIn, act).unwrap();
                let what = format!("linear {kernel} {dx:?}·{dw:?} {act:?}");
                assert_close(&what, &y.to_vec().unwrap(), &want, rtol, atol);
            }
        }
    }
    // The bias stays f32.
    let (x, _) = half_operand(&xv, &[m, k], DType::F16);
    let (w, _) = half_operand(&wv, &[n, k], DType::F16);
    let b16 = bias.to_dtype(DType::F16).unwrap();
    let e = x.linear(&w, Some(&b16), WeightLayout::OutIn, Activation::None);
    assert!(matches!(e, Err(Error::DType { .. })), "{e:?}");
}

/// Mixed precision's shape: f32 parameters cast to f16 for the product. The gradients reach
/// the f32 parameters in f32: dX = dY·Wᵀ and dW = Xᵀ·dY on the 16-bit values, cast back.
#[test]
fn gradients_through_half_operands() {
    let _serial = serial();
    let dev = shared_device();
    let (m, k, n) = (6, 10, 7);
    let xv = random_vec(m * k, -1.0, 1.0, 130);
    let wv = random_vec(k * n, -1.0, 1.0, 131);
    let gv = random_vec(m * n, -1.0, 1.0, 132);
    let x = Tensor::from_slice(&dev, &xv, &[m, k]).unwrap().with_grad();
    let w = Tensor::from_slice(&dev, &wv, &[k, n]).unwrap().with_grad();
    let g = Tensor::from_slice(&dev, &gv, &[m, n]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let (x16, w16) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap());
        let (xs, ws) = (x16.to_vec().unwrap(), w16.to_vec().unwrap());
        let grads = x16.matmul(&w16).unwrap().backward_with(&g).unwrap();
        let gx = grads.get(&x).unwrap();
        let gw = grads.get(&w).unwrap();
        assert_eq!((gx.dtype(), gw.dtype()), (DType::F32, DType::F32));
        // The gradients pass through the 16-bit casts: round the f64 product to the type.
        let round = |v: f64| {
            Tensor::from_slice_as(&dev, &[v as f32], &[1], dtype)
                .unwrap()
                .to_vec()
                .unwrap()[0] as f64
        };
        let (_, want_x) = reference(&gv, &[m, n], &ws, &[k, n], false, true);
        let (_, want_w) = reference(&xs, &[m, k], &gv, &[m, n], true, false);
        // Within one 16-bit rounding of the exact value (the f32 product may round across it).
        let ulp = if dtype == DType::F16 { 1e-3 } else { 8e-3 };
        assert_close(
            &format!("{dtype:?} dX"),
            &gx.to_vec().unwrap(),
            &want_x.iter().map(|&v| round(v)).collect::<Vec<_>>(),
            ulp,
            1e-4,
        );
        assert_close(
            &format!("{dtype:?} dW"),
            &gw.to_vec().unwrap(),
            &want_w.iter().map(|&v| round(v)).collect::<Vec<_>>(),
            ulp,
            1e-4,
        );
    }
}

/// Tensor cores (`coop`, `coop64`, `coop128`: f16 operands on cooperative matrices, f32
/// accumulation). Where the adapter lists cooperative matrices, every form against the f64
/// product of the stored f16 values on awkward shapes (edges of both tile sizes, odd row
/// strides that take the element-wise staging, K not a multiple of the staged depth,
/// transposes, batches with broadcast, the fused epilogue), with the f32 tolerance. Where it
/// does not (lavapipe), forcing the kernel must be an error that says so, not a fallback; with
/// `PORTAGRAD_REQUIRE_COOP=1` (the GPU check script) an adapter without them fails the test.
/// On every adapter with subgroups the same kernels with scalar stand-ins for the matrix
/// operations (`coop_emu16`, `coop_emu8`: both matrix sizes, 64 x 64 tiles; the 128 x 128
/// tiles are the same code with other constants, and their emulation would pass lavapipe's
/// loop limit) run the same cases, so the staging,
/// layouts, bounds and epilogue are checked in CI too.
#[test]
fn cooperative_matrix_kernels() {
    let _serial = serial();
    let dev = shared_device();
    let require = std::env::var("PORTAGRAD_REQUIRE_COOP").is_ok_and(|v| v == "1");
    let f16 = |v: &[f32], shape: &[usize]| half_operand(v, shape, DType::F16);
    let mut kernels: Vec<&str> = Vec::new();
    if dev.info().coop_f16_size().is_some() {
        kernels.extend(["coop64", "coop128", "auto"]);
        // The rule (autotuning off) takes the tensor cores for f16 x f16 past GEMV rows.
        portagrad::testing::configure_matmul_autotune(false, None);
        let (a, _) = f16(&random_vec(40 * 24, -1.0, 1.0, 143), &[40, 24]);
        let (b, _) = f16(&random_vec(24 * 8, -1.0, 1.0, 144), &[24, 8]);
        let ran = a.matmul_t_with_entry(&b, false, false).map(|r| r.1);
        portagrad::testing::reset_matmul_autotune();
        assert_eq!(ran.unwrap(), Some("mm_coop"));
    } else {
        assert!(
            !require,
            "PORTAGRAD_REQUIRE_COOP=1 but adapter {} lists no usable cooperative matrices ({:?})",
            dev.info().name,
            dev.info().cooperative_matrices
        );
        let (a, _) = f16(&random_vec(17 * 9, -1.0, 1.0, 140), &[17, 9]);
        let (b, _) = f16(&random_vec(9 * 13, -1.0, 1.0, 141), &[9, 13]);
        let (bt, _) = f16(&random_vec(9 * 13, -1.0, 1.0, 142), &[13, 9]);
        for kernel in ["coop", "coop64", "coop128"] {
            let _kernel = force(kernel);
            for r in [
                a.matmul(&b),
                a.matmul_t(&bt, false, true),
                a.linear(&b, None, WeightLayout::InOut, Activation::None),
            ] {
                let msg = match r {
                    Err(Error::InvalidArgument { message, .. }) => message,
                    other => panic!(
                        "{kernel} on {}: expected an error, got {other:?}",
                        dev.info().name
                    ),
                };
                assert!(
                    msg.contains("no cooperative matrices") && msg.contains(&dev.info().name),
                    "{kernel}: {msg}"
                );
            }
        }
    }
    if dev.has_subgroups() {
        kernels.extend(["coop_emu16", "coop_emu8"]);
    }
    assert!(
        !kernels.is_empty(),
        "no cooperative kernel of any kind runs on {}",
        dev.info().name
    );
    // (batch A, batch B, M, K, N, trans A, trans B)
    type Case = (
        &'static [usize],
        &'static [usize],
        usize,
        usize,
        usize,
        bool,
        bool,
    );
    let cases: [Case; 9] = [
        (&[], &[], 1, 1, 1, false, false),
        (&[], &[], 17, 9, 13, false, false), // odd K: element-wise staging
        (&[], &[], 65, 34, 130, false, false), // one past a 64 tile, whole words
        (&[], &[], 129, 70, 257, false, false), // past the 128 tile in M and N
        (&[], &[], 37, 45, 29, false, true),
        (&[], &[], 44, 36, 52, true, false),
        (&[], &[], 45, 37, 29, true, true),
        (&[2, 3], &[3], 9, 11, 6, false, false), // batched, B broadcast
        (&[], &[], 70, 301, 66, false, false),   // K over many staged steps
    ];
    for (i, (ba, bb, m, k, n, ta, tb)) in cases.into_iter().enumerate() {
        let mut sa = ba.to_vec();
        sa.extend(if ta { [k, m] } else { [m, k] });
        let mut sb = bb.to_vec();
        sb.extend(if tb { [n, k] } else { [k, n] });
        let (a, a_stored) = f16(
            &random_vec(sa.iter().product(), -1.0, 1.0, 150 + i as u64),
            &sa,
        );
        let (b, b_stored) = f16(
            &random_vec(sb.iter().product(), -1.0, 1.0, 160 + i as u64),
            &sb,
        );
        let (want_shape, want) = reference(&a_stored, &sa, &b_stored, &sb, ta, tb);
        let (rtol, atol) = tol(k);
        for &kernel in &kernels {
            let _kernel = force(kernel);
            let (c, ran) = a
                .matmul_t_with_entry(&b, ta, tb)
                .unwrap_or_else(|e| panic!("{kernel} {sa:?}·{sb:?}: {e}"));
            // `auto` may be measured slower than the portable kernels on a GPU (autotune).
            if kernel != "auto" {
                assert_eq!(ran, Some("mm_coop"), "{kernel} {sa:?}·{sb:?}");
            }
            assert_eq!(c.shape(), want_shape.as_slice());
            let what = format!("{kernel} {sa:?} ta {ta} · {sb:?} tb {tb}");
            assert_close(&what, &c.to_vec().unwrap(), &want, rtol, atol);
        }
    }
    // The fused epilogue: bias and GELU after the tensor-core product.
    let (m, k, n) = (33, 40, 70);
    let (x, xs) = f16(&random_vec(m * k, -1.0, 1.0, 170), &[m, k]);
    let (w, ws) = f16(&random_vec(n * k, -1.0, 1.0, 171), &[n, k]);
    let bv = random_vec(n, -1.0, 1.0, 172);
    let bias = upload(&bv, &[n]);
    let (_, xw) = reference(&xs, &[m, k], &ws, &[n, k], false, true);
    let want = epilogue(&xw, n, Some(&bv), Activation::Gelu);
    let (rtol, atol) = tol(k);
    let bf = x.to_dtype(DType::BF16).unwrap();
    for &kernel in &kernels {
        let _kernel = force(if kernel == "auto" { "coop" } else { kernel });
        let y = x
            .linear(&w, Some(&bias), WeightLayout::OutIn, Activation::Gelu)
            .unwrap();
        let what = format!("{kernel} linear + bias + gelu");
        assert_close(&what, &y.to_vec().unwrap(), &want, rtol, atol);
        // Other dtypes are refused by name, not rounded to f16.
        let e = bf.matmul_t(&w, false, true);
        assert!(
            matches!(&e, Err(Error::InvalidArgument { message, .. }) if message.contains("f16 operands")),
            "{kernel}: {e:?}"
        );
    }
}

/// Autotuning (on here whatever the adapter, with a cache directory of the test's own): the
/// first product of a shape class measures the candidates and saves the choice for this
/// adapter; later products of the class take the kept choice without measuring (nothing is
/// written again); a choice in the file is what runs after loading it; a corrupt file is
/// ignored, measured again and rewritten; a forced kernel still runs; off, the rule runs and
/// nothing is written. Results equal the reference throughout.
#[test]
fn autotune_measures_once_and_caches_per_adapter() {
    use portagrad::testing::{
        MATMUL_AUTOTUNE_FILE, configure_matmul_autotune, reset_matmul_autotune,
    };
    let _serial = serial();
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            reset_matmul_autotune();
        }
    }
    let _restore = Restore;
    let dev = own_device();
    let dir = std::env::temp_dir().join(format!("portagrad-autotune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join(MATMUL_AUTOTUNE_FILE);
    let info = dev.info();
    let adapter = format!("{} | {} | {}", info.name, info.driver, info.backend);
    // Two shapes of one class: M, N, K rounded up to powers of two are 128, 128, 64.
    let class = "m128_n128_k64_f32xf32_nn";
    let operands = |m: usize, k: usize, n: usize, seed: u64| {
        let av = random_vec(m * k, -1.0, 1.0, seed);
        let bv = random_vec(k * n, -1.0, 1.0, seed + 1);
        let a = Tensor::from_slice(&dev, &av, &[m, k]).unwrap();
        let b = Tensor::from_slice(&dev, &bv, &[k, n]).unwrap();
        (
            a,
            b,
            reference(&av, &[m, k], &bv, &[k, n], false, false).1,
            k,
        )
    };
    let first = operands(70, 50, 90, 180);
    let second = operands(72, 60, 100, 182);
    // The entry point of one product, checked against the reference.
    let run = |(a, b, want, k): &(Tensor, Tensor, Vec<f64>, usize)| {
        let (c, ran) = a.matmul_t_with_entry(b, false, false).unwrap();
        let (rtol, atol) = tol(*k);
        assert_close("autotuned product", &c.to_vec().unwrap(), want, rtol, atol);
        ran.expect("a kernel ran")
    };
    let saved = || -> Option<String> {
        let text = std::fs::read_to_string(&file).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).expect("the cache is JSON");
        Some(v["adapters"][&adapter][class].as_str()?.to_string())
    };
    let write_choice = |kernel: &str| {
        let v = serde_json::json!({"version": 1, "adapters": {&adapter: {class: kernel}}});
        std::fs::write(&file, v.to_string()).unwrap();
    };

    // The rule's kernel (what runs with autotuning off).
    let rule = {
        let _kernel = force("portable");
        run(&first)
    };
    configure_matmul_autotune(true, Some(dir.clone()));
    dev.reset_stats();
    run(&first);
    assert_eq!(
        dev.stats().dispatches,
        1,
        "measuring is not counted as the caller's work"
    );
    assert!(
        saved().is_some(),
        "the choice is saved for this adapter and class"
    );
    std::fs::remove_file(&file).unwrap();
    run(&second);
    assert!(
        !file.exists(),
        "same class: the kept choice, nothing measured or written"
    );

    // A choice in the file is what runs: the rows kernel, a candidate everywhere and not the
    // rule's for this shape on lavapipe or a GPU.
    write_choice("rows");
    configure_matmul_autotune(true, Some(dir.clone()));
    let loaded = run(&second);
    if !rule.starts_with("mm_rows") {
        assert!(
            loaded.starts_with("mm_rows"),
            "the choice loaded from the file: {loaded}"
        );
    }
    {
        let _kernel = force("tiled4");
        assert_eq!(run(&second), "mm_tiled_v4", "a forced kernel still runs");
    }

    std::fs::write(&file, "{\"version\": 1, \"adapters\": {").unwrap();
    configure_matmul_autotune(true, Some(dir.clone()));
    run(&first);
    assert!(
        saved().is_some(),
        "a corrupt file is ignored, measured again and rewritten"
    );

    write_choice("rows");
    configure_matmul_autotune(false, Some(dir.clone()));
    assert_eq!(run(&first), rule, "off: the rule, not the file's choice");
    assert!(saved().as_deref() == Some("rows"), "off: nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `matmul_t_as(.., F16)`: the result in f16, within one f16 rounding of the f64 product of
/// the stored operands. The cooperative kernels (on tensor cores where the adapter has them,
/// emulated on every adapter with subgroups) write it in their epilogue for an even N: one
/// dispatch; an odd N, and the portable kernels, convert the f32 result: two. The gradient
/// flows back through the f16 result to f32 parameters.
#[test]
fn f16_output() {
    let _serial = serial();
    let dev = shared_device();
    let mut kernels = vec!["portable"];
    if dev.info().coop_f16_size().is_some() {
        kernels.extend(["coop64", "coop128"]);
    }
    if dev.has_subgroups() {
        kernels.extend(["coop_emu16", "coop_emu8"]);
    }
    let round16 = |v: &[f64]| -> Vec<f64> {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let t = Tensor::from_slice_as(&dev, &f, &[f.len()], DType::F16).unwrap();
        t.to_vec().unwrap().iter().map(|&x| x as f64).collect()
    };
    for (m, k, n, seed) in [(33, 40, 70, 190), (17, 9, 13, 192), (2, 70, 8, 194)] {
        let av = random_vec(m * k, -1.0, 1.0, seed);
        let bv = random_vec(n * k, -1.0, 1.0, seed + 1);
        let gv = random_vec(m * n, -1.0, 1.0, seed + 2);
        let a32 = Tensor::from_slice(&dev, &av, &[m, k]).unwrap().with_grad();
        let (b, bs) = half_operand(&bv, &[n, k], DType::F16);
        let (g, gs) = half_operand(&gv, &[m, n], DType::F16);
        let a = a32.to_dtype(DType::F16).unwrap();
        let as_ = a.to_vec().unwrap();
        let (_, want) = reference(&as_, &[m, k], &bs, &[n, k], false, true);
        let (_, want_da) = reference(&gs, &[m, n], &bs, &[n, k], false, false);
        for &kernel in &kernels {
            let _kernel = force(kernel);
            dev.sync().unwrap();
            let before = dev.stats().dispatches;
            let (y, ran) = a
                .matmul_t_as_with_entry(&b, false, true, DType::F16)
                .unwrap();
            let dispatches = dev.stats().dispatches - before;
            let what = format!("{kernel} ({ran:?}) {m} x {k} x {n} to f16");
            assert_eq!(y.dtype(), DType::F16, "{what}");
            let fused = kernel != "portable" && n % 2 == 0;
            assert_eq!(dispatches, if fused { 1 } else { 2 }, "{what}");
            // Within one f16 rounding of the exact value (the f32 sum may round across it).
            assert_close(&what, &y.to_vec().unwrap(), &round16(&want), 1e-3, 1e-4);
            let grads = y.backward_with(&g).unwrap();
            let da = grads.get(&a32).unwrap();
            assert_eq!(da.dtype(), DType::F32);
            let what = format!("{kernel} {m} x {k} x {n}: dA through the f16 result");
            assert_close(&what, &da.to_vec().unwrap(), &round16(&want_da), 1e-3, 1e-4);
        }
    }
    let x = Tensor::from_slice(&dev, &[1.0; 4], &[2, 2]).unwrap();
    let e = x.matmul_t_as(&x, false, false, DType::BF16);
    assert!(matches!(e, Err(Error::DType { .. })), "{e:?}");
}
