//! Reliability: a checkpoint survives a process killed in the middle of writing the next one;
//! two threads training on one device get the bits of running one after the other; after
//! training stops on a non-finite loss, the last good checkpoint still loads.
//! (Flat memory over long runs is `tests/soak.rs`, in its own process so that other tests do
//! not move the figures it watches.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portagrad::io::checkpoint;
use portagrad::nn::{self, Module};
use portagrad::optim::Optimizer;
use portagrad::testing::{random_vec, shared_device};
use portagrad::train::{Batch, Dataset, FitConfig, Progress, Targets, fit, train_step};
use portagrad::{Activation, Device, Error, Tensor};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portagrad-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// Crash safety.

/// Set in the child process: the directory it writes checkpoints into.
const CHILD_ENV: &str = "PORTAGRAD_CRASH_CHILD_DIR";
/// Set in the child process: `save_tensors` to write with `models::save_tensors` (the Hugging
/// Face form), else `io::checkpoint::save_params`.
const API_ENV: &str = "PORTAGRAD_CRASH_CHILD_API";
/// Set in the child process: the first generation it writes.
const FIRST_ENV: &str = "PORTAGRAD_CRASH_CHILD_FIRST";
/// Parameter tensors of the crash-test checkpoint: 4 x 2M f32 = 32 MiB per file.
const CRASH_SHAPES: [[usize; 2]; 4] = [[1024, 2048]; 4];

/// The values of generation `g` of the checkpoint: distinct per element and per generation.
fn generation(g: u32, tensor: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| g as f32 * 4096.0 + tensor as f32 * 1024.0 + (i % 1021) as f32 * 0.25)
        .collect()
}

fn crash_params(dev: &Device, g: u32) -> Vec<(String, Tensor)> {
    CRASH_SHAPES
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let v = generation(g, k, s[0] * s[1]);
            (
                format!("w{k}"),
                Tensor::from_slice(dev, &v, s).unwrap().with_grad(),
            )
        })
        .collect()
}

/// Child mode (only when the parent sets the variable): write generations n, n + 1, ... of the
/// checkpoint to the same path forever, announcing each completed write.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dev = Device::new().unwrap();
    let path = Path::new(&dir).join("ckpt.safetensors");
    let first: u32 = std::env::var(FIRST_ENV).unwrap().parse().unwrap();
    let hf = std::env::var(API_ENV).is_ok_and(|a| a == "save_tensors");
    for g in first.. {
        let params = crash_params(&dev, g);
        if hf {
            portagrad::models::save_tensors(&path, &params).unwrap();
        } else {
            checkpoint::save_params(&path, &params, None).unwrap();
        }
        println!("done {g}");
    }
}

/// The generation a file written by `models::save_tensors` holds, read with the safetensors
/// crate and checked bit for bit.
fn file_generation(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a complete safetensors file");
    let mut gen_of_file = None;
    for (k, s) in CRASH_SHAPES.iter().enumerate() {
        let t = st.tensor(&format!("w{k}")).expect("every tensor");
        assert_eq!(t.shape(), s);
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        let g = *gen_of_file.get_or_insert((got[0] / 4096.0) as u32);
        let want = generation(g, k, got.len());
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "tensor w{k} is not generation {g} bit for bit"
        );
    }
    gen_of_file.unwrap()
}

/// Which generation `path` holds, checking every value bit for bit against it.
fn loaded_generation(dev: &Device, path: &Path) -> u32 {
    let into: Vec<(String, Tensor)> = CRASH_SHAPES
        .iter()
        .enumerate()
        .map(|(k, s)| (format!("w{k}"), Tensor::zeros(dev, s).unwrap().with_grad()))
        .collect();
    checkpoint::load_params(path, &into, None).expect("the checkpoint loads after the kill");
    let first = into[0].1.to_vec().unwrap()[0];
    let g = (first / 4096.0) as u32;
    for (k, (_, t)) in into.iter().enumerate() {
        let got = t.to_vec().unwrap();
        let want = generation(g, k, got.len());
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "tensor w{k} is not generation {g} bit for bit");
    }
    g
}

/// A child process rewrites a 32 MiB checkpoint in a loop; it is SIGKILLed (`Child::kill`) in
/// the middle of a write, three times. Each time the file still loads and holds, bit for bit,
/// the last generation whose write completed (or the one being written, if the kill came
/// after its rename), never a mix, and at least one kill left the temporary file behind, which
/// shows the kill did land mid-write.
#[test]
fn killed_mid_write_keeps_the_previous_checkpoint() {
    kill_mid_write("checkpoint");
}

