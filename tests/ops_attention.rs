//! Fused attention against a naive CPU attention in f64 (and against the unfused GPU
//! composition matmul -> softmax -> matmul), gradient checks, head split / merge, KV-cache
//! decode, and error messages. Tolerances: forward 1e-4 relative + 2e-5 absolute (f32
//! accumulation over up to 1024 keys); gradients 1e-3 relative.

mod common;

use common::{check_grad, inp};
use portagrad::testing::reference::attention::{
    Dims, backward as cpu_attention_backward, forward as cpu_attention, merge_heads as cpu_merge,
    merge_heads3 as cpu_merge3, split_heads as cpu_split, unmerge_heads as cpu_unmerge,
};
use portagrad::testing::{Family, assert_close, random_vec, shared_device, with_kernel};
use portagrad::{
    Error, KvCache, Tensor, attend_cached, attention, attention_qkv, attention_variant,
    merge_heads, split_heads,
};

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

fn qkv_data(dims: Dims, seed: u64) -> [Vec<f32>; 3] {
    let n = dims.0 * dims.1 * dims.2 * dims.3;
    [
        random_vec(n, -1.0, 1.0, seed),
        random_vec(n, -1.0, 1.0, seed + 1),
        random_vec(n, -1.0, 1.0, seed + 2),
    ]
}

/// Run `f` once per kind of kernel this adapter can run: its default (CPU adapters: the
/// generated subgroup kernels), the portable and the tiled ones. The kind is forced per thread,
/// so tests running in parallel do not disturb each other.
fn each_kind(f: impl Fn()) {
    let dev = shared_device();
    let default =
        with_kernel(Family::Attention, "default", || attention_variant(&dev, 64)).unwrap();
    for kind in ["default", "portable", "tiled"] {
        if kind != "default" && kind == default {
            continue;
        }
        with_kernel(Family::Attention, kind, || {
            eprintln!("attention kernels: {}", attention_variant(&dev, 64));
            f()
        })
        .unwrap();
    }
}

fn shape(d: Dims) -> [usize; 4] {
    [d.0, d.1, d.2, d.3]
}

/// T in {1, 7, 64, 129, 1024}, every supported D at least once, causal and not.
const FORWARD_CASES: &[Dims] = &[
    (2, 3, 1, 16),
    (2, 2, 7, 32),
    (1, 3, 64, 64),
    (2, 2, 129, 80),
    (1, 2, 129, 128),
    (1, 1, 1024, 16),
    (1, 1, 1024, 64),
    (1, 1, 300, 32),
];

#[test]
fn forward_matches_cpu() {
    each_kind(|| {
        for (n, &dims) in FORWARD_CASES.iter().enumerate() {
            let [q, k, v] = qkv_data(dims, 10 * n as u64);
            let s = shape(dims);
            let (qt, kt, vt) = (upload(&q, &s), upload(&k, &s), upload(&v, &s));
            for causal in [false, true] {
                let o = attention(&qt, &kt, &vt, causal).expect("attention");
                assert_eq!(o.shape(), &s);
                let want = cpu_attention(&to64(&q), &to64(&k), &to64(&v), dims, causal);
                assert_close(
                    &format!("attention {dims:?} causal={causal}"),
                    &o.to_vec().unwrap(),
                    &want,
                    1e-4,
                    2e-5,
                );
            }
        }
    });
}

/// Large scores (|s| up to ~60): the online softmax must not overflow or lose rows.
#[test]
fn forward_with_large_scores() {
    each_kind(|| {
        let dims = (1, 2, 77, 32);
        let n = 2 * 77 * 32;
        let q = random_vec(n, -8.0, 8.0, 5);
        let k = random_vec(n, -8.0, 8.0, 6);
        let v = random_vec(n, -1.0, 1.0, 7);
        let s = shape(dims);
        for causal in [false, true] {
            let o = attention(&upload(&q, &s), &upload(&k, &s), &upload(&v, &s), causal).unwrap();
            let want = cpu_attention(&to64(&q), &to64(&k), &to64(&v), dims, causal);
            assert_close(
                &format!("large scores causal={causal}"),
                &o.to_vec().unwrap(),
                &want,
                1e-3,
                1e-4,
            );
        }
    });
}

