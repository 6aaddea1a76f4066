//! `cargo run --release --example bench attention` — fused attention: forward and
//! forward+backward time and peak memory against what a naive (T, T) implementation holds,
//! and KV-cache decode step time.

use std::time::Instant;

use portagrad::testing::{Family, with_kernel};
use portagrad::{Device, KvCache, Result, Tensor, attend_cached, attention, attention_variant};

/// CPU seconds this process has used (user + system), where Linux reports them. On a CPU
/// adapter (lavapipe) this is the work done, independent of other processes on the machine.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// (wall seconds, process CPU seconds) of `f`, the final sync included.
fn timed(dev: &Device, f: impl FnOnce() -> Result<()>) -> Result<(f64, Option<f64>)> {
    dev.sync()?;
    let c = cpu_seconds();
    let t = Instant::now();
    f()?;
    dev.sync()?;
    let cpu = c.zip(cpu_seconds()).map(|(a, b)| b - a);
    Ok((t.elapsed().as_secs_f64(), cpu))
}

/// Best of `reps` runs of `f` (others may share a CPU adapter's cores).
fn best(dev: &Device, reps: usize, f: impl Fn() -> Result<()>) -> Result<(f64, Option<f64>)> {
    let mut out = (f64::INFINITY, None);
    for _ in 0..reps {
        let r = timed(dev, &f)?;
        if r.0 < out.0 {
            out = r;
        }
    }
    Ok(out)
}

struct CaseResult {
    fwd: (f64, Option<f64>),
    both: (f64, Option<f64>),
    /// Peak bytes allocated above the inputs during forward + backward.
    peak: u64,
}

/// One training-shape case, each time the best of `reps` runs.
fn case(dev: &Device, dims: [usize; 4], causal: bool, reps: usize) -> Result<CaseResult> {
    case_gqa(dev, dims, dims[1], causal, reps)
}

