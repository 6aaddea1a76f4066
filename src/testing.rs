//! Helpers for testing GPU code against CPU references, used by this crate's own tests and
//! offered to applications that test what they build on portagrad.

use crate::{Device, Error, Result};

/// Open the default device or return an error whose message says what to install.
/// Tests should `expect` it: with no adapter a GPU test must fail, never pass vacuously.
pub fn device() -> Result<Device> {
    Device::new().map_err(|e| match e {
        Error::NoAdapter { .. } => e,
        other => Error::NoAdapter {
            detail: format!(" (opening the default adapter failed: {other})"),
        },
    })
}

/// The shared device of a test binary: opened once, reused by every test in it.
/// Panics with the install message when there is no adapter.
pub fn shared_device() -> Device {
    static DEV: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    match DEV.get_or_init(|| device().map_err(|e| e.to_string())) {
        Ok(d) => d.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

/// The worst element of a comparison.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Index of the first element outside tolerance.
    pub first_bad: Option<usize>,
    /// Index of the largest error relative to the tolerance.
    pub worst: usize,
    /// Got / expected at `worst`.
    pub got: f64,
    /// Expected value at `worst`.
    pub want: f64,
    /// Elements outside tolerance.
    pub bad: usize,
}

/// Compare element by element: `|got - want| <= atol + rtol * |want|`. NaN matches only NaN,
/// infinities only the same infinity. Returns a report of the worst element.
pub fn compare(got: &[f32], want: &[f64], rtol: f64, atol: f64) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "length mismatch: got {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut m = Mismatch {
        first_bad: None,
        worst: 0,
        got: 0.0,
        want: 0.0,
        bad: 0,
    };
    let mut worst_ratio = -1.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        let ok_special = (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w);
        let tol = atol + rtol * w.abs();
        let err = (g - w).abs();
        let ratio = if ok_special {
            0.0
        } else if err.is_nan() {
            f64::INFINITY
        } else {
            err / tol.max(f64::MIN_POSITIVE)
        };
        if ratio > worst_ratio {
            worst_ratio = ratio;
            m.worst = i;
            m.got = g;
            m.want = w;
        }
        if ratio > 1.0 {
            m.bad += 1;
            m.first_bad.get_or_insert(i);
        }
    }
    match m.first_bad {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {} elements outside tolerance (rtol {rtol:e}, atol {atol:e}); first mismatch at index {first}: got {} expected {}; worst at {}: got {} expected {}",
            m.bad,
            got.len(),
            got[first],
            want[first],
            m.worst,
            m.got,
            m.want
        )),
    }
}

/// [`compare`], panicking with the report (for use in `#[test]` functions).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    if let Err(msg) = compare(got, want, rtol, atol) {
        panic!("{what}: {msg}");
    }
}

/// Deterministic pseudo-random f32 values in `[lo, hi)` for test inputs (SplitMix64).
pub fn random_vec(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}