/// The fused kernel against the unfused composition on the GPU: softmax(q kᵀ · scale + mask) v.
#[test]
fn forward_and_gradients_match_unfused_gpu_composition() {
    each_kind(|| {
        let dev = shared_device();
        for (dims, causal) in [((2, 2, 37, 32), true), ((1, 3, 20, 16), false)] {
            let (_, _, t, d) = dims;
            let [q, k, v] = qkv_data(dims, 40);
            let s = shape(dims);
            let (qt, kt, vt) = (
                upload(&q, &s).with_grad(),
                upload(&k, &s).with_grad(),
                upload(&v, &s).with_grad(),
            );
            let mask: Vec<f32> = (0..t * t)
                .map(|x| if causal && x % t > x / t { -1e30 } else { 0.0 })
                .collect();
            let mask = Tensor::from_slice(&dev, &mask, &[t, t]).unwrap();
            let scores = qt
                .matmul_t(&kt, false, true)
                .unwrap()
                .mul_scalar(1.0 / (d as f32).sqrt())
                .unwrap()
                .add(&mask)
                .unwrap();
            let unfused = scores.softmax().unwrap().matmul(&vt).unwrap();
            let fused = attention(&qt, &kt, &vt, causal).unwrap();
            let want = to64(&unfused.to_vec().unwrap());
            assert_close(
                &format!("fused vs unfused {dims:?}"),
                &fused.to_vec().unwrap(),
                &want,
                1e-4,
                2e-5,
            );
            if !unfused.requires_grad() {
                // matmul records no backward yet: only the forward can be compared.
                eprintln!("matmul has no autograd yet: unfused gradients not compared");
                continue;
            }
            let w = Tensor::from_slice(&dev, &random_vec(q.len(), -1.0, 1.0, 3), &s).unwrap();
            let gf = fused.mul(&w).unwrap().sum().unwrap().backward().unwrap();
            let gu = unfused.mul(&w).unwrap().sum().unwrap().backward().unwrap();
            for (name, x) in [("dq", &qt), ("dk", &kt), ("dv", &vt)] {
                let want = to64(&gu.get(x).unwrap().to_vec().unwrap());
                assert_close(
                    &format!("{name} fused vs unfused {dims:?}"),
                    &gf.get(x).unwrap().to_vec().unwrap(),
                    &want,
                    1e-3,
                    1e-4,
                );
            }
        }
    });
}

fn attention_grad_case(dims: Dims, causal: bool) {
    let s = shape(dims);
    check_grad(
        &format!("attention {dims:?} causal={causal}"),
        &[inp(&s, -1.0, 1.0), inp(&s, -1.0, 1.0), inp(&s, -1.0, 1.0)],
        &|t| attention(&t[0], &t[1], &t[2], causal),
        &|x| cpu_attention(&x[0], &x[1], &x[2], dims, causal),
        &|x, g| cpu_attention_backward(&x[0], &x[1], &x[2], g, dims, causal).to_vec(),
        1e-4,
        1e-3,
    );
}

#[test]
fn gradients_small() {
    each_kind(|| {
        for t in [1, 7, 13] {
            for causal in [false, true] {
                attention_grad_case((2, 2, t, 16), causal);
            }
        }
    });
}

/// Several tiles, several row groups and workgroups, D = 64 and 80.
#[test]
fn gradients_multi_tile() {
    each_kind(|| {
        attention_grad_case((1, 1, 129, 64), true);
        attention_grad_case((1, 2, 70, 80), false);
    });
}

/// Same inputs, same gradients, bit for bit (no atomics).
#[test]
fn backward_is_deterministic() {
    each_kind(|| {
        let dims = (1, 2, 100, 32);
        let [q, k, v] = qkv_data(dims, 90);
        let s = shape(dims);
        let run = || {
            let (qt, kt, vt) = (
                upload(&q, &s).with_grad(),
                upload(&k, &s).with_grad(),
                upload(&v, &s).with_grad(),
            );
            let g = attention(&qt, &kt, &vt, true)
                .unwrap()
                .sum()
                .unwrap()
                .backward()
                .unwrap();
            [&qt, &kt, &vt].map(|x| g.get(x).unwrap().to_vec().unwrap())
        };
        assert_eq!(run(), run());
    });
}

/// Forward and backward at T = 1024 hold far less than one (T, T) f32 matrix.
#[test]
fn no_t_by_t_buffer() {
    let dev = portagrad::testing::device().expect("device");
    let (t, d) = (1024, 16);
    let n = t * d;
    let mk = |seed| {
        Tensor::from_slice(&dev, &random_vec(n, -1.0, 1.0, seed), &[1, 1, t, d])
            .unwrap()
            .with_grad()
    };
    let (q, k, v) = (mk(1), mk(2), mk(3));
    dev.sync().unwrap();
    dev.reset_stats();
    let before = dev.stats().live_bytes;
    let g = attention(&q, &k, &v, true)
        .unwrap()
        .sum()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&q).is_some());
    dev.sync().unwrap();
    let grew = dev.stats().peak_bytes - before;
    let tt = (t * t * 4) as u64;
    assert!(
        grew < tt / 4,
        "attention forward+backward at T = {t} allocated {grew} bytes at peak; one (T, T) matrix is {tt}"
    );
}

