//! Matmul kernel choice measured on the adapter at hand, not guessed.
//!
//! For a shape class (M, N, K each rounded up to a power of two, the operand dtypes, the
//! transposes, batched or not) the candidate kernels run on the product's own operands (a
//! warm-up run, then the best of 3 timed batches, wall time around `Device::sync`; the
//! caller's pending work is synced first, so none of it is timed), the fastest is kept for the
//! process and
//! saved per adapter (name, driver, backend) in `matmul_autotune.json` in the cache directory:
//! `$PORTAGRAD_CACHE_DIR`, else `$XDG_CACHE_HOME/portagrad`, else `~/.cache/portagrad`. The
//! file is written atomically (a temporary file renamed over it); a file that does not parse
//! is ignored with a warning and replaced on the next save.
//!
//! `PORTAGRAD_AUTOTUNE=0` turns it off (the rule in `launch.rs` decides), `=1` turns it on.
//! Unset, it is on for GPUs and off for CPU adapters: on lavapipe the "GPU" is the CPU the
//! rest of the process (and the machine) shares, so timings of a few milliseconds are noise
//! (the same kernel varies 2x between runs on a busy 2-core machine), and a test suite of
//! hundreds of distinct small shapes would pay for the measurements; the rule there is backed
//! by measurements already (see `launch.rs`).
//!
//! The candidates are kernels that are each tested against the f64 reference, so a choice
//! changes results only within their accuracy; a kernel forced by a test
//! (`testing::force_kernel`, `PORTAGRAD_KERNELS`) is never replaced. The measuring runs stay
//! out of `Device::stats()` (they are not the caller's work), so dispatch counts do not depend
//! on whether a class was measured before. Off in a browser (timing needs a blocking sync). Timings are wall time
//! around a sync rather than GPU timestamps (the runtime records every op into one compute
//! pass), so launch overhead counts too, which is what a caller pays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Job;
use super::launch::{self as mm, Kernel};
use crate::error::Result;
use crate::runtime::Device;

/// File name in the cache directory.
pub(crate) const FILE: &str = "matmul_autotune.json";

