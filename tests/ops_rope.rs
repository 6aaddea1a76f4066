//! Rotary embeddings: the inverse frequencies (default and Llama 3 scaling) against an
//! independent f64 reference, values worked by hand and values `transformers` computes; the
//! rotation on (B, H, T, D) heads against `testing::reference::rope` on awkward shapes and
//! offsets; gradients against finite differences; decode offsets; errors.

mod common;

use common::{check_grad, f64s, inp, up};
use portagrad::testing::reference::rope as r;
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{DType, Error, Rope, RopeConfig, RopeScaling, Tensor};

fn close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs(),
            "{what}[{i}]: got {g:e}, want {w:e}"
        );
    }
}

fn llama32() -> RopeConfig {
    let s = RopeScaling::llama3(32.0, 1.0, 4.0, 8192.0).unwrap();
    RopeConfig::new(64, 500_000.0, Some(s)).unwrap()
}

#[test]
fn default_inv_freq_by_hand_and_reference() {
    // theta 10000, D = 4: 1 / 10000^(0/4), 1 / 10000^(2/4).
    let c = RopeConfig::new(4, 10_000.0, None).unwrap();
    close("D = 4", &c.inv_freq(), &[1.0, 0.01], 1e-15);
    for (d, theta) in [(64, 10_000.0), (6, 500_000.0), (128, 1_000_000.0)] {
        let c = RopeConfig::new(d, theta, None).unwrap();
        close(
            &format!("default D = {d}"),
            &c.inv_freq(),
            &r::default_inv_freq(d, theta),
            1e-14,
        );
    }
}

