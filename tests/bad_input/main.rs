//! A corpus of bad inputs to every public entry point: wrong ranks and shapes, empty tensors and
//! zero-sized dimensions, sizes past the adapter's limits, NaN/Inf data, out-of-range token ids,
//! truncated / corrupt / hostile safetensors (for `io::checkpoint::load_params` and
//! `models::load_pretrained`), malformed config.json, CSVs with bad rows, bad optimizer, training
//! and sampling settings.
//!
//! One test binary (one link), one module per area; each test is one small corpus. Every case
//! runs under `catch_unwind` and asserts the error variant it gets (and key words of the
//! message); each test asserts at the end that no case panicked and prints its case count.
//! What the ops do with NaN and Inf (they propagate; nothing panics) is asserted where IEEE
//! arithmetic fixes the answer and printed for the rest.
//!
//! Not repeated here (already asserted elsewhere): the CSV errors of
//! `tests/io.rs::csv_errors_name_file_line_and_column`, the checkpoint name/shape/optimizer
//! checks of `tests/io.rs::load_checks_names_shapes_dtypes_and_optimizer`, the `Dataset` /
//! `fit` argument errors of `tests/train.rs::shape_and_argument_errors`, the single-dimension
//! `TooLarge` and device-mismatch cases of `tests/runtime.rs`.

#![allow(clippy::type_complexity)] // the file-building closures in the loader cases

mod attention;
mod checkpoint;
mod csv_files;
mod gpt;
mod hostile;
mod modules;
mod non_finite;
mod ops;
mod optim;
mod pretrained;
mod sampling;
mod tensor;
mod tokenizer;
mod train;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use portagrad::models::GptConfig;
use portagrad::{Device, Error, Tensor};

/// The variant name of an error.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::NoAdapter { .. } => "NoAdapter",
        Error::NoWebGpu => "NoWebGpu",
        Error::RequestDevice { .. } => "RequestDevice",
        Error::Shape { .. } => "Shape",
        Error::DType { .. } => "DType",
        Error::InvalidArgument { .. } => "InvalidArgument",
        Error::TooLarge { .. } => "TooLarge",
        Error::DeviceMismatch { .. } => "DeviceMismatch",
        Error::OutOfMemory(_) => "OutOfMemory",
        Error::Gpu(_) => "Gpu",
        Error::DeviceLost(_) => "DeviceLost",
        Error::Io { .. } => "Io",
        Error::NonFiniteLoss { .. } => "NonFiniteLoss",
    }
}

type Check = std::result::Result<(), String>;

/// `r` must be the error `want` whose message contains every one of `words`.
fn err<T>(r: portagrad::Result<T>, want: &str, words: &[&str]) -> Check {
    match r {
        Ok(_) => Err(format!("expected {want} error, got Ok")),
        Err(e) => {
            let msg = e.to_string();
            if kind(&e) != want {
                return Err(format!("expected {want}, got {}: {msg}", kind(&e)));
            }
            for w in words {
                if !msg.contains(w) {
                    return Err(format!("{want} message lacks {w:?}: {msg}"));
                }
            }
            Ok(())
        }
    }
}

fn ok<T>(r: portagrad::Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| format!("unexpected error {}: {e}", kind(&e)))
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(what()) }
}

/// Runs cases under `catch_unwind`, collecting panics and wrong results.
struct Corpus {
    name: &'static str,
    cases: usize,
    panics: Vec<String>,
    wrong: Vec<String>,
    notes: Vec<String>,
}

impl Corpus {
    fn new(name: &'static str) -> Corpus {
        Corpus {
            name,
            cases: 0,
            panics: vec![],
            wrong: vec![],
            notes: vec![],
        }
    }

    fn case(&mut self, name: &str, f: impl FnOnce() -> Check) {
        self.cases += 1;
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => {}
            Ok(Err(m)) => self.wrong.push(format!("{name}: {m}")),
            Err(p) => {
                let m = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.panics.push(format!("{name}: {m}"));
            }
        }
    }

    /// Record what an op did with non-finite input (printed at the end).
    fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    fn finish(self) {
        for n in &self.notes {
            println!("[{}] {n}", self.name);
        }
        println!(
            "[{}] {} bad-input cases, {} panicked, {} wrong",
            self.name,
            self.cases,
            self.panics.len(),
            self.wrong.len()
        );
        assert!(
            self.panics.is_empty(),
            "{} case(s) panicked:\n{}",
            self.panics.len(),
            self.panics.join("\n")
        );
        assert!(
            self.wrong.is_empty(),
            "{} case(s) gave the wrong result:\n{}",
            self.wrong.len(),
            self.wrong.join("\n")
        );
    }
}

/// A safetensors file of `(name, dtype, shape, bytes)` tensors.
fn safetensors_bytes(tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portagrad-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn t(dev: &Device, v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, v, shape).unwrap()
}

fn ids(dev: &Device, v: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_u32(dev, v, shape).unwrap()
}

/// The storage limit a single tensor must stay under on this adapter.
fn limit(dev: &Device) -> u64 {
    dev.info()
        .max_storage_binding
        .min(dev.info().max_buffer_size)
}

fn tiny_cfg() -> GptConfig {
    GptConfig {
        n_layer: 1,
        n_head: 1,
        n_embd: 4,
        block_size: 4,
        vocab_size: 5,
        dropout: 0.0,
        ln_eps: 1e-5,
    }
}

/// A probe's outcome as text: `Ok <value>` or `<variant> <message>`.
fn probe(r: portagrad::Result<String>) -> String {
    match r {
        Ok(s) => format!("Ok {s}"),
        Err(e) => format!("{} {e}", kind(&e)),
    }
}

/// A degenerate-size probe: runs a step and describes what came out.
type Probe<'a> = Box<dyn Fn() -> portagrad::Result<String> + 'a>;

/// Degenerate sizes: an error naming the problem, or something that works on empty data; each
/// probe's outcome must start with its expected prefix.
fn probes(c: &mut Corpus, degenerate: Vec<(&str, Probe, &str)>) {
    for (name, f, want) in degenerate {
        c.case(name, || {
            let got = probe(f());
            ensure(got.starts_with(want), || {
                format!("got {got:?}, want {want:?}...")
            })
        });
    }
}