/// The process's choices and where they persist.
struct State {
    enabled_env: Option<String>,
    dir: Option<PathBuf>,
    /// adapter key -> shape class -> kernel name.
    choices: BTreeMap<String, BTreeMap<String, String>>,
    loaded: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forget the process's choices and read the environment again (tests).
pub(crate) fn reset() {
    *state() = None;
}

/// Autotuning on or off and the cache directory, instead of the environment (tests). A fresh
/// state: the next product loads the file again.
pub(crate) fn configure(on: bool, dir: Option<PathBuf>) {
    *state() = Some(State {
        enabled_env: Some(if on { "1" } else { "0" }.to_string()),
        dir,
        choices: BTreeMap::new(),
        loaded: false,
    });
}

fn fresh_state() -> State {
    State {
        enabled_env: std::env::var("PORTAGRAD_AUTOTUNE").ok(),
        dir: cache_dir(
            std::env::var_os("PORTAGRAD_CACHE_DIR"),
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
        ),
        choices: BTreeMap::new(),
        loaded: false,
    }
}

/// Whether autotuning is on: `PORTAGRAD_AUTOTUNE` `0` / `1`, else on for GPUs only.
pub(crate) fn enabled(env: Option<&str>, is_cpu: bool) -> bool {
    // A browser cannot block on the GPU, which timing needs.
    if cfg!(target_arch = "wasm32") {
        return false;
    }
    match env.map(str::trim) {
        Some("0") | Some("off") | Some("false") => false,
        Some("1") | Some("on") | Some("true") => true,
        _ => !is_cpu,
    }
}

/// The cache directory from `PORTAGRAD_CACHE_DIR`, `XDG_CACHE_HOME` and `HOME`, in that order.
pub(crate) fn cache_dir(
    own: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(own)
        .or_else(|| set(xdg).map(|d| d.join("portagrad")))
        .or_else(|| set(home).map(|h| h.join(".cache").join("portagrad")))
}

/// Adapter identity for the cache: name, driver and backend.
pub(crate) fn adapter_key(dev: &Device) -> String {
    let i = dev.info();
    format!("{} | {} | {}", i.name, i.driver, i.backend)
}

fn bucket(x: usize) -> usize {
    x.max(1).next_power_of_two()
}

/// The shape class of a product.
fn class(j: &Job) -> String {
    let t = match (j.trans_a, j.trans_b) {
        (false, false) => "nn",
        (false, true) => "nt",
        (true, false) => "tn",
        (true, true) => "tt",
    };
    let batched = if j.batch.dims.iter().product::<usize>() > 1 {
        "_batched"
    } else {
        ""
    };
    let out = if j.out == crate::tensor::DType::F32 {
        String::new()
    } else {
        format!("_to_{}", j.out.name())
    };
    format!(
        "m{}_n{}_k{}_{}x{}_{t}{batched}{out}",
        bucket(j.m),
        bucket(j.n),
        bucket(j.k),
        j.a.dtype.name(),
        j.b.dtype.name()
    )
}

/// The candidates for a product on this device: (name, kernel), the rule's choice first
/// (`None`: the rule, with its split-K).
fn candidates(dev: &Device, j: &Job) -> Vec<(&'static str, Option<Kernel>)> {
    let info = dev.info();
    let mut c: Vec<(&'static str, Option<Kernel>)> = Vec::new();
    if mm::coop_default(dev, j.a.dtype, j.b.dtype, j.m) {
        c.push(("coop", Some(Kernel::Coop(None))));
        c.push(("coop64", Some(Kernel::Coop(Some(false)))));
        c.push(("coop128", Some(Kernel::Coop(Some(true)))));
        c.push(("portable", None));
        return c;
    }
    c.push(("rule", None));
    if info.is_cpu {
        if dev.has_subgroups() && matches!(info.subgroup_sizes, Some((8, 8)) | Some((16, 16))) {
            c.push(("subgroup", Some(Kernel::Subgroup)));
        }
        c.push(("rows", Some(Kernel::Rows)));
    } else if j.m <= 4 {
        c.push(("rows", Some(Kernel::Rows)));
        c.push(("gemv_gpu", Some(Kernel::Gemv)));
    } else {
        c.push(("tiled4", Some(Kernel::TiledTm(4))));
        c.push(("tiled8", Some(Kernel::TiledTm(8))));
        if mm::vec4_ok(j.m, j.n, j.k, j.trans_a, j.trans_b) {
            c.push(("wide", Some(Kernel::Wide)));
        }
    }
    c
}

/// The rule's kernel for a product (what runs with autotuning off).
fn rule(dev: &Device, j: &Job) -> Option<Kernel> {
    mm::coop_default(dev, j.a.dtype, j.b.dtype, j.m).then_some(Kernel::Coop(None))
}

/// The kernel to run `j` with (`None`: the rule's own choice, split-K included).
pub(super) fn choose(j: &Job) -> Result<Option<Kernel>> {
    let dev = &j.a.dev;
    let on = {
        let mut g = state();
        let st = g.get_or_insert_with(fresh_state);
        enabled(st.enabled_env.as_deref(), dev.info().is_cpu)
    };
    let batch: usize = j.batch.dims.iter().product();
    if !on || j.m == 0 || j.n == 0 || j.k == 0 || batch == 0 {
        return Ok(rule(dev, j));
    }
    let cands = candidates(dev, j);
    if cands.len() < 2 {
        return Ok(rule(dev, j));
    }
    let (adapter, class) = (adapter_key(dev), class(j));
    if let Some(name) = lookup(&adapter, &class)
        && let Some(&(_, k)) = cands.iter().find(|(n, _)| *n == name)
    {
        return Ok(k);
    }
    let best = crate::runtime::uncounted(|| measure(j, &cands))?;
    record(&adapter, &class, best.0);
    Ok(best.1)
}

/// The cached choice, loading the file on first use.
fn lookup(adapter: &str, class: &str) -> Option<String> {
    let mut g = state();
    let st = g.get_or_insert_with(fresh_state);
    if !st.loaded {
        st.loaded = true;
        if let Some(dir) = &st.dir {
            st.choices = load(&dir.join(FILE));
        }
    }
    st.choices.get(adapter)?.get(class).cloned()
}

/// Keep a choice for the process and write the file (merged with what it holds now, so
/// processes that tune at the same time lose nothing but a race on the same class).
fn record(adapter: &str, class: &str, kernel: &str) {
    let mut g = state();
    let st = g.get_or_insert_with(fresh_state);
    st.choices
        .entry(adapter.to_string())
        .or_default()
        .insert(class.to_string(), kernel.to_string());
    if let Some(dir) = st.dir.clone() {
        let path = dir.join(FILE);
        let mut merged = load_quiet(&path);
        for (a, m) in &st.choices {
            merged.entry(a.clone()).or_default().extend(m.clone());
        }
        if let Err(e) = save(&path, &merged) {
            eprintln!(
                "portagrad: could not save matmul autotune choices to {}: {e}",
                path.display()
            );
        }
    }
}

/// Time each candidate on `j`'s own operands; the fastest (ties: the earlier, so the rule).
fn measure(
    j: &Job,
    cands: &[(&'static str, Option<Kernel>)],
) -> Result<(&'static str, Option<Kernel>)> {
    let dev = &j.a.dev;
    dev.sync()?; // the caller's pending work is not part of any candidate's time
    let mut best: Option<(f64, &'static str, Option<Kernel>)> = None;
    for &(name, kernel) in cands {
        match time(dev, j, kernel) {
            Ok(t) => {
                if best.is_none_or(|(b, _, _)| t < b) {
                    best = Some((t, name, kernel));
                }
            }
            // A candidate that fails here (a driver that rejects the module) is not chosen;
            // the rule's own error, if any, surfaces when the product runs.
            Err(e) => eprintln!("portagrad: matmul autotune: {name} failed: {e}"),
        }
    }
    Ok(best.map_or((cands[0].0, cands[0].1), |(_, n, k)| (n, k)))
}

/// Seconds per run of `j` with `kernel`: best of 3 batches after a warm-up run.
fn time(dev: &Device, j: &Job, kernel: Option<Kernel>) -> Result<f64> {
    let run = || super::execute_with("matmul autotune", j.clone(), kernel).map(drop);
    run()?; // pipeline compilation, buffer pool
    dev.sync()?;
    let t0 = crate::time::Instant::now();
    run()?;
    dev.sync()?;
    let once = t0.elapsed().as_secs_f64();
    // Batches of about 5 ms, so one launch's overhead does not dominate small products.
    let reps = ((0.005 / once.max(1e-7)).ceil() as usize).clamp(1, 20);
    let mut best = once;
    for _ in 0..3 {
        let t = crate::time::Instant::now();
        for _ in 0..reps {
            run()?;
        }
        dev.sync()?;
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(best)
}

type Choices = BTreeMap<String, BTreeMap<String, String>>;

/// The choices in `path`; an absent file is empty, a corrupt one is empty with a warning.
pub(crate) fn load(path: &Path) -> Choices {
    match std::fs::read_to_string(path) {
        Err(_) => Choices::new(),
        Ok(text) => parse(&text).unwrap_or_else(|e| {
            eprintln!(
                "portagrad: ignoring the matmul autotune cache {} ({e}); it is rewritten on the next choice",
                path.display()
            );
            Choices::new()
        }),
    }
}

fn load_quiet(path: &Path) -> Choices {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| parse(&t).ok())
        .unwrap_or_default()
}

/// `{"version": 1, "adapters": {adapter: {class: kernel}}}`.
pub(crate) fn parse(text: &str) -> std::result::Result<Choices, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if v.get("version").and_then(serde_json::Value::as_u64) != Some(1) {
        return Err("not version 1".into());
    }
    let adapters = v
        .get("adapters")
        .and_then(serde_json::Value::as_object)
        .ok_or("no adapters object")?;
    let mut out = Choices::new();
    for (a, classes) in adapters {
        let classes = classes
            .as_object()
            .ok_or("adapter entry is not an object")?;
        let m = out.entry(a.clone()).or_default();
        for (c, k) in classes {
            let k = k.as_str().ok_or("kernel name is not a string")?;
            m.insert(c.clone(), k.to_string());
        }
    }
    Ok(out)
}

/// Write `choices` to `path` atomically: a temporary file in the same directory, renamed.
pub(crate) fn save(path: &Path, choices: &Choices) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "version": 1,
        "adapters": choices,
    }))
    .map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("portagrad-autotune-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn on_for_gpus_off_for_cpu_adapters_and_by_the_variable() {
        assert!(enabled(None, false));
        assert!(!enabled(None, true));
        assert!(!enabled(Some("0"), false));
        assert!(enabled(Some("1"), true));
        assert!(enabled(Some("junk"), false) && !enabled(Some("junk"), true));
    }