/// The same for `models::save_tensors` (what `save_pretrained` writes model.safetensors with).
#[test]
fn killed_mid_write_keeps_the_previous_pretrained_tensors() {
    kill_mid_write("save_tensors");
}

fn kill_mid_write(api: &str) {
    let dev = shared_device();
    let dir = tmp_dir(&format!("crash-{api}"));
    let path = dir.join("ckpt.safetensors");
    let hf = api == "save_tensors";
    // Generation 0, written by this process: what must survive the first kill at the least.
    if hf {
        portagrad::models::save_tensors(&path, &crash_params(&dev, 0)).unwrap();
    } else {
        checkpoint::save_params(&path, &crash_params(&dev, 0), None).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut mid_write = 0;
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env(API_ENV, api)
            .env(FIRST_ENV, (100 * round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for a completed write, then for the next write's temporary file to reach a
        // round-dependent size (empty, some bytes, over half), and kill the child there.
        // Both savers go through `io::write_atomic`: one temporary name.
        let tmp = dir.join(format!(".ckpt.safetensors.tmp{}", child.id()));
        let full = std::fs::metadata(&path).unwrap().len();
        let want = [0, 1, full / 2][round as usize];
        let mut last_done = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "the child never got mid-write");
            for line in rx.try_iter() {
                if let Some(g) = line.strip_prefix("done ") {
                    last_done = Some(g.parse::<u32>().unwrap());
                }
            }
            if last_done.is_some()
                && let Ok(m) = std::fs::metadata(&tmp)
                && m.len() >= want
                && m.len() < full
            {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines the child printed before it died.
        reader.join().unwrap();
        for line in rx.try_iter() {
            if let Some(g) = line.strip_prefix("done ") {
                last_done = Some(g.parse().unwrap());
            }
        }
        let last_done = last_done.unwrap();
        let tmp_left = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .count();
        let g = if hf {
            file_generation(&path)
        } else {
            loaded_generation(&dev, &path)
        };
        println!(
            "{api} round {round}: last completed write {last_done}, file holds {g}, temporary files left {tmp_left}"
        );
        assert!(
            g == last_done || g == last_done + 1,
            "the file holds generation {g}, the last completed write was {last_done}"
        );
        if tmp_left > 0 {
            mid_write += 1;
        }
        // The leftovers of a killed write are the caller's to clean; the next write works.
        for e in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().contains(".tmp") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
    assert!(mid_write > 0, "no kill landed in the middle of a write");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Threads.

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Device>();
    send_sync::<Tensor>();
};

/// 20 Adam steps of a small MLP on fixed data; the final parameters' bits.
fn train_mlp(dev: &Device, seed: u64) -> Vec<Vec<u32>> {
    let (n, d) = (64, 8);
    let x = random_vec(n * d, -1.0, 1.0, seed);
    let y: Vec<f32> = (0..n)
        .map(|i| f32::from(u8::from(x[i * d] + x[i * d + 1] > 0.0)))
        .collect();
    let model = nn::mlp(dev, &[d, 16, 1], Activation::Relu, seed).unwrap();
    let mut opt = Optimizer::adam(model.parameters(), 0.01).unwrap();
    let targets = Targets::Binary(y.clone());
    let batch = Batch {
        x: Tensor::from_slice(dev, &x, &[n, d]).unwrap(),
        y: Tensor::from_slice(dev, &y, &[n, 1]).unwrap(),
        rows: n,
    };
    for _ in 0..20 {
        train_step(&model, &mut opt, &targets, &batch).unwrap();
    }
    model
        .parameters()
        .iter()
        .map(|(_, p)| p.to_vec().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn two_threads_on_one_device_match_running_in_turn() {
    let dev = shared_device();
    let in_turn = [train_mlp(&dev, 1), train_mlp(&dev, 2)];
    for attempt in 0..3 {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| train_mlp(&dev, 1));
            let b = s.spawn(|| train_mlp(&dev, 2));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(a == in_turn[0], "attempt {attempt}: model 1 differs");
        assert!(b == in_turn[1], "attempt {attempt}: model 2 differs");
    }
}

/// Many threads recording, submitting and reading back on one device at once (plus one that
/// only syncs and reads the counters): every result is right, nothing panics or deadlocks.
#[test]
fn concurrent_readbacks_and_syncs_on_one_device() {
    let dev = shared_device();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let syncer = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                dev.sync().unwrap();
                let st = dev.stats();
                assert!(st.live_bytes <= st.peak_bytes.max(st.live_bytes));
                n += 1;
            }
            n
        });
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let dev = &dev;
                s.spawn(move || {
                    for i in 0..40u64 {
                        let n = 1 + ((w * 131 + i * 17) % 300) as usize;
                        let v: Vec<f32> = (0..n).map(|k| (k as f32) * 0.5 + w as f32).collect();
                        let x = Tensor::from_slice(dev, &v, &[n]).unwrap();
                        let y = x.mul_scalar(2.0).unwrap().add(&x).unwrap();
                        let got = if i % 3 == 0 {
                            y.sum().unwrap().to_vec().unwrap()
                        } else {
                            y.to_vec().unwrap()
                        };
                        let want: Vec<f32> = if i % 3 == 0 {
                            vec![v.iter().map(|a| 3.0 * f64::from(*a)).sum::<f64>() as f32]
                        } else {
                            v.iter().map(|a| 3.0 * a).collect()
                        };
                        for (g, e) in got.iter().zip(&want) {
                            assert!(
                                (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                                "thread {w} iteration {i}: {g} != {e}"
                            );
                        }
                    }
                })
            })
            .collect();
        for h in workers {
            h.join().expect("a worker panicked");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(syncer.join().expect("the syncing thread panicked") > 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Non-finite training.

fn blobs(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let x = random_vec(n * d, -1.0, 1.0, seed);
    let y = (0..n)
        .map(|i| f32::from(u8::from(x[i * d] > 0.0)))
        .collect();
    (x, y)
}

fn bits(model: &dyn Module) -> Vec<Vec<u32>> {
    model
        .parameters()
        .iter()
        .map(|(_, p)| p.to_vec().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// Train epoch by epoch, saving after each good epoch; the data turns to NaN; `fit` stops with
/// `NonFiniteLoss` naming the step, and the last good checkpoint loads bit-exact, into the model
/// that diverged and into a fresh one, and training goes on from it.
#[test]
fn after_a_non_finite_stop_the_last_good_checkpoint_loads() {
    let dev = shared_device();
    let dir = tmp_dir("nonfinite");
    let path = dir.join("last_good.safetensors");
    let (x, y) = blobs(40, 3, 5);
    let good = Dataset::new(x.clone(), 3, Targets::Binary(y.clone())).unwrap();
    let mut poisoned = x.clone();
    poisoned[3 * 25] = f32::INFINITY; // row 25: batch 3 of 10 rows, unshuffled
    poisoned[3 * 26 + 1] = f32::NAN;
    let bad = Dataset::new(poisoned, 3, Targets::Binary(y)).unwrap();
    let model = nn::mlp(&dev, &[3, 1], Activation::Relu, 3).unwrap();
    let mut opt = Optimizer::adam(model.parameters(), 0.05).unwrap();
    let cfg = FitConfig {
        epochs: 1,
        batch_size: 10,
        shuffle_seed: None,
        progress: Progress::Never,
        ..FitConfig::default()
    };
    for _ in 0..2 {
        fit(&model, &mut opt, &good, &cfg).unwrap();
        checkpoint::save(&path, &model, Some(&opt)).unwrap();
    }
    let saved = bits(&model);
    let saved_step = opt.step_count();
    let e = fit(&model, &mut opt, &bad, &cfg).unwrap_err();
    match &e {
        Error::NonFiniteLoss {
            epoch, batch, step, ..
        } => {
            assert_eq!((*epoch, *batch), (1, 3), "{e}");
            assert_eq!(*step, saved_step + 3, "{e}");
        }
        other => panic!("expected NonFiniteLoss, got {other:?}"),
    }
    assert!(e.to_string().contains("step"), "{e}");

    // Into the model that saw the bad data, with its optimizer.
    let info = checkpoint::load(&path, &model, Some(&mut opt)).unwrap();
    assert_eq!(info.step, saved_step);
    assert_eq!(opt.step_count(), saved_step);
    assert!(bits(&model) == saved, "reloaded parameters differ");
    // Into a fresh model and optimizer.
    let fresh = nn::mlp(&dev, &[3, 1], Activation::Relu, 99).unwrap();
    let mut fresh_opt = Optimizer::adam(fresh.parameters(), 0.05).unwrap();
    checkpoint::load(&path, &fresh, Some(&mut fresh_opt)).unwrap();
    assert!(
        bits(&fresh) == saved,
        "fresh model differs from the checkpoint"
    );
    // Both continue identically on good data, with finite losses.
    let h1 = fit(&model, &mut opt, &good, &cfg).unwrap();
    let h2 = fit(&fresh, &mut fresh_opt, &good, &cfg).unwrap();
    assert!(h1.epochs[0].loss.is_finite());
    assert_eq!(h1.epochs[0].loss.to_bits(), h2.epochs[0].loss.to_bits());
    assert!(bits(&model) == bits(&fresh));
    let _ = std::fs::remove_dir_all(dir);
}
