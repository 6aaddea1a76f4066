//! Devices opened, used and dropped from several threads at once, many rounds: the check that
//! the process-wide serialisation of opening and closing devices holds (a test binary that
//! opened nine devices from nine threads hung in 2 of 7 runs on an H100 before it existed).
//!
//! `PORTAGRAD_STRESS_ROUNDS` sets the total rounds (default 200, spread over 4 threads);
//! `PORTAGRAD_STRESS_SECS` the watchdog's deadline (default 600 s). A hang fails the test
//! with a message instead of blocking CI.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use portagrad::testing::random_vec;
use portagrad::{Device, DeviceOptions, Tensor};

const THREADS: usize = 4;

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// `a (m, k) @ b (k, n)` in f64, the reference the device's result is compared to.
fn matmul_cpu(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                .sum();
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// One round: open a device, run a small matmul and an add, read back, compare, drop.
fn round(seed: u64) -> Result<(), String> {
    let (m, k, n) = (5, 7, 3);
    let a = random_vec(m * k, -1.0, 1.0, seed);
    let b = random_vec(k * n, -1.0, 1.0, seed + 1);
    let dev = Device::with_options(DeviceOptions::new()).map_err(|e| format!("open: {e}"))?;
    let ta = Tensor::from_slice(&dev, &a, &[m, k]).map_err(|e| e.to_string())?;
    let tb = Tensor::from_slice(&dev, &b, &[k, n]).map_err(|e| e.to_string())?;
    let c = ta.matmul(&tb).map_err(|e| e.to_string())?;
    let d = c.add(&c).map_err(|e| e.to_string())?;
    let got = d.to_vec().map_err(|e| e.to_string())?;
    let want = matmul_cpu(&a, &b, m, k, n);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if (g - 2.0 * w).abs() > 1e-4 {
            return Err(format!("element {i}: {g} vs CPU {}", 2.0 * w));
        }
    }
    // Tensors first, the device last: its resources go with the last handle.
    drop((ta, tb, c, d));
    drop(dev);
    Ok(())
}

#[test]
fn devices_opened_used_and_dropped_from_several_threads_never_hang() {
    let rounds = env_or("PORTAGRAD_STRESS_ROUNDS", 200) as usize;
    let deadline = Duration::from_secs(env_or("PORTAGRAD_STRESS_SECS", 600));
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, Result<(), String>)>();
    for t in 0..THREADS {
        let tx = tx.clone();
        // Thread t takes rounds t, t + THREADS, ...
        std::thread::spawn(move || {
            for r in (t..rounds).step_by(THREADS) {
                let res = round(r as u64 * 7919);
                let failed = res.is_err();
                if tx.send((r, res)).is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut done = 0;
    while done < rounds {
        let left = deadline.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((_, Ok(()))) => done += 1,
            Ok((r, Err(e))) => panic!("round {r} failed: {e}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The stuck threads may hold locks a normal exit would wait on: leave now.
                eprintln!(
                    "runtime_stress: HUNG: {done} of {rounds} rounds done after {:?} \
                     ({THREADS} threads opening, using and dropping devices)",
                    start.elapsed()
                );
                std::process::exit(1);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a worker thread died after {done} of {rounds} rounds")
            }
        }
    }
    eprintln!(
        "runtime_stress: {rounds} rounds on {THREADS} threads in {:.1?}",
        start.elapsed()
    );
}