/// [`case`] with `hkv` K/V heads (grouped-query attention when fewer than the query heads).
fn case_gqa(
    dev: &Device,
    dims: [usize; 4],
    hkv: usize,
    causal: bool,
    reps: usize,
) -> Result<CaseResult> {
    let kv = [dims[0], hkv, dims[2], dims[3]];
    let q = Tensor::rand_normal(dev, &dims, 0.0, 1.0, 1)?.with_grad();
    let k = Tensor::rand_normal(dev, &kv, 0.0, 1.0, 2)?.with_grad();
    let v = Tensor::rand_normal(dev, &kv, 0.0, 1.0, 3)?.with_grad();
    let g = Tensor::rand_normal(dev, &dims, 0.0, 1.0, 4)?;
    let fwd = best(dev, reps, || {
        let _ng = portagrad::no_grad();
        drop(attention(&q, &k, &v, causal)?);
        Ok(())
    })?;
    dev.sync()?;
    dev.reset_stats();
    let base = dev.stats().live_bytes;
    let both = best(dev, reps, || {
        let o = attention(&q, &k, &v, causal)?;
        drop(o.backward_with(&g)?);
        Ok(())
    })?;
    Ok(CaseResult {
        fwd,
        both,
        peak: dev.stats().peak_bytes - base,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn cpu(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| format!("{c:.2}"))
}

/// Forward/backward table, then decode steps.
pub fn run(dev: &Device) -> Result<()> {
    println!(
        "\n## attention ({} kernels for D = 64)",
        attention_variant(dev, 64)
    );
    // Warm-up: compile every pipeline (the forward and both backward kernels, both masks).
    let (compile, _) = timed(dev, || {
        case(dev, [1, 1, 64, 64], true, 1)?;
        case(dev, [1, 1, 64, 64], false, 1)?;
        Ok(())
    })?;
    println!("first calls (pipeline compilation, D = 64): {compile:.1} s\n");
    // GPUs: the portable and the tiled kernels side by side; CPU adapters: their own kind only.
    let kinds: &[&'static str] = if dev.info().is_cpu {
        &["default"]
    } else {
        &["portable", "tiled"]
    };
    for &kind in kinds.iter().filter(|&&k| k != "default") {
        with_kernel(Family::Attention, kind, || -> Result<()> {
            case(dev, [1, 1, 64, 64], true, 1)?;
            case(dev, [1, 1, 64, 64], false, 1)?;
            Ok(())
        })??;
    }
    println!(
        "| kernels | B, H, T, D | mask | forward | forward+backward | forward GFLOP/s | fwd+bwd GFLOP/s | process CPU-s fwd / fwd+bwd | peak bytes fwd+bwd (above inputs) | naive (T, T) scores + probabilities |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut cases = vec![([4, 12, 1024, 64], true), ([4, 12, 1024, 64], false)];
    if !dev.info().is_cpu {
        // The Shakespeare GPT's attention (6 heads of 64, T = 256, batch 64).
        cases.push(([64, 6, 256, 64], true));
    }
    let mut i = 0;
    while i < cases.len() {
        let (dims @ [b, h, t, d], causal) = cases[i];
        let mut slow = false;
        for &kind in kinds {
            let r = with_kernel(Family::Attention, kind, || case(dev, dims, causal, 2))??;
            // QKᵀ and PV: 2 · 2·T·T·D flops per head, half of it under a causal mask. The
            // backward counts as 2.5 forwards (FlashAttention's convention: five T·T·D
            // products), though the dQ and dK/dV kernels each recompute S and dP.
            let flops = 4.0 * (b * h * t * t * d) as f64 * if causal { 0.5 } else { 1.0 };
            let naive = 2 * (b * h * t * t * 4) as u64;
            println!(
                "| {} | {b}, {h}, {t}, {d} | {} | {:.1} ms | {:.1} ms | {:.1} | {:.1} | {} / {} | {} | {} |",
                with_kernel(Family::Attention, kind, || attention_variant(dev, d))?,
                if causal { "causal" } else { "none" },
                r.fwd.0 * 1e3,
                r.both.0 * 1e3,
                flops / r.fwd.0 / 1e9,
                3.5 * flops / r.both.0 / 1e9,
                cpu(r.fwd.1),
                cpu(r.both.1),
                mib(r.peak),
                mib(naive),
            );
            slow |= r.both.0 > 60.0;
        }
        if i == 0 && slow {
            println!("(over a minute on this adapter: a smaller case follows instead)");
            cases[1] = ([1, 4, 512, 64], true);
        }
        i += 1;
    }

    // A Transformer block's attention from a fused QKV projection: three ops or one.
    let (b, t, c, h) = (16, 128, 128, 4);
    println!(
        "\n| QKV (B={b}, T={t}, 3C={}) -> (B, T, C), H={h}, causal | forward | forward+backward |",
        3 * c
    );
    println!("|---|---|---|");
    let qkv = Tensor::rand_normal(dev, &[b, t, 3 * c], 0.0, 1.0, 10)?.with_grad();
    let g = Tensor::rand_normal(dev, &[b, t, c], 0.0, 1.0, 11)?;
    type Block = fn(&Tensor, usize) -> Result<Tensor>;
    let three: Block = |x, h| {
        let (q, k, v) = portagrad::split_heads(x, h)?;
        portagrad::merge_heads(&attention(&q, &k, &v, true)?)
    };
    let fused: Block = |x, h| portagrad::attention_qkv(x, h, true);
    for (name, f) in [
        ("split_heads + attention + merge_heads", three),
        ("attention_qkv", fused),
    ] {
        f(&qkv, h)?.backward_with(&g)?; // warm-up
        let (fwd, _) = best(dev, 5, || {
            let _ng = portagrad::no_grad();
            drop(f(&qkv, h)?);
            Ok(())
        })?;
        let (both, _) = best(dev, 5, || {
            drop(f(&qkv, h)?.backward_with(&g)?);
            Ok(())
        })?;
        println!("| {name} | {:.2} ms | {:.2} ms |", fwd * 1e3, both * 1e3);
    }

    // Decode: B = 4 sequences, H = 12, D = 64; one position appended, then one query attended.
    let (b, h, d, max_len) = (4, 12, 64, 1024);
    println!(
        "\n| decode B={b}, H={h}, D={d}: cache length | append + attend_cached per step | attend_cached alone |"
    );
    println!("|---|---|---|");
    let mut cache = KvCache::new(dev, b, h, max_len, d)?;
    let one = [b, h, 1, d];
    let q = Tensor::rand_normal(dev, &one, 0.0, 1.0, 7)?;
    let k1 = Tensor::rand_normal(dev, &one, 0.0, 1.0, 8)?;
    let v1 = Tensor::rand_normal(dev, &one, 0.0, 1.0, 9)?;
    let _ng = portagrad::no_grad();
    for len in [128, 512, 1024] {
        // Fill len - 1 positions; each timed step appends position len - 1 and attends.
        cache.reset();
        let prefix = [b, h, len - 1, d];
        cache.append(
            &Tensor::rand_normal(dev, &prefix, 0.0, 1.0, 5)?,
            &Tensor::rand_normal(dev, &prefix, 0.0, 1.0, 6)?,
        )?;
        cache.append(&k1, &v1)?;
        drop(attend_cached(&q, &cache)?); // warm-up
        let reps = 20;
        let (step, _) = timed(dev, || {
            for _ in 0..reps {
                cache.truncate(len - 1)?;
                cache.append(&k1, &v1)?;
                drop(attend_cached(&q, &cache)?);
            }
            Ok(())
        })?;
        let (attend, _) = timed(dev, || {
            for _ in 0..reps {
                drop(attend_cached(&q, &cache)?);
            }
            Ok(())
        })?;
        println!(
            "| {len} | {:.3} ms | {:.3} ms |",
            step * 1e3 / f64::from(reps),
            attend * 1e3 / f64::from(reps)
        );
    }
    Ok(())
}

/// `cargo run --release --example bench gqa` — grouped-query attention at SmolLM2-135M's head
/// counts (9 query heads of 64; 9, 3 and 1 K/V heads): K/V are read in place, never repeated,
/// and dK/dV sum their group inside the kernel.
pub fn run_gqa(dev: &Device) -> Result<()> {
    println!(
        "\n## grouped-query attention ({} kernels for D = 64)",
        attention_variant(dev, 64)
    );
    let dims @ [b, h, t, d] = [1, 9, 512, 64];
    println!("\n| K/V heads (B={b}, H={h}, T={t}, D={d}, causal) | forward | forward+backward |");
    println!("|---|---|---|");
    for hkv in [9, 3, 1] {
        case_gqa(dev, dims, hkv, true, 1)?; // warm-up
        let r = case_gqa(dev, dims, hkv, true, 3)?;
        println!(
            "| {hkv} | {:.1} ms | {:.1} ms |",
            r.fwd.0 * 1e3,
            r.both.0 * 1e3
        );
    }
    Ok(())
}