// ---- split / merge heads ----

#[test]
fn split_and_merge_heads_round_trip() {
    // D = 8 takes the vec4 kernels, D = 5 the scalar ones.
    for (b, t, c, h) in [(2, 5, 24, 3), (1, 7, 15, 3), (2, 3, 64, 1)] {
        let x = random_vec(b * t * 3 * c, -1.0, 1.0, 12);
        let xt = upload(&x, &[b, t, 3 * c]);
        let (q, k, v) = split_heads(&xt, h).unwrap();
        let want = cpu_split(&to64(&x), b, t, c, h);
        for (name, got, want) in [
            ("q", &q, &want[0]),
            ("k", &k, &want[1]),
            ("v", &v, &want[2]),
        ] {
            assert_eq!(got.shape(), &[b, h, t, c / h]);
            assert_close(
                &format!("split {name}"),
                &got.to_vec().unwrap(),
                want,
                0.0,
                0.0,
            );
            let m = merge_heads(got).unwrap();
            assert_eq!(m.shape(), &[b, t, c]);
            let back = cpu_merge(want, b, h, t, c / h);
            assert_close(
                &format!("merge {name}"),
                &m.to_vec().unwrap(),
                &back,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn split_and_merge_heads_gradients() {
    for (b, t, c, h) in [(2, 3, 8, 2), (1, 4, 6, 2)] {
        let d = c / h;
        check_grad(
            &format!("split_heads ({b}, {t}, {}) h={h}", 3 * c),
            &[inp(&[b, t, 3 * c], -1.0, 1.0)],
            &|x| {
                let (q, k, v) = split_heads(&x[0], h)?;
                q.add(&k.mul_scalar(2.0)?)?.add(&v.mul_scalar(-3.0)?)
            },
            &|x| {
                let [q, k, v] = cpu_split(&x[0], b, t, c, h);
                (0..q.len())
                    .map(|i| q[i] + 2.0 * k[i] - 3.0 * v[i])
                    .collect()
            },
            &|_, g| {
                let mut dx = vec![0.0; b * t * 3 * c];
                for bi in 0..b {
                    for hi in 0..h {
                        for ti in 0..t {
                            for di in 0..d {
                                let gi = g[((bi * h + hi) * t + ti) * d + di];
                                for (s, coef) in [1.0, 2.0, -3.0].into_iter().enumerate() {
                                    dx[(bi * t + ti) * 3 * c + s * c + hi * d + di] = coef * gi;
                                }
                            }
                        }
                    }
                }
                vec![dx]
            },
            0.0,
            1e-5,
        );
        check_grad(
            &format!("merge_heads ({b}, {h}, {t}, {d})"),
            &[inp(&[b, h, t, d], -1.0, 1.0)],
            &|x| merge_heads(&x[0]),
            &|x| cpu_merge(&x[0], b, h, t, d),
            &|_, g| {
                // The inverse permutation of the gradient.
                let mut dx = vec![0.0; g.len()];
                for bi in 0..b {
                    for hi in 0..h {
                        for ti in 0..t {
                            for di in 0..d {
                                dx[((bi * h + hi) * t + ti) * d + di] =
                                    g[(bi * t + ti) * h * d + hi * d + di];
                            }
                        }
                    }
                }
                vec![dx]
            },
            0.0,
            1e-5,
        );
    }
}

/// The whole block: (B, T, 3C) -> split -> causal attention -> merge, gradient to qkv; as
/// three ops and as the fused `attention_qkv`.
#[test]
fn gradients_through_split_attention_merge() {
    each_kind(|| {
        type Gpu = fn(&Tensor, usize) -> portagrad::Result<Tensor>;
        let three: Gpu = |x, h| {
            let (q, k, v) = split_heads(x, h)?;
            merge_heads(&attention(&q, &k, &v, true)?)
        };
        let fused: Gpu = |x, h| attention_qkv(x, h, true);
        for (name, gpu) in [
            ("split -> attention -> merge", three),
            ("attention_qkv", fused),
        ] {
            let (b, t, c, h) = (2, 9, 32, 2);
            let dims = (b, h, t, c / h);
            check_grad(
                name,
                &[inp(&[b, t, 3 * c], -1.0, 1.0)],
                &|x| gpu(&x[0], h),
                &|x| {
                    let [q, k, v] = cpu_split(&x[0], b, t, c, h);
                    cpu_merge(&cpu_attention(&q, &k, &v, dims, true), b, h, t, c / h)
                },
                &|x, g| {
                    let [q, k, v] = cpu_split(&x[0], b, t, c, h);
                    let gh = cpu_unmerge(g, b, h, t, c / h);
                    let grads = cpu_attention_backward(&q, &k, &v, &gh, dims, true);
                    vec![cpu_merge3(&grads, b, h, t, c / h)]
                },
                1e-4,
                1e-3,
            );
        }
    });
}

#[test]
fn attention_qkv_matches_the_three_ops() {
    let (b, t, c, h) = (2, 37, 192, 3);
    let x = upload(&random_vec(b * t * 3 * c, -1.0, 1.0, 17), &[b, t, 3 * c]);
    for causal in [false, true] {
        let (q, k, v) = split_heads(&x, h).unwrap();
        let want = merge_heads(&attention(&q, &k, &v, causal).unwrap()).unwrap();
        let got = attention_qkv(&x, h, causal).unwrap();
        assert_eq!(got.shape(), &[b, t, c]);
        assert_close(
            &format!("attention_qkv causal={causal}"),
            &got.to_vec().unwrap(),
            &to64(&want.to_vec().unwrap()),
            0.0,
            0.0,
        );
    }
    let msg = attention_qkv(&upload(&[0.0; 2 * 3 * 18], &[2, 3, 18]), 3, true)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("D = 2"), "{msg}");
}

// ---- KV cache and decode ----

/// Rows `t0 .. t0 + n` of every (b, h) of a (B, H, T, D) host tensor.
fn rows(x: &[f32], dims: Dims, t0: usize, n: usize) -> Vec<f32> {
    let (b, h, t, d) = dims;
    let mut out = Vec::with_capacity(b * h * n * d);
    for bh in 0..b * h {
        out.extend_from_slice(&x[(bh * t + t0) * d..(bh * t + t0 + n) * d]);
    }
    out
}

#[test]
fn decode_step_t_equals_row_t_of_causal_forward() {
    each_kind(|| {
        for (dims, max_len) in [((2, 3, 9, 32), 16), ((1, 2, 5, 80), 5)] {
            let (b, h, t, d) = dims;
            let [q, k, v] = qkv_data(dims, 60);
            let s = shape(dims);
            let full = attention(&upload(&q, &s), &upload(&k, &s), &upload(&v, &s), true).unwrap();
            let full = full.to_vec().unwrap();
            let mut cache = KvCache::new(&shared_device(), b, h, max_len, d).unwrap();
            assert!(cache.is_empty());
            for step in 0..t {
                let one = [b, h, 1, d];
                cache
                    .append(
                        &upload(&rows(&k, dims, step, 1), &one),
                        &upload(&rows(&v, dims, step, 1), &one),
                    )
                    .unwrap();
                assert_eq!(cache.len(), step + 1);
                let o = attend_cached(&upload(&rows(&q, dims, step, 1), &one), &cache).unwrap();
                assert_eq!(o.shape(), &one);
                let want = to64(&rows(&full, dims, step, 1));
                assert_close(
                    &format!("decode {dims:?} step {step}"),
                    &o.to_vec().unwrap(),
                    &want,
                    1e-5,
                    1e-6,
                );
            }
        }
    });
}

/// Several positions appended at once, and a chunk of queries attended causally; longer
/// caches than the decode workgroup; reset.
#[test]
fn decode_chunks_long_cache_and_reset() {
    let dims = (1, 2, 300, 64);
    let (b, h, t, d) = dims;
    let [q, k, v] = qkv_data(dims, 70);
    let want_all = cpu_attention(&to64(&q), &to64(&k), &to64(&v), dims, true);
    let mut cache = KvCache::new(&shared_device(), b, h, 512, d).unwrap();
    for round in 0..2 {
        let mut at = 0;
        for n in [1, 3, 100, 196] {
            let sh = [b, h, n, d];
            cache
                .append(
                    &upload(&rows(&k, dims, at, n), &sh),
                    &upload(&rows(&v, dims, at, n), &sh),
                )
                .unwrap();
            let o = attend_cached(&upload(&rows(&q, dims, at, n), &sh), &cache).unwrap();
            let want: Vec<f64> = (0..b * h)
                .flat_map(|bh| want_all[(bh * t + at) * d..(bh * t + at + n) * d].to_vec())
                .collect();
            assert_close(
                &format!("decode chunk at {at} of {n} (round {round})"),
                &o.to_vec().unwrap(),
                &want,
                1e-4,
                2e-5,
            );
            at += n;
        }
        assert_eq!(cache.len(), t);
        cache.reset();
        assert_eq!(cache.len(), 0);
    }
}

#[test]
fn kv_cache_errors() {
    let dev = shared_device();
    let (b, h, d) = (1, 2, 16);
    let mut cache = KvCache::new(&dev, b, h, 4, d).unwrap();
    let kv = |n| Tensor::zeros(&dev, &[b, h, n, d]).unwrap();
    let q1 = Tensor::zeros(&dev, &[b, h, 1, d]).unwrap();
    // Nothing cached yet.
    assert!(matches!(
        attend_cached(&q1, &cache),
        Err(Error::Shape { .. })
    ));
    cache.append(&kv(3), &kv(3)).unwrap();
    let err = cache.append(&kv(2), &kv(2)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("appending 2") && msg.contains("holding 3") && msg.contains('4'),
        "{msg}"
    );
    assert_eq!(cache.len(), 3, "a failed append changes nothing");
    cache.append(&kv(1), &kv(1)).unwrap();
    assert!(cache.append(&kv(1), &kv(1)).is_err());
    assert_eq!(cache.len(), 4);
    // Wrong heads / head size.
    let bad = Tensor::zeros(&dev, &[b, 3, 1, d]).unwrap();
    let msg = cache.append(&bad, &bad).unwrap_err().to_string();
    assert!(
        msg.contains("[1, 3, 1, 16]") && msg.contains("[1, 2, 4, 16]"),
        "{msg}"
    );
    let msg = attend_cached(&Tensor::zeros(&dev, &[b, h, 1, 32]).unwrap(), &cache)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[1, 2, 1, 32]"), "{msg}");
    assert!(KvCache::new(&dev, 1, 1, 8, 6).is_err());
}

#[test]
fn bad_shapes_are_errors_naming_shapes() {
    let dev = shared_device();
    let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    let a = z(&[2, 4, 7, 16]);
    let msg = attention(&a, &z(&[2, 4, 8, 16]), &a, false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("[2, 4, 7, 16]") && msg.contains("[2, 4, 8, 16]"),
        "{msg}"
    );
    let msg = attention(&z(&[4, 7, 16]), &a, &a, false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("[4, 7, 16]") && msg.contains("(B, H, T, D)"),
        "{msg}"
    );
    let odd = z(&[1, 1, 3, 6]);
    let msg = attention(&odd, &odd, &odd, true).unwrap_err().to_string();
    assert!(
        msg.contains("D = 6") && msg.contains("[1, 1, 3, 6]"),
        "{msg}"
    );
    let big = z(&[1, 1, 3, 132]);
    assert!(attention(&big, &big, &big, true).is_err());
    let msg = split_heads(&z(&[2, 3, 10]), 2).unwrap_err().to_string();
    assert!(msg.contains("[2, 3, 10]"), "{msg}");
    let msg = split_heads(&z(&[2, 3, 12]), 3).unwrap_err().to_string();
    assert!(
        msg.contains("[2, 3, 12]") && msg.contains("n_head = 3"),
        "{msg}"
    );
    assert!(merge_heads(&z(&[2, 3, 4])).is_err());
    let ids = Tensor::from_u32(&dev, &[0; 16], &[1, 1, 1, 16]).unwrap();
    assert!(matches!(
        attention(&ids, &ids, &ids, false),
        Err(Error::DType { .. })
    ));
}

/// The per-thread override picks the kernels (and wins over `PORTAGRAD_KERNELS`), and the
/// adapter's default is the generated kernels on CPU adapters with subgroups, else the tiled
/// ones on GPUs.
#[test]
fn kernel_kinds_can_be_forced() {
    let dev = shared_device();
    for kind in ["portable", "tiled"] {
        assert_eq!(
            with_kernel(Family::Attention, kind, || attention_variant(&dev, 64)).unwrap(),
            kind
        );
    }
    let default =
        with_kernel(Family::Attention, "default", || attention_variant(&dev, 64)).unwrap();
    eprintln!("attention kernels on this adapter: {default}");
    if !dev.info().is_cpu {
        assert_eq!(default, "tiled");
    }
}

// ---- grouped-query and multi-query attention (k, v with fewer heads than q) ----

use portagrad::testing::reference::attention::{
    backward_gqa as cpu_gqa_backward, forward_gqa as cpu_gqa, repeat_kv as cpu_repeat_kv,
};

/// (B, H, Hkv, T, D): GQA groups of 2, 3 and 4, MQA (Hkv = 1), T past a workgroup of rows and
/// not a multiple of a tile.
const GQA_CASES: &[(usize, usize, usize, usize, usize)] = &[
    (2, 4, 2, 7, 32),
    (1, 6, 2, 129, 64),
    (2, 3, 1, 33, 16),
    (1, 8, 2, 70, 80),
    (1, 4, 1, 1, 128),
];

#[test]
fn gqa_forward_matches_cpu_with_repeated_kv() {
    each_kind(|| {
        for (n, &(b, h, hkv, t, d)) in GQA_CASES.iter().enumerate() {
            let q = random_vec(b * h * t * d, -1.0, 1.0, 300 + n as u64);
            let k = random_vec(b * hkv * t * d, -1.0, 1.0, 400 + n as u64);
            let v = random_vec(b * hkv * t * d, -1.0, 1.0, 500 + n as u64);
            let (qs, ks) = ([b, h, t, d], [b, hkv, t, d]);
            let (qt, kt, vt) = (upload(&q, &qs), upload(&k, &ks), upload(&v, &ks));
            for causal in [false, true] {
                let o = attention(&qt, &kt, &vt, causal).unwrap();
                assert_eq!(o.shape(), &qs);
                // Independent of the GQA reference: plain attention on K/V repeated per head.
                let g = h / hkv;
                let want = cpu_attention(
                    &to64(&q),
                    &cpu_repeat_kv(&to64(&k), b, hkv, t, d, g),
                    &cpu_repeat_kv(&to64(&v), b, hkv, t, d, g),
                    (b, h, t, d),
                    causal,
                );
                assert_close(
                    &format!("gqa ({b}, {h}, {hkv}, {t}, {d}) causal={causal}"),
                    &o.to_vec().unwrap(),
                    &want,
                    1e-4,
                    2e-5,
                );
            }
        }
    });
}

fn gqa_grad_case(b: usize, h: usize, hkv: usize, t: usize, d: usize, causal: bool) {
    let dims = (b, h, t, d);
    let (qs, ks) = ([b, h, t, d], [b, hkv, t, d]);
    check_grad(
        &format!("gqa attention ({b}, {h}, {hkv}, {t}, {d}) causal={causal}"),
        &[
            inp(&qs, -1.0, 1.0),
            inp(&ks, -1.0, 1.0),
            inp(&ks, -1.0, 1.0),
        ],
        &|x| attention(&x[0], &x[1], &x[2], causal),
        &|x| cpu_gqa(&x[0], &x[1], &x[2], dims, hkv, causal),
        &|x, g| cpu_gqa_backward(&x[0], &x[1], &x[2], g, dims, hkv, causal).to_vec(),
        1e-4,
        1e-3,
    );
}

/// dK and dV summed over the query heads of each group, in every kernel kind; finite
/// differences of the reference in f64 (inside `check_grad`).
#[test]
fn gqa_and_mqa_gradients() {
    each_kind(|| {
        for causal in [false, true] {
            gqa_grad_case(2, 4, 2, 7, 16, causal);
            gqa_grad_case(1, 3, 1, 13, 16, causal);
        }
        gqa_grad_case(1, 4, 2, 70, 32, true);
        gqa_grad_case(1, 6, 3, 9, 80, false);
    });
}

/// Decoding with a cache of Hkv heads matches the full causal GQA attention row by row, for
/// one position at a time and for chunks.
#[test]
fn gqa_decode_matches_full_attention() {
    each_kind(|| {
        for (b, h, hkv, t, d) in [(2, 4, 2, 9, 32), (1, 3, 1, 70, 64)] {
            let q = random_vec(b * h * t * d, -1.0, 1.0, 80);
            let k = random_vec(b * hkv * t * d, -1.0, 1.0, 81);
            let v = random_vec(b * hkv * t * d, -1.0, 1.0, 82);
            let (qdims, kdims) = ((b, h, t, d), (b, hkv, t, d));
            let full = cpu_gqa(&to64(&q), &to64(&k), &to64(&v), qdims, hkv, true);
            let mut cache = KvCache::new(&shared_device(), b, hkv, t + 3, d).unwrap();
            assert_eq!(cache.shape(), &[b, hkv, t + 3, d]);
            let mut at = 0;
            for n in [1, 2, 1, t - 4] {
                cache
                    .append(
                        &upload(&rows(&k, kdims, at, n), &[b, hkv, n, d]),
                        &upload(&rows(&v, kdims, at, n), &[b, hkv, n, d]),
                    )
                    .unwrap();
                let o =
                    attend_cached(&upload(&rows(&q, qdims, at, n), &[b, h, n, d]), &cache).unwrap();
                assert_eq!(o.shape(), &[b, h, n, d]);
                let want: Vec<f64> = (0..b * h)
                    .flat_map(|bh| full[(bh * t + at) * d..(bh * t + at + n) * d].to_vec())
                    .collect();
                assert_close(
                    &format!("gqa decode ({b}, {h}, {hkv}, {t}, {d}) at {at} n {n}"),
                    &o.to_vec().unwrap(),
                    &want,
                    1e-4,
                    2e-5,
                );
                at += n;
            }
        }
    });
}

#[test]
fn gqa_bad_shapes_are_errors() {
    let dev = shared_device();
    let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    let q = z(&[2, 6, 7, 16]);
    // 6 query heads over 4 K/V heads.
    let msg = attention(&q, &z(&[2, 4, 7, 16]), &z(&[2, 4, 7, 16]), true)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("attention") && msg.contains("[2, 6, 7, 16]") && msg.contains("[2, 4, 7, 16]"),
        "{msg}"
    );
    // k and v with different head counts, or a batch that differs.
    assert!(attention(&q, &z(&[2, 2, 7, 16]), &z(&[2, 3, 7, 16]), true).is_err());
    assert!(attention(&q, &z(&[1, 2, 7, 16]), &z(&[1, 2, 7, 16]), true).is_err());
    // More K/V heads than query heads.
    assert!(attention(&z(&[2, 2, 7, 16]), &q, &q, true).is_err());
    // A cache of 4 K/V heads cannot serve 6 query heads.
    let mut cache = KvCache::new(&dev, 2, 4, 8, 16).unwrap();
    cache
        .append(&z(&[2, 4, 1, 16]), &z(&[2, 4, 1, 16]))
        .unwrap();
    let msg = attend_cached(&z(&[2, 6, 1, 16]), &cache)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("attend_cached") && msg.contains("[2, 6, 1, 16]"),
        "{msg}"
    );
    // Appending query-shaped (H-headed) K/V to a Hkv-headed cache.
    assert!(
        cache
            .append(&z(&[2, 8, 1, 16]), &z(&[2, 8, 1, 16]))
            .is_err()
    );
    // Attending 8 query heads to it is GQA: fine.
    assert_eq!(
        attend_cached(&z(&[2, 8, 1, 16]), &cache).unwrap().shape(),
        &[2, 8, 1, 16]
    );
}

// ---- the fused grouped-query projection split ----

use portagrad::split_qkv;
use portagrad::testing::reference::attention::{
    merge_qkv as cpu_merge_qkv, split_qkv as cpu_split_qkv,
};

#[test]
fn split_qkv_matches_cpu_and_split_heads() {
    // D = 8 and 16 (vec4 units), D = 6 and 5 (scalar); GQA, MQA and Hkv = H.
    for (b, t, h, hkv, d) in [
        (2, 5, 4, 2, 8),
        (1, 7, 3, 1, 6),
        (2, 3, 2, 2, 16),
        (1, 9, 6, 3, 5),
    ] {
        let w = (h + 2 * hkv) * d;
        let x = random_vec(b * t * w, -1.0, 1.0, 21);
        let xt = upload(&x, &[b, t, w]);
        let (q, k, v) = split_qkv(&xt, h, hkv).unwrap();
        assert_eq!(q.shape(), &[b, h, t, d]);
        assert_eq!(k.shape(), &[b, hkv, t, d]);
        assert_eq!(v.shape(), &[b, hkv, t, d]);
        let want = cpu_split_qkv(&to64(&x), b, t, h, hkv, d);
        for (name, got, want) in [
            ("q", &q, &want[0]),
            ("k", &k, &want[1]),
            ("v", &v, &want[2]),
        ] {
            assert_close(
                &format!("split_qkv {name} ({b}, {t}, {h}, {hkv}, {d})"),
                &got.to_vec().unwrap(),
                want,
                0.0,
                0.0,
            );
        }
        if h == hkv {
            let (q2, k2, v2) = split_heads(&xt, h).unwrap();
            assert_eq!(q.to_vec().unwrap(), q2.to_vec().unwrap());
            assert_eq!(k.to_vec().unwrap(), k2.to_vec().unwrap());
            assert_eq!(v.to_vec().unwrap(), v2.to_vec().unwrap());
        }
    }
}

/// The block of a GQA model: (B, T, (H + 2 Hkv) D) -> split_qkv -> causal attention -> merge,
/// gradient to the projection through all three parts, in every kernel kind.
#[test]
fn split_qkv_gqa_attention_gradients() {
    each_kind(|| {
        for (b, t, h, hkv, d) in [(2, 9, 4, 2, 16), (1, 6, 3, 1, 8)] {
            let w = (h + 2 * hkv) * d;
            let dims = (b, h, t, d);
            check_grad(
                &format!("split_qkv -> gqa attention -> merge ({b}, {t}, {h}, {hkv}, {d})"),
                &[inp(&[b, t, w], -1.0, 1.0)],
                &|x| {
                    let (q, k, v) = split_qkv(&x[0], h, hkv)?;
                    merge_heads(&attention(&q, &k, &v, true)?)
                },
                &|x| {
                    let [q, k, v] = cpu_split_qkv(&x[0], b, t, h, hkv, d);
                    cpu_merge(&cpu_gqa(&q, &k, &v, dims, hkv, true), b, h, t, d)
                },
                &|x, g| {
                    let [q, k, v] = cpu_split_qkv(&x[0], b, t, h, hkv, d);
                    let gh = cpu_unmerge(g, b, h, t, d);
                    let grads = cpu_gqa_backward(&q, &k, &v, &gh, dims, hkv, true);
                    vec![cpu_merge_qkv(&grads, b, t, h, hkv, d)]
                },
                1e-4,
                1e-3,
            );
        }
    });
}

/// Qwen2-style q/k/v biases: one linear layer with the stacked weights and concatenated
/// biases, then split_qkv, equals the three projections with their biases (computed in f64).
#[test]
fn split_qkv_after_a_fused_biased_projection() {
    let (b, t, c, h, hkv, d) = (2, 5, 12, 4, 2, 4);
    let x = random_vec(b * t * c, -1.0, 1.0, 31);
    let sizes = [h * d, hkv * d, hkv * d];
    // Hugging Face's (out, in) weights and biases of q_proj, k_proj, v_proj.
    let ws: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| random_vec(n * c, -0.5, 0.5, 40 + i as u64))
        .collect();
    let bs: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| random_vec(n, -0.5, 0.5, 50 + i as u64))
        .collect();
    let w_all: Vec<f32> = ws.concat();
    let b_all: Vec<f32> = bs.concat();
    let n = w_all.len() / c;
    let y = upload(&x, &[b, t, c])
        .linear(
            &upload(&w_all, &[n, c]),
            Some(&upload(&b_all, &[n])),
            portagrad::WeightLayout::OutIn,
            portagrad::Activation::None,
        )
        .unwrap();
    let (q, k, v) = split_qkv(&y, h, hkv).unwrap();
    for (i, (got, heads)) in [(&q, h), (&k, hkv), (&v, hkv)].into_iter().enumerate() {
        // x W^T + bias, (B, T, heads * D) -> (B, heads, T, D).
        let mut rows = Vec::new();
        for r in 0..b * t {
            for o in 0..sizes[i] {
                let dot: f64 = (0..c)
                    .map(|j| f64::from(x[r * c + j]) * f64::from(ws[i][o * c + j]))
                    .sum();
                rows.push(dot + f64::from(bs[i][o]));
            }
        }
        let want = cpu_unmerge(&rows, b, heads, t, d);
        assert_close(
            &format!("projection {i}"),
            &got.to_vec().unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn split_qkv_bad_shapes_are_errors() {
    let dev = shared_device();
    let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    // (4 + 2 * 2) * D columns: 12 is not a multiple of 8.
    let msg = split_qkv(&z(&[2, 3, 12]), 4, 2).unwrap_err().to_string();
    assert!(
        msg.contains("split_qkv") && msg.contains("[2, 3, 12]") && msg.contains("H = 4"),
        "{msg}"
    );
    // H not a multiple of Hkv; zero heads; rank 2; u32.
    assert!(split_qkv(&z(&[2, 3, 21]), 3, 2).is_err());
    assert!(split_qkv(&z(&[2, 3, 16]), 4, 0).is_err());
    assert!(split_qkv(&z(&[2, 3, 16]), 0, 4).is_err());
    assert!(split_qkv(&z(&[6, 16]), 4, 2).is_err());
    let ids = Tensor::from_u32(&dev, &[0; 16], &[1, 1, 16]).unwrap();
    assert!(matches!(
        split_qkv(&ids, 2, 1),
        Err(Error::DType {
            op: "split_qkv",
            ..
        })
    ));
}