#[test]
fn llama3_inv_freq_by_hand() {
    // old context 1000, low 1, high 4, factor 8: wavelengths below 250 kept, above 1000
    // divided by 8. D = 6, theta 10000: inv_freq 1, 10000^(-1/3), 10000^(-2/3) with
    // wavelengths 6.3, 135.4 (kept) and 2916 (divided).
    let s = RopeScaling::llama3(8.0, 1.0, 4.0, 1000.0).unwrap();
    let c = RopeConfig::new(6, 10_000.0, Some(s)).unwrap();
    let want = [
        1.0,
        10_000f64.powf(-1.0 / 3.0),
        10_000f64.powf(-2.0 / 3.0) / 8.0,
    ];
    close("llama3 D = 6", &c.inv_freq(), &want, 1e-14);
    // D = 4: 0.01 has wavelength 628.3, in the smooth band: smooth = (1000 / 628.3 - 1) / 3
    // = (10 / (2 pi) - 1) / 3 = 0.19718314..., inv = 0.01 ((1 - smooth) / 8 + smooth).
    let c = RopeConfig::new(4, 10_000.0, Some(s)).unwrap();
    let smooth = (10.0 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
    assert!((smooth - 0.197_183_143_6).abs() < 1e-9);
    let want = [1.0, 0.01 * ((1.0 - smooth) / 8.0 + smooth)];
    close("llama3 D = 4", &c.inv_freq(), &want, 1e-14);
    assert!((want[1] - 0.002_975_352_507).abs() < 1e-12);
}

/// Llama 3.2 1B's rope (theta 500000, factor 32, low 1, high 4, old context 8192) against the
/// reference (Meta's loop form) and against values `transformers`' `_compute_llama3_parameters`
/// printed (`scripts/rope_llama3_inv_freq.py`; f32, so 1e-6 relative): kept, smooth-band and
/// divided frequencies.
#[test]
fn llama3_inv_freq_matches_reference_and_transformers() {
    let c = llama32();
    let got = c.inv_freq();
    let want = r::llama3_inv_freq(&r::default_inv_freq(64, 500_000.0), 32.0, 1.0, 4.0, 8192.0);
    close("llama 3.2 vs reference", &got, &want, 1e-14);
    let hf = [
        (0, 1.0),
        (5, 0.128_687_381_744_384_77),
        (10, 0.016_560_440_883_040_428),
        (15, 0.001_290_548_010_729_253_3),
        (16, 0.000_429_556_705_057_621),
        (17, 9.708_286_233_944_818e-5),
        (18, 1.946_163_865_795_824_7e-5),
        (19, 1.291_476_746_700_937e-5),
        (22, 3.774_054_448_513_197_7e-6),
        (31, 9.418_306_490_260_875e-8),
    ];
    for (i, v) in hf {
        assert!(
            (got[i] - v).abs() <= 1e-6 * v,
            "inv_freq[{i}] = {:e}, transformers {v:e}",
            got[i]
        );
    }
}

fn config(d: usize, scaled: bool) -> RopeConfig {
    let s = scaled.then(|| RopeScaling::llama3(8.0, 1.0, 4.0, 64.0).unwrap());
    RopeConfig::new(d, 10_000.0, s).unwrap()
}

/// (B, H, T, D, offset): D/2 odd (scalar kernel), D/2 a multiple of 4 (vec4), T past a
/// workgroup, a decode offset, D = 2.
const CASES: &[(usize, usize, usize, usize, usize)] = &[
    (2, 3, 7, 6, 0),
    (1, 2, 129, 64, 0),
    (2, 1, 5, 10, 17),
    (1, 4, 33, 16, 100),
    (3, 2, 1, 8, 250),
    (1, 1, 300, 2, 3),
    (1, 3, 11, 80, 500),
];

#[test]
fn forward_matches_reference() {
    let dev = shared_device();
    for (n, &(b, h, t, d, off)) in CASES.iter().enumerate() {
        for scaled in [false, true] {
            let c = config(d, scaled);
            let rope = Rope::new(&dev, &c, 1024).unwrap();
            let x = random_vec(b * h * t * d, -2.0, 2.0, 30 + n as u64);
            let y = up(&dev, &x, &[b, h, t, d]).rope(&rope, off).unwrap();
            assert_eq!(y.shape(), &[b, h, t, d]);
            let want = r::rope(&f64s(&x), t, &c.inv_freq(), off);
            assert_close(
                &format!("rope ({b}, {h}, {t}, {d}) offset {off} scaled={scaled}"),
                &y.to_vec().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

/// Position 0 is the identity; the rotation keeps each pair's norm.
#[test]
fn position_zero_is_identity_and_norms_are_kept() {
    let dev = shared_device();
    let rope = Rope::new(&dev, &llama32(), 64).unwrap();
    let x = random_vec(3 * 64, -1.0, 1.0, 4);
    let y = up(&dev, &x, &[1, 3, 1, 64])
        .rope(&rope, 0)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(y, x);
    let y = up(&dev, &x, &[1, 1, 3, 64])
        .rope(&rope, 40)
        .unwrap()
        .to_vec()
        .unwrap();
    for row in 0..3 {
        for i in 0..32 {
            let at = row * 64;
            let n0 = x[at + i].hypot(x[at + i + 32]);
            let n1 = y[at + i].hypot(y[at + i + 32]);
            assert!((n0 - n1).abs() < 1e-5, "row {row} pair {i}: {n0} vs {n1}");
        }
    }
}

/// Rows t0 .. t0 + n rotated with offset t0 equal the same rows of the whole sequence (what
/// decoding with a KV cache does).
#[test]
fn offset_rows_match_the_whole_sequence() {
    let dev = shared_device();
    let (b, h, t, d) = (2, 3, 20, 16);
    let rope = Rope::new(&dev, &llama32_like(d), 32).unwrap();
    let x = random_vec(b * h * t * d, -1.0, 1.0, 9);
    let full = up(&dev, &x, &[b, h, t, d])
        .rope(&rope, 0)
        .unwrap()
        .to_vec()
        .unwrap();
    let mut at = 0;
    for n in [1, 1, 5, 13] {
        let part: Vec<f32> = (0..b * h)
            .flat_map(|bh| x[(bh * t + at) * d..(bh * t + at + n) * d].to_vec())
            .collect();
        let want: Vec<f32> = (0..b * h)
            .flat_map(|bh| full[(bh * t + at) * d..(bh * t + at + n) * d].to_vec())
            .collect();
        let got = up(&dev, &part, &[b, h, n, d])
            .rope(&rope, at)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(got, want, "rows {at}..{}", at + n);
        at += n;
    }
}

fn llama32_like(d: usize) -> RopeConfig {
    let s = RopeScaling::llama3(32.0, 1.0, 4.0, 16.0).unwrap();
    RopeConfig::new(d, 500_000.0, Some(s)).unwrap()
}

#[test]
fn gradients() {
    let dev = shared_device();
    for &(b, h, t, d, off) in &[(2, 3, 5, 6, 0), (1, 2, 9, 16, 7), (1, 1, 3, 2, 40)] {
        let c = config(d, true);
        let rope = Rope::new(&dev, &c, 64).unwrap();
        let inv = c.inv_freq();
        check_grad(
            &format!("rope ({b}, {h}, {t}, {d}) offset {off}"),
            &[inp(&[b, h, t, d], -2.0, 2.0)],
            &|x| x[0].rope(&rope, off),
            &|x| r::rope(&x[0], t, &inv, off),
            &|_, g| vec![r::rope_backward(g, t, &inv, off)],
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = shared_device();
    let rope = Rope::new(&dev, &config(16, false), 10).unwrap();
    let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    let e = z(&[1, 2, 3, 8]).rope(&rope, 0).unwrap_err().to_string();
    assert!(
        e.contains("rope") && e.contains("[1, 2, 3, 8]") && e.contains("16"),
        "{e}"
    );
    let e = z(&[2, 3, 16]).rope(&rope, 0).unwrap_err().to_string();
    assert!(e.contains("rope") && e.contains("[2, 3, 16]"), "{e}");
    let e = z(&[1, 1, 4, 16]).rope(&rope, 7).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { op: "rope", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("7..11") && e.to_string().contains("10"),
        "{e}"
    );
    z(&[1, 1, 4, 16]).rope(&rope, 6).unwrap();
    let ids = Tensor::from_u32(&dev, &[0; 16], &[1, 1, 1, 16]).unwrap();
    assert!(matches!(
        ids.rope(&rope, 0),
        Err(Error::DType { op: "rope", .. })
    ));
    let half = z(&[1, 1, 1, 16]).to_dtype(DType::BF16).unwrap();
    assert!(matches!(
        half.rope(&rope, 0),
        Err(Error::DType { op: "rope", .. })
    ));
    assert!(Rope::new(&dev, &config(16, false), 0).is_err());
    // Configs.
    for d in [0, 7] {
        assert!(RopeConfig::new(d, 10_000.0, None).is_err(), "head_dim {d}");
    }
    for theta in [f64::NAN, 0.5, -1.0, f64::INFINITY] {
        assert!(RopeConfig::new(8, theta, None).is_err(), "theta {theta}");
    }
    // Scalings: only llama3 (and "default", no scaling).
    assert_eq!(
        RopeScaling::from_hf("default", None, None, None, None).unwrap(),
        None
    );
    let s = RopeScaling::from_hf("llama3", Some(8.0), Some(1.0), Some(4.0), Some(8192.0)).unwrap();
    assert_eq!(s, Some(RopeScaling::llama3(8.0, 1.0, 4.0, 8192.0).unwrap()));
    for other in ["linear", "dynamic", "yarn", "longrope"] {
        let e = RopeScaling::from_hf(other, Some(2.0), None, None, None).unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    op: "rope_scaling",
                    ..
                }
            ) && m.contains(other)
                && m.contains("llama3"),
            "{m}"
        );
    }
    let m = RopeScaling::from_hf("llama3", Some(8.0), Some(1.0), None, Some(8192.0))
        .unwrap_err()
        .to_string();
    assert!(m.contains("high_freq_factor"), "{m}");
    for (f, lo, hi, old) in [
        (0.5, 1.0, 4.0, 8192.0),
        (8.0, 4.0, 1.0, 8192.0),
        (8.0, 1.0, 1.0, 8192.0),
        (8.0, 0.0, 4.0, 8192.0),
        (8.0, 1.0, 4.0, 0.0),
        (f64::NAN, 1.0, 4.0, 8192.0),
    ] {
        assert!(
            RopeScaling::llama3(f, lo, hi, old).is_err(),
            "{f} {lo} {hi} {old}"
        );
    }
}

/// More pairs than one grid dimension's 65,535 workgroups of 256 (the grid folds into 2-D):
/// 65,535 * 256 + 1 heads of one row of D = 2 at position 5.
#[test]
fn pairs_past_one_grid_dimension() {
    let dev = shared_device();
    let h = 65_535 * 256 + 1;
    let c = config(2, false);
    let rope = Rope::new(&dev, &c, 8).unwrap();
    let x = random_vec(2 * h, -1.0, 1.0, 77);
    let y = up(&dev, &x, &[1, h, 1, 2]).rope(&rope, 5).unwrap();
    let want = r::rope(&f64s(&x), 1, &c.inv_freq(), 5);
    assert_close(
        "rope past the grid",
        &y.to_vec().unwrap(),
        &want,
        1e-5,
        1e-6,
    );
}