    #[test]
    fn cache_dir_order() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(
            cache_dir(s("/o"), s("/x"), s("/h")),
            Some(PathBuf::from("/o"))
        );
        assert_eq!(
            cache_dir(None, s("/x"), s("/h")),
            Some(PathBuf::from("/x/portagrad"))
        );
        assert_eq!(
            cache_dir(s(""), None, s("/h")),
            Some(PathBuf::from("/h/.cache/portagrad"))
        );
        assert_eq!(cache_dir(None, None, None), None);
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tmpdir("rt");
        let path = dir.join(FILE);
        let mut c = Choices::new();
        c.entry("GPU | driver 1 | Vulkan".into())
            .or_default()
            .insert("m1024_n1024_k1024_f16xf16_nn".into(), "coop128".into());
        c.entry("other \"quoted\" | x | Metal".into())
            .or_default()
            .insert("m8_n8_k8_f32xf32_tn".into(), "rule".into());
        save(&path, &c).unwrap();
        assert_eq!(load(&path), c);
        // Atomic: no temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_ignored() {
        let dir = tmpdir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE);
        for text in [
            "{\"version\": 1, \"adapters\": {\"a\": {\"c\": ",
            "\u{0}\u{1}garbage",
            "{\"version\": 2, \"adapters\": {}}",
            "{\"version\": 1, \"adapters\": {\"a\": {\"c\": 3}}}",
            "[]",
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(load(&path).is_empty(), "{text:?}");
        }
        assert!(load(&dir.join("absent.json")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
