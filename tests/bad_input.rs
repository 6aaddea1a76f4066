//! A corpus of bad inputs to every public entry point: wrong ranks and shapes, empty tensors and
//! zero-sized dimensions, sizes past the adapter's limits, NaN/Inf data, out-of-range token ids,
//! truncated / corrupt / hostile safetensors (for `io::checkpoint::load_params` and
//! `models::load_pretrained`), malformed config.json, CSVs with bad rows, bad optimizer, training
//! and sampling settings.
//!
//! Every case runs under `catch_unwind` and asserts the error variant it gets (and key words of
//! the message); each test asserts at the end that no case panicked and prints its case count.
//! What the ops do with NaN and Inf (they propagate; nothing panics) is asserted where IEEE
//! arithmetic fixes the answer and printed for the rest.
//!
//! Not repeated here (already asserted elsewhere): the CSV errors of
//! `tests/io.rs::csv_errors_name_file_line_and_column`, the checkpoint name/shape/optimizer
//! checks of `tests/io.rs::load_checks_names_shapes_dtypes_and_optimizer`, the `Dataset` /
//! `fit` argument errors of `tests/train.rs::shape_and_argument_errors`, the single-dimension
//! `TooLarge` and device-mismatch cases of `tests/runtime.rs`.

#![allow(clippy::type_complexity)] // the file-building closures in the loader cases

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use portagrad::io::checkpoint;
use portagrad::io::csv::{Standardizer, parse_csv, read_csv};
use portagrad::models::{CharTokenizer, Gpt, GptConfig, load_config, load_pretrained};
use portagrad::models::{save_pretrained, save_tensors};
use portagrad::nn::{self, Embedding, LayerNorm, Linear, Module};
use portagrad::optim::{LrSchedule, OptimConfig, Optimizer};
use portagrad::testing::shared_device;
use portagrad::train::{DataLoader, Dataset, Targets};
use portagrad::{
    Activation, Device, Error, KvCache, Tensor, attend_cached, attention, attention_qkv,
    merge_heads, split_heads,
};
use portagrad::{generate::Sampler, generate::SamplingConfig};

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

#[test]
fn tensor_construction_and_shapes() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor");
    let d = &dev;
    c.case("from_slice too few values", || {
        err(
            Tensor::from_slice(d, &[1.0; 5], &[2, 3]),
            "Shape",
            &["from_slice", "5 values", "[2, 3]"],
        )
    });
    c.case("from_slice too many values", || {
        err(Tensor::from_slice(d, &[1.0; 7], &[2, 3]), "Shape", &["7"])
    });
    c.case("from_u32 wrong length", || {
        err(Tensor::from_u32(d, &[1; 3], &[4]), "Shape", &["from_u32"])
    });
    c.case("from_slice shape whose element count overflows", || {
        err(
            Tensor::from_slice(d, &[0.0; 6], &[2, (1usize << 63) + 3]),
            "Shape",
            &["overflows"],
        )
    });
    c.case("zeros shape overflowing u64", || {
        err(
            Tensor::zeros(d, &[usize::MAX, usize::MAX]),
            "Shape",
            &["overflows"],
        )
    });
    let lim = limit(d);
    c.case("zeros 2-D past the adapter limit", || {
        let n = (lim / 8 + 1) as usize;
        err(Tensor::zeros(d, &[n, 2]), "TooLarge", &["full", "bytes"])
    });
    c.case("rand_normal past the adapter limit", || {
        let n = (lim / 4 + 1) as usize;
        err(
            Tensor::rand_normal(d, &[n], 0.0, 1.0, 0),
            "TooLarge",
            &["rand_normal"],
        )
    });
    c.case(
        "a zero-sized dimension next to one past the limit is empty",
        || {
            let e = ok(Tensor::from_u32(d, &[], &[(lim / 4 + 1) as usize, 0]))?;
            ensure(e.numel() == 0 && ok(e.to_vec_u32())?.is_empty(), || {
                "not empty".into()
            })
        },
    );
    c.case("rand_uniform NaN bound", || {
        err(
            Tensor::rand_uniform(d, &[3], f32::NAN, 1.0, 0),
            "InvalidArgument",
            &["rand_uniform"],
        )
    });
    c.case("rand_uniform reversed bounds", || {
        err(
            Tensor::rand_uniform(d, &[3], 2.0, 1.0, 0),
            "InvalidArgument",
            &["[2, 1)"],
        )
    });
    c.case("rand_uniform infinite bound", || {
        err(
            Tensor::rand_uniform(d, &[3], 0.0, f32::INFINITY, 0),
            "InvalidArgument",
            &["finite"],
        )
    });
    c.case("rand_normal negative std", || {
        err(
            Tensor::rand_normal(d, &[3], 0.0, -1.0, 0),
            "InvalidArgument",
            &["std"],
        )
    });
    c.case("rand_normal infinite mean", || {
        err(
            Tensor::rand_normal(d, &[3], f32::INFINITY, 1.0, 0),
            "InvalidArgument",
            &["mean"],
        )
    });
    c.case("item of two elements", || {
        err(t(d, &[1.0, 2.0], &[2]).item(), "Shape", &["item", "not 1"])
    });
    c.case("item of an empty tensor", || {
        err(ok(Tensor::zeros(d, &[0]))?.item(), "Shape", &["0 elements"])
    });
    c.case("to_vec of a u32 tensor", || {
        err(
            ids(d, &[1, 2], &[2]).to_vec(),
            "DType",
            &["to_vec", "f32", "u32"],
        )
    });
    c.case("to_vec_u32 of an f32 tensor", || {
        err(t(d, &[1.0], &[1]).to_vec_u32(), "DType", &["to_vec_u32"])
    });
    c.case("empty tensor round trip", || {
        let e = ok(Tensor::from_slice(d, &[], &[0]))?;
        ensure(ok(e.to_vec())?.is_empty(), || "not empty".into())?;
        let e = ok(Tensor::zeros(d, &[3, 0, 2]))?;
        ensure(e.numel() == 0 && ok(e.to_vec())?.is_empty(), || {
            "zero-sized dim not empty".into()
        })
    });
    // Zero-sized operands: every op gives the empty (or, for full reductions, the identity)
    // result or a Shape error; none panics or hangs.
    for shape in [vec![0usize], vec![0, 3], vec![3, 0], vec![2, 0, 4]] {
        let s = shape.clone();
        let z = move || Tensor::zeros(d, &s).unwrap();
        let n_out = |v: &[f32], want: usize| ensure(v.len() == want, || format!("{v:?}"));
        let sh = format!("{shape:?}");
        let empty_or_shape = |r: portagrad::Result<Tensor>, want: usize| -> Check {
            match r {
                Ok(t) => n_out(&ok(t.to_vec())?, want),
                Err(e) => err::<()>(Err(e), "Shape", &[]),
            }
        };
        let rows: usize = shape[..shape.len() - 1].iter().product();
        c.case(&format!("{sh}: add, exp, gelu"), || {
            empty_or_shape(z().add(&z()).and_then(|t| t.exp()?.gelu()), 0)
        });
        c.case(&format!("{sh}: sum and mean of nothing"), || {
            // A full reduction of nothing is a Shape error naming the shape.
            err(z().sum(), "Shape", &["empty", &sh])?;
            err(z().mean(), "Shape", &["empty"])
        });
        c.case(&format!("{sh}: sum_last, max_last"), || {
            empty_or_shape(z().sum_last(), rows)?;
            empty_or_shape(z().max_last(), rows)
        });
        c.case(&format!("{sh}: softmax, log_softmax"), || {
            empty_or_shape(z().softmax(), 0)?;
            empty_or_shape(z().log_softmax(), 0)
        });
        c.case(&format!("{sh}: matmul by a zero-sized operand"), || {
            let a = z();
            let k = *a.shape().last().unwrap();
            let b = ok(Tensor::ones(d, &[k, 2]))?;
            let out_rows: usize = a.shape()[..a.rank() - 1].iter().product();
            empty_or_shape(a.matmul(&b), out_rows * 2)
        });
        c.case(&format!("{sh}: broadcast_to and gather_rows"), || {
            empty_or_shape(
                z().broadcast_to(&[5].iter().chain(&shape).copied().collect::<Vec<_>>()),
                0,
            )?;
            if shape.len() == 2 && shape[0] > 0 {
                empty_or_shape(z().gather_rows(&ids(d, &[0, 0], &[2])), 0)?;
            }
            Ok(())
        });
        c.case(
            &format!("{sh}: backward through an empty elementwise chain"),
            || {
                let w = z().with_grad();
                let y = ok(w.mul(&w))?;
                let g = ok(y.backward_with(&z()))?;
                let gw = ok(g.get(&w).ok_or(Error::Gpu("no gradient".into())))?;
                n_out(&ok(gw.to_vec())?, 0)
            },
        );
    }
    c.case("cross_entropy of zero rows", || {
        let logits = ok(Tensor::zeros(d, &[0, 3]))?;
        let r = logits.cross_entropy(&ok(Tensor::from_u32(d, &[], &[0]))?, None);
        match r {
            Ok(l) => {
                let v = ok(l.to_vec())?;
                ensure(v == [0.0], || format!("{v:?}"))
            }
            Err(e) => err::<()>(Err(e), "Shape", &[]),
        }
    });
    c.case("gather_rows with no ids", || {
        let table = t(d, &[0.0; 6], &[3, 2]);
        let v = ok(ok(table.gather_rows(&ok(Tensor::from_u32(d, &[], &[0]))?))?.to_vec())?;
        ensure(v.is_empty(), || format!("{v:?}"))
    });
    c.case("reshape two inferred dimensions", || {
        err(
            t(d, &[0.0; 6], &[6]).reshape(&[usize::MAX, usize::MAX]),
            "Shape",
            &["reshape", "more than one"],
        )
    });
    c.case("reshape wrong element count", || {
        err(
            t(d, &[0.0; 6], &[6]).reshape(&[4, 2]),
            "Shape",
            &["cannot reshape", "[6]", "[4, 2]"],
        )
    });
    c.case("reshape inferred dimension that does not divide", || {
        err(
            t(d, &[0.0; 6], &[6]).reshape(&[4, usize::MAX]),
            "Shape",
            &["cannot infer"],
        )
    });
    c.case("reshape inferred next to a zero dimension", || {
        err(
            t(d, &[0.0; 6], &[6]).reshape(&[0, usize::MAX]),
            "Shape",
            &["cannot infer"],
        )
    });
    c.case(
        "reshape to a shape whose product wraps to the same count",
        || {
            // 2 * (2^63 + 3) = 2^64 + 6, which is 6 in wrapping arithmetic.
            err(
                t(d, &[0.0; 6], &[6]).reshape(&[2, (1usize << 63) + 3]),
                "Shape",
                &["reshape"],
            )
        },
    );
    c.case("add incompatible broadcast", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).add(&t(d, &[0.0; 4], &[4])),
            "Shape",
            &["[2, 3]", "[4]"],
        )
    });
    c.case("mul f32 by u32", || {
        err(
            t(d, &[0.0; 2], &[2]).mul(&ids(d, &[0, 1], &[2])),
            "DType",
            &["u32"],
        )
    });
    c.case("exp of u32", || {
        err(ids(d, &[0, 1], &[2]).exp(), "DType", &["u32"])
    });
    c.case("sum_last of a u32 tensor", || {
        err(ids(d, &[0, 1], &[2]).sum_last(), "DType", &["u32"])
    });
    c.case("softmax of a u32 tensor", || {
        err(ids(d, &[0, 1], &[2]).softmax(), "DType", &["u32"])
    });
    c.case("broadcast_to incompatible", || {
        err(
            t(d, &[0.0; 3], &[3]).broadcast_to(&[2, 4]),
            "Shape",
            &["[3]", "[2, 4]"],
        )
    });
    c.case("broadcast_to lower rank", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).broadcast_to(&[3]),
            "Shape",
            &["[2, 3]"],
        )
    });
    c.case("broadcast_to past the adapter limit", || {
        let n = (lim / 4 + 1) as usize;
        err(
            t(d, &[1.0], &[1]).broadcast_to(&[n]),
            "TooLarge",
            &["bytes"],
        )
    });
    c.case("transpose of a 1-D tensor", || {
        err(t(d, &[0.0; 3], &[3]).transpose(), "Shape", &["transpose"])
    });
    c.case("matmul inner dimensions differ", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).matmul(&t(d, &[0.0; 8], &[4, 2])),
            "Shape",
            &["matmul", "[2, 3]", "[4, 2]"],
        )
    });
    c.case("matmul of 1-D tensors", || {
        err(
            t(d, &[0.0; 3], &[3]).matmul(&t(d, &[0.0; 3], &[3])),
            "Shape",
            &["matmul"],
        )
    });
    c.case("matmul with a u32 operand", || {
        err(
            t(d, &[0.0; 4], &[2, 2]).matmul(&ids(d, &[0; 4], &[2, 2])),
            "DType",
            &["u32"],
        )
    });
    c.case("matmul output past the adapter limit", || {
        let n = ((lim / 4) as f64).sqrt() as usize + 2;
        let a = ok(Tensor::zeros(d, &[n, 1]))?;
        let b = ok(Tensor::zeros(d, &[1, n]))?;
        err(a.matmul(&b), "TooLarge", &["bytes"])
    });
    c.case("linear bias of the wrong width", || {
        let x = t(d, &[0.0; 6], &[2, 3]);
        let w = t(d, &[0.0; 12], &[3, 4]);
        let b = t(d, &[0.0; 3], &[3]);
        err(
            x.linear(
                &w,
                Some(&b),
                portagrad::WeightLayout::InOut,
                Activation::None,
            ),
            "Shape",
            &["[3]"],
        )
    });
    c.case("gather_rows id past the table", || {
        let table = t(d, &[0.0; 6], &[3, 2]);
        err(
            table.gather_rows(&ids(d, &[0, 3], &[2])),
            "InvalidArgument",
            &["3"],
        )
    });
    c.case("gather_rows id u32::MAX", || {
        let table = t(d, &[0.0; 6], &[3, 2]);
        err(
            table.gather_rows(&ids(d, &[u32::MAX], &[1])),
            "InvalidArgument",
            &["id 4294967295 (at position 0) is out of range", "3 rows"],
        )
    });
    c.case("gather_rows with f32 ids", || {
        let table = t(d, &[0.0; 6], &[3, 2]);
        err(
            table.gather_rows(&t(d, &[0.0], &[1])),
            "DType",
            &["u32", "f32"],
        )
    });
    c.case("gather_rows from a 1-D table", || {
        err(
            t(d, &[0.0; 3], &[3]).gather_rows(&ids(d, &[0], &[1])),
            "Shape",
            &["gather_rows"],
        )
    });
    c.case("layer_norm gamma of the wrong width", || {
        let x = t(d, &[0.0; 6], &[2, 3]);
        err(
            x.layer_norm(&t(d, &[1.0; 2], &[2]), &t(d, &[0.0; 3], &[3]), 1e-5),
            "Shape",
            &["layer_norm"],
        )
    });
    for eps in [f32::NAN, -1.0, f32::INFINITY] {
        c.case(&format!("layer_norm eps {eps}"), || {
            let x = t(d, &[0.0; 6], &[2, 3]);
            err(
                x.layer_norm(&t(d, &[1.0; 3], &[3]), &t(d, &[0.0; 3], &[3]), eps),
                "InvalidArgument",
                &["eps"],
            )
        });
    }
    for p in [1.0, -0.1, f32::NAN] {
        c.case(&format!("dropout p {p}"), || {
            err(
                t(d, &[0.0; 3], &[3]).dropout(p, 0),
                "InvalidArgument",
                &["dropout", "[0, 1)"],
            )
        });
    }
    c.case("mse_loss shapes differ", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).mse_loss(&t(d, &[0.0; 6], &[3, 2])),
            "Shape",
            &["[2, 3]", "[3, 2]"],
        )
    });
    c.case("bce_with_logits u32 targets", || {
        err(
            t(d, &[0.0; 2], &[2]).bce_with_logits(&ids(d, &[0, 1], &[2])),
            "DType",
            &["u32"],
        )
    });
    c.case("cross_entropy target past the classes", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).cross_entropy(&ids(d, &[0, 3], &[2]), None),
            "InvalidArgument",
            &["cross_entropy", "3"],
        )
    });
    c.case("cross_entropy target count differs", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).cross_entropy(&ids(d, &[0, 1, 2], &[3]), None),
            "Shape",
            &["cross_entropy"],
        )
    });
    c.case("cross_entropy f32 targets", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).cross_entropy(&t(d, &[0.0; 2], &[2]), None),
            "DType",
            &["u32"],
        )
    });
    c.case("accuracy target count differs", || {
        err(
            t(d, &[0.0; 6], &[2, 3]).accuracy(&ids(d, &[0], &[1])),
            "Shape",
            &["accuracy"],
        )
    });
    c.case("backward of a non-scalar", || {
        let x = t(d, &[1.0; 3], &[3]).with_grad();
        err(ok(x.mul_scalar(2.0))?.backward(), "Shape", &["backward"])
    });
    c.case("backward_with a gradient of the wrong shape", || {
        let x = t(d, &[1.0; 3], &[3]).with_grad();
        let y = ok(x.mul_scalar(2.0))?;
        err(y.backward_with(&t(d, &[1.0; 2], &[2])), "Shape", &["[2]"])
    });
    c.case("max has no gradient", || {
        let x = t(d, &[1.0; 3], &[3]).with_grad();
        err(ok(x.max())?.backward(), "InvalidArgument", &["max"])
    });
    c.finish();
}

#[test]
fn attention_and_kv_cache() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("attention");
    let z = |s: &[usize]| Tensor::zeros(d, s).unwrap();
    c.case("attention rank 3", || {
        err(
            attention(&z(&[1, 2, 4]), &z(&[1, 2, 4]), &z(&[1, 2, 4]), true),
            "Shape",
            &["(B, H, T, D)"],
        )
    });
    c.case("attention shapes differ", || {
        err(
            attention(
                &z(&[1, 1, 2, 4]),
                &z(&[1, 1, 3, 4]),
                &z(&[1, 1, 2, 4]),
                true,
            ),
            "Shape",
            &["same"],
        )
    });
    for dim in [0usize, 3, 6, 1024] {
        c.case(&format!("attention head size {dim}"), || {
            let s = [1, 1, 2, dim];
            err(
                attention(&z(&s), &z(&s), &z(&s), false),
                "Shape",
                &["head size"],
            )
        });
    }
    c.case("attention u32 input", || {
        let q = ids(d, &[0; 8], &[1, 1, 2, 4]);
        err(attention(&q, &q, &q, false), "DType", &["u32"])
    });
    c.case("split_heads width not a multiple of 3", || {
        err(split_heads(&z(&[1, 2, 8]), 1), "Shape", &["split_heads"])
    });
    c.case("split_heads zero heads", || {
        err(split_heads(&z(&[1, 2, 24]), 0), "Shape", &["split_heads"])
    });
    c.case("split_heads heads not dividing C", || {
        err(split_heads(&z(&[1, 2, 24]), 3), "Shape", &["split_heads"])
    });
    c.case("attention_qkv rank 2", || {
        err(
            attention_qkv(&z(&[2, 24]), 2, true),
            "Shape",
            &["(B, T, 3*C)"],
        )
    });
    c.case("merge_heads rank 3", || {
        err(merge_heads(&z(&[1, 2, 4])), "Shape", &["merge_heads"])
    });
    c.case("KvCache zero max_len", || {
        err(KvCache::new(d, 1, 1, 0, 4), "Shape", &["zero dimension"])
    });
    c.case("KvCache head size 5", || {
        err(KvCache::new(d, 1, 1, 4, 5), "Shape", &["head size"])
    });
    c.case("KvCache past the adapter limit", || {
        let n = (limit(d) / 4 / 64 + 1) as usize;
        err(KvCache::new(d, 1, 1, n, 64), "TooLarge", &["bytes"])
    });
    c.case("KvCache append past max_len", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 2, 4))?;
        err(
            cache.append(&z(&[1, 1, 3, 4]), &z(&[1, 1, 3, 4])),
            "InvalidArgument",
            &["append", "at most 2"],
        )
    });
    c.case("KvCache append wrong heads", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        err(
            cache.append(&z(&[1, 2, 1, 4]), &z(&[1, 2, 1, 4])),
            "Shape",
            &["append"],
        )
    });
    c.case("KvCache truncate past len", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        err(cache.truncate(1), "InvalidArgument", &["truncate"])
    });
    c.case("attend_cached on an empty cache", || {
        let cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        err(
            attend_cached(&z(&[1, 1, 1, 4]), &cache),
            "Shape",
            &["the cache holds 0"],
        )
    });
    c.case("attend_cached query of the wrong head size", || {
        let mut cache = ok(KvCache::new(d, 1, 1, 4, 4))?;
        ok(cache.append(&z(&[1, 1, 1, 4]), &z(&[1, 1, 1, 4])))?;
        err(
            attend_cached(&z(&[1, 1, 1, 8]), &cache),
            "Shape",
            &["[1, 1, 1, 8]"],
        )
    });
    c.finish();
}

/// NaN and Inf: every op returns (no panic, no error); IEEE-determined results are asserted,
/// the rest printed.
#[test]
fn non_finite_data_propagates() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nan/inf");
    let x = t(d, &[1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &[4]);
    let notes = std::cell::RefCell::new(Vec::new());
    let run = |c: &mut Corpus,
               name: &str,
               f: &dyn Fn() -> portagrad::Result<Tensor>,
               check: &dyn Fn(&[f32]) -> bool| {
        c.case(name, || {
            let v = ok(ok(f())?.to_vec())?;
            notes.borrow_mut().push(format!("{name}: {v:?}"));
            ensure(check(&v), || format!("{name}: unexpected {v:?}"))
        });
    };
    let nan_at_1 = |v: &[f32]| v[1].is_nan();
    run(&mut c, "add", &|| x.add(&x), &|v| {
        v[0] == 2.0 && v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::NEG_INFINITY
    });
    run(&mut c, "sub (inf - inf = NaN)", &|| x.sub(&x), &|v| {
        v[0] == 0.0 && v[1].is_nan() && v[2].is_nan() && v[3].is_nan()
    });
    run(&mut c, "mul", &|| x.mul(&x), &|v| {
        v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::INFINITY
    });
    run(&mut c, "div (inf / inf = NaN)", &|| x.div(&x), &|v| {
        v[0] == 1.0 && v[1].is_nan() && v[2].is_nan()
    });
    run(&mut c, "exp", &|| x.exp(), &|v| {
        v[1].is_nan() && v[2] == f32::INFINITY && v[3] == 0.0
    });
    run(&mut c, "log", &|| x.log(), &|v| {
        v[0] == 0.0 && v[1].is_nan() && v[2] == f32::INFINITY && v[3].is_nan()
    });
    run(&mut c, "sqrt", &|| x.sqrt(), &|v| {
        v[1].is_nan() && v[2] == f32::INFINITY && v[3].is_nan()
    });
    run(&mut c, "powf 2", &|| x.powf(2.0), &|v| {
        v[0] == 1.0 && v[1].is_nan() && v[2] == f32::INFINITY && v[3] == f32::INFINITY
    });
    run(&mut c, "powf 0.5", &|| x.powf(0.5), &|v| {
        v[0] == 1.0 && v[1].is_nan() && v[2] == f32::INFINITY
    });
    run(
        &mut c,
        "powf 3 gradient at NaN",
        &|| {
            let w = x.with_grad();
            let g = w.powf(3.0)?.sum()?.backward()?;
            Ok(g.get(&w).expect("gradient of w").clone())
        },
        &|v| v[0] == 3.0 && v[1].is_nan(),
    );
    run(&mut c, "neg", &|| x.neg(), &|v| {
        v[1].is_nan() && v[2] == f32::NEG_INFINITY
    });
    run(&mut c, "mul_scalar NaN", &|| x.mul_scalar(f32::NAN), &|v| {
        v.iter().all(|a| a.is_nan())
    });
    run(
        &mut c,
        "add_scalar inf",
        &|| x.add_scalar(f32::INFINITY),
        &|v| v[0] == f32::INFINITY && v[3].is_nan(),
    );
    run(&mut c, "relu", &|| x.relu(), &|v| {
        v[0] == 1.0 && v[2] == f32::INFINITY && v[3] == 0.0
    });
    run(&mut c, "gelu", &|| x.gelu(), &|v| v[0].is_finite());
    run(&mut c, "sigmoid", &|| x.sigmoid(), &|v| {
        v[2] == 1.0 && v[3] == 0.0
    });
    run(&mut c, "tanh", &|| x.tanh(), &|v| {
        v[2] == 1.0 && v[3] == -1.0
    });
    run(&mut c, "sum", &|| x.sum(), &|v| v[0].is_nan());
    run(&mut c, "mean", &|| x.mean(), &|v| v[0].is_nan());
    run(&mut c, "max", &|| x.max(), &|v| v.len() == 1);
    run(
        &mut c,
        "sum_last of inf and -inf",
        &|| t(d, &[f32::INFINITY, f32::NEG_INFINITY], &[1, 2]).sum_last(),
        &|v| v[0].is_nan(),
    );
    run(&mut c, "softmax", &|| x.softmax(), &|v| v.len() == 4);
    run(
        &mut c,
        "softmax of a row with one inf",
        &|| t(d, &[0.0, f32::INFINITY, 1.0], &[3]).softmax(),
        &|v| v.len() == 3,
    );
    run(
        &mut c,
        "softmax of an all -inf row",
        &|| t(d, &[f32::NEG_INFINITY; 3], &[3]).softmax(),
        &|v| v.len() == 3,
    );
    run(
        &mut c,
        "softmax of a finite row is finite",
        &|| t(d, &[1e30, -1e30, 0.0], &[3]).softmax(),
        &|v| v.iter().all(|a| a.is_finite()) && (v[0] - 1.0).abs() < 1e-6,
    );
    run(&mut c, "log_softmax", &|| x.log_softmax(), &|v| {
        v.len() == 4
    });
    run(
        &mut c,
        "matmul",
        &|| t(d, &[1.0, f32::NAN, 2.0, 3.0], &[2, 2]).matmul(&t(d, &[1.0; 4], &[2, 2])),
        &|v| v[0].is_nan() && v[1].is_nan() && v[2] == 5.0 && v[3] == 5.0,
    );
    run(
        &mut c,
        "layer_norm of a row with inf",
        &|| {
            x.reshape(&[1, 4])?
                .layer_norm(&t(d, &[1.0; 4], &[4]), &t(d, &[0.0; 4], &[4]), 1e-5)
        },
        &|v| v.iter().any(|a| !a.is_finite()),
    );
    run(
        &mut c,
        "mse_loss",
        &|| x.mse_loss(&t(d, &[0.0; 4], &[4])),
        &|v| v[0].is_nan(),
    );
    run(
        &mut c,
        "bce_with_logits",
        &|| x.bce_with_logits(&t(d, &[1.0; 4], &[4])),
        &|v| v[0].is_nan(),
    );
    run(
        &mut c,
        "cross_entropy of NaN logits",
        &|| t(d, &[f32::NAN, 0.0, 0.0, 1.0], &[2, 2]).cross_entropy(&ids(d, &[0, 1], &[2]), None),
        &|v| v[0].is_nan(),
    );
    run(
        &mut c,
        "gather_rows copies NaN",
        &|| t(d, &[f32::NAN, 1.0], &[2, 1]).gather_rows(&ids(d, &[0, 1, 0], &[3])),
        &|v| v[0].is_nan() && v[1] == 1.0 && v[2].is_nan(),
    );
    run(
        &mut c,
        "broadcast_to copies inf",
        &|| t(d, &[f32::INFINITY], &[1]).broadcast_to(&[3]),
        &|v| v.iter().all(|a| *a == f32::INFINITY),
    );
    run(
        &mut c,
        "gradient through NaN",
        &|| {
            let w = x.with_grad();
            let g = w.mul(&w)?.sum()?.backward()?;
            Ok(g.get(&w).expect("gradient of w").clone())
        },
        &nan_at_1,
    );
    run(
        &mut c,
        "attention with a NaN query",
        &|| {
            let mut q = vec![0.0; 8];
            q[0] = f32::NAN;
            let q = t(d, &q, &[1, 1, 2, 4]);
            let k = Tensor::zeros(d, &[1, 1, 2, 4])?;
            attention(&q, &k, &k, true)
        },
        &|v| v.len() == 8,
    );
    let _ = &notes;
    for n in notes.into_inner() {
        c.note(n);
    }
    c.finish();
}

#[test]
fn modules_optimizer_training_sampling_tokenizer() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nn/optim/train");
    c.case("mlp with one size", || {
        err(
            nn::mlp(d, &[3], Activation::Relu, 0),
            "InvalidArgument",
            &["mlp"],
        )
    });
    c.case("mlp forward of the wrong width", || {
        let m = ok(nn::mlp(d, &[3, 2], Activation::Relu, 0))?;
        err(m.forward(&t(d, &[0.0; 4], &[1, 4])), "Shape", &["[1, 4]"])
    });
    c.case("mlp forward of u32 input", || {
        let m = ok(nn::mlp(d, &[3, 2], Activation::Relu, 0))?;
        err(m.forward(&ids(d, &[0; 3], &[1, 3])), "DType", &["u32"])
    });
    c.case("Linear::from_parts 1-D weight", || {
        err(
            Linear::from_parts(t(d, &[0.0; 3], &[3]), None),
            "Shape",
            &["Linear"],
        )
    });
    c.case("Linear::from_parts bias of the wrong width", || {
        err(
            Linear::from_parts(t(d, &[0.0; 6], &[2, 3]), Some(t(d, &[0.0; 2], &[2]))),
            "Shape",
            &["Linear"],
        )
    });
    c.case("Embedding::from_weight 1-D", || {
        err(
            Embedding::from_weight(t(d, &[0.0; 3], &[3])),
            "Shape",
            &["Embedding"],
        )
    });
    c.case("Embedding forward id past the vocabulary", || {
        let e = ok(Embedding::new(d, 4, 2, 0))?;
        err(e.forward(&ids(d, &[4], &[1])), "InvalidArgument", &["4"])
    });
    c.case(
        "LayerNorm eps -1 (at construction or forward)",
        || match LayerNorm::with_eps(d, 3, -1.0) {
            Err(e) => err::<()>(Err(e), "InvalidArgument", &["eps"]),
            Ok(ln) => err(
                ln.forward(&t(d, &[0.0; 3], &[1, 3])),
                "InvalidArgument",
                &["eps"],
            ),
        },
    );
    c.case("Dropout p 1", || {
        err(
            nn::Dropout::new(1.0, 0),
            "InvalidArgument",
            &["Dropout", "[0, 1)"],
        )
    });
    let params = || ok(nn::mlp(d, &[2, 1], Activation::None, 0)).map(|m| m.parameters());
    for (name, cfg, word) in [
        ("lr NaN", OptimConfig::adam(f64::NAN), "learning rate"),
        ("lr negative", OptimConfig::sgd(-1.0), "learning rate"),
        (
            "lr infinite",
            OptimConfig::sgd(f64::INFINITY),
            "learning rate",
        ),
        ("beta1 1", OptimConfig::adam(0.1).betas(1.0, 0.999), "beta1"),
        (
            "beta2 NaN",
            OptimConfig::adam(0.1).betas(0.9, f64::NAN),
            "beta2",
        ),
        ("eps negative", OptimConfig::adam(0.1).eps(-1.0), "eps"),
        (
            "weight decay NaN",
            OptimConfig::adamw(0.1).weight_decay(f64::NAN),
            "weight decay",
        ),
        (
            "momentum 2",
            OptimConfig::sgd(0.1).momentum(2.0),
            "momentum",
        ),
        (
            "nesterov without momentum",
            OptimConfig::sgd(0.1).nesterov(true),
            "Nesterov",
        ),
        (
            "clip norm 0",
            OptimConfig::sgd(0.1).clip_grad_norm(0.0),
            "gradient norm",
        ),
        (
            "warmup past total",
            OptimConfig::adam(0.1).schedule(LrSchedule::warmup_cosine(10, 5, 0.0)),
            "warmup",
        ),
    ] {
        c.case(&format!("optimizer {name}"), || {
            err(Optimizer::new(cfg, params()?), "InvalidArgument", &[word])
        });
    }
    c.case("optimizer over a tensor without grad", || {
        err(
            Optimizer::sgd(vec![("w".into(), t(d, &[0.0], &[1]))], 0.1),
            "InvalidArgument",
            &["w"],
        )
    });
    c.case("optimizer over a u32 tensor", || {
        err(
            Optimizer::sgd(vec![("w".into(), ids(d, &[0], &[1]))], 0.1),
            "DType",
            &["u32"],
        )
    });
    // Degenerate sizes: an error naming the problem, or a module that works on empty data.
    let probe = |r: portagrad::Result<String>| -> String {
        match r {
            Ok(s) => format!("Ok {s}"),
            Err(e) => format!("{} {e}", kind(&e)),
        }
    };
    type Probe<'a> = Box<dyn Fn() -> portagrad::Result<String> + 'a>;
    let degenerate: Vec<(&str, Probe, &str)> = vec![
        (
            "Linear with 0 inputs",
            Box::new(|| {
                let l = Linear::new(d, 0, 3, 0)?;
                let y = l.forward(&Tensor::zeros(d, &[2, 0])?)?;
                Ok(format!("{:?} {:?}", y.shape(), y.to_vec()?))
            }),
            "Ok [2, 3] [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]",
        ),
        (
            "Linear with 0 outputs",
            Box::new(|| {
                let l = Linear::new(d, 3, 0, 0)?;
                Ok(format!(
                    "{:?}",
                    l.forward(&Tensor::ones(d, &[2, 3])?)?.shape()
                ))
            }),
            "Ok [2, 0]",
        ),
        (
            "Embedding with 0 rows",
            Box::new(|| {
                let e = Embedding::new(d, 0, 4, 0)?;
                Ok(format!(
                    "{:?}",
                    e.forward(&Tensor::from_u32(d, &[0], &[1])?)?.shape()
                ))
            }),
            "InvalidArgument",
        ),
        (
            "LayerNorm over 0 columns",
            Box::new(|| {
                let l = LayerNorm::new(d, 0)?;
                Ok(format!(
                    "{:?}",
                    l.forward(&Tensor::zeros(d, &[2, 0])?)?.shape()
                ))
            }),
            "Shape layer_norm: needs a non-empty last axis",
        ),
        (
            "attention over 0 positions",
            Box::new(|| {
                let q = Tensor::zeros(d, &[1, 1, 0, 4])?;
                Ok(format!("{:?}", attention(&q, &q, &q, true)?.shape()))
            }),
            "Ok [1, 1, 0, 4]",
        ),
        (
            "optimizer over the same parameter twice (tied: updated once)",
            Box::new(|| {
                let p = params().map_err(Error::Gpu)?;
                let n = p[0].1.numel();
                let o = Optimizer::sgd(vec![p[0].clone(), p[0].clone()], 0.1)?;
                Ok(format!("{}", o.num_elements() == n))
            }),
            "Ok true",
        ),
        (
            "optimizer step with another model's gradients",
            Box::new(|| {
                let mut o = Optimizer::sgd(params().map_err(Error::Gpu)?, 0.1)?;
                let other = t(d, &[1.0; 2], &[2]).with_grad();
                let g = other.mul(&other)?.sum()?.backward()?;
                o.step(&g).map(|_| String::new())
            }),
            "InvalidArgument Optimizer::step: none of the optimizer's 2 parameters",
        ),
        (
            "device with max_batch_dispatches 0 (clamped to 1)",
            Box::new(|| {
                let dev1 =
                    Device::with_options(portagrad::DeviceOptions::new().max_batch_dispatches(0))?;
                let x = Tensor::ones(&dev1, &[4])?;
                Ok(format!("{:?}", x.add(&x)?.mul_scalar(2.0)?.to_vec()?))
            }),
            "Ok [4.0, 4.0, 4.0, 4.0]",
        ),
    ];
    for (name, f, want) in degenerate {
        c.case(name, || {
            let got = probe(f());
            ensure(got.starts_with(want), || {
                format!("got {got:?}, want {want:?}...")
            })
        });
    }
    c.case("optimizer set_lr NaN", || {
        let mut o = ok(Optimizer::sgd(params()?, 0.1))?;
        err(o.set_lr(f64::NAN), "InvalidArgument", &["learning rate"])
    });
    c.case("DataLoader batch 0", || {
        let data = ok(Dataset::new(
            vec![0.0; 4],
            2,
            Targets::Binary(vec![0.0, 1.0]),
        ))?;
        err(
            DataLoader::new(d, &data, 0, None).map(|_| ()),
            "InvalidArgument",
            &["batch size"],
        )
    });
    c.case("Dataset with zero features", || {
        err(
            Dataset::new(vec![], 0, Targets::Binary(vec![0.0, 1.0])),
            "InvalidArgument",
            &[],
        )
        .or_else(|_| {
            err(
                Dataset::new(vec![], 0, Targets::Binary(vec![0.0, 1.0])),
                "Shape",
                &[],
            )
        })
    });
    c.case("Dataset with zero rows", || {
        match Dataset::new(vec![], 2, Targets::Binary(vec![])) {
            Err(e) => err::<()>(Err(e), "InvalidArgument", &[]),
            Ok(data) => {
                let model = ok(nn::mlp(d, &[2, 1], Activation::None, 0))?;
                let mut opt = ok(Optimizer::sgd(model.parameters(), 0.1))?;
                let cfg = portagrad::train::FitConfig {
                    progress: portagrad::train::Progress::Never,
                    ..Default::default()
                };
                err(
                    portagrad::train::fit(&model, &mut opt, &data, &cfg).map(|_| ()),
                    "InvalidArgument",
                    &["no rows to train on"],
                )
            }
        }
    });
    c.case("Dataset split NaN fraction", || {
        let data = ok(Dataset::new(
            vec![0.0; 8],
            2,
            Targets::Binary(vec![0.0, 1.0, 0.0, 1.0]),
        ))?;
        err(
            data.split(f64::NAN, 0).map(|_| ()),
            "InvalidArgument",
            &["split"],
        )
    });
    c.case("Standardizer of zero features", || {
        err(
            Standardizer::fit(&[1.0, 2.0], 0).map(|_| ()),
            "Shape",
            &["rows of 0"],
        )
    });
    c.case("Standardizer features not a multiple", || {
        err(
            Standardizer::fit(&[1.0, 2.0, 3.0], 2).map(|_| ()),
            "InvalidArgument",
            &[],
        )
        .or_else(|_| {
            err(
                Standardizer::fit(&[1.0, 2.0, 3.0], 2).map(|_| ()),
                "Shape",
                &[],
            )
        })
    });
    for (name, cfg, word) in [
        (
            "temperature NaN",
            SamplingConfig {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        ),
        (
            "temperature -1",
            SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            "top_k 0",
            SamplingConfig {
                top_k: Some(0),
                ..Default::default()
            },
            "top_k",
        ),
        (
            "top_p 0",
            SamplingConfig {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
        ),
        (
            "top_p NaN",
            SamplingConfig {
                top_p: Some(f32::NAN),
                ..Default::default()
            },
            "top_p",
        ),
        (
            "repetition_penalty 0",
            SamplingConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
    ] {
        c.case(&format!("sampler {name}"), || {
            err(Sampler::new(cfg).map(|_| ()), "InvalidArgument", &[word])
        });
    }
    c.case("sampler on no logits", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(s.sample(&[], &[]), "InvalidArgument", &["no logits"])
    });
    for (name, logits) in [
        ("all NaN", vec![f32::NAN; 4]),
        ("one inf", vec![0.0, f32::INFINITY, 0.0]),
        ("all -inf", vec![f32::NEG_INFINITY; 3]),
    ] {
        for temperature in [0.0, 1.0] {
            c.case(
                &format!("sampler logits {name} at temperature {temperature}"),
                || {
                    let mut s = ok(Sampler::new(SamplingConfig {
                        temperature,
                        top_k: Some(2),
                        top_p: Some(0.9),
                        ..Default::default()
                    }))?;
                    // A token or an error, never a panic; a token must be in range.
                    match s.sample(&logits, &[0, 7]) {
                        Ok(id) => ensure((id as usize) < logits.len(), || {
                            format!("token {id} out of range")
                        }),
                        Err(e) => ensure(matches!(e, Error::InvalidArgument { .. }), || {
                            format!("{e:?}")
                        }),
                    }
                },
            );
        }
    }
    c.case("char tokenizer encode of an unknown character", || {
        let tok = ok(CharTokenizer::from_text("abc"))?;
        err(tok.encode("abz"), "InvalidArgument", &["z"])
    });
    c.case("char tokenizer decode of an id past the vocabulary", || {
        let tok = ok(CharTokenizer::from_text("abc"))?;
        err(tok.decode(&[0, 3]), "InvalidArgument", &["3"])
    });
    c.case("char tokenizer of empty text", || {
        err(
            CharTokenizer::from_text("").map(|_| ()),
            "InvalidArgument",
            &[],
        )
    });
    c.case(
        "char tokenizer vocab json malformed",
        || match CharTokenizer::from_vocab_json("{not json") {
            None => Ok(()),
            Some(r) => err(r.map(|_| ()), "InvalidArgument", &[]),
        },
    );
    c.finish();
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

#[test]
fn gpt_inputs_and_configs() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt");
    let model = Gpt::new(d, tiny_cfg(), 0).unwrap();
    let m = &model;
    for (name, cfg, word) in [
        (
            "n_layer 0",
            GptConfig {
                n_layer: 0,
                ..tiny_cfg()
            },
            "positive",
        ),
        (
            "n_head 0",
            GptConfig {
                n_head: 0,
                ..tiny_cfg()
            },
            "positive",
        ),
        (
            "n_embd not a multiple of n_head",
            GptConfig {
                n_head: 3,
                ..tiny_cfg()
            },
            "multiple",
        ),
        (
            "ln_eps NaN",
            GptConfig {
                ln_eps: f32::NAN,
                ..tiny_cfg()
            },
            "epsilon",
        ),
        (
            "dropout 1",
            GptConfig {
                dropout: 1.0,
                ..tiny_cfg()
            },
            "dropout",
        ),
        (
            "dropout NaN",
            GptConfig {
                dropout: f32::NAN,
                ..tiny_cfg()
            },
            "dropout",
        ),
    ] {
        c.case(&format!("GptConfig {name}"), || {
            err(Gpt::new(d, cfg, 0).map(|_| ()), "InvalidArgument", &[word])
        });
    }
    // A vocabulary past one binding is held in row chunks; what cannot be split is a layer's
    // matrix. Here c_fc (C, 4C) passes the adapter's limit next to a wte of three bindings'
    // worth: TooLarge naming that matrix, found before anything is allocated (on any adapter:
    // the sizes follow its limit and stay inside GptConfig's bounds).
    c.case(
        "Gpt with a matrix past the adapter limit next to a split vocabulary",
        || {
            let lim = limit(d);
            let c = ((lim / 16) as f64).sqrt() as usize + 1;
            let cfg = GptConfig {
                n_embd: c,
                vocab_size: (3 * lim / (4 * c as u64)) as usize,
                ..tiny_cfg()
            };
            let shape = format!("[{c}, {}]", 4 * c);
            err(
                Gpt::new(d, cfg, 0).map(|_| ()),
                "TooLarge",
                &["Gpt", &shape, "bytes"],
            )
        },
    );
    c.case("Gpt with sizes whose product overflows", || {
        let cfg = GptConfig {
            vocab_size: usize::MAX / 2,
            ..tiny_cfg()
        };
        err(
            Gpt::new(d, cfg, 0).map(|_| ()),
            "InvalidArgument",
            &["out of range"],
        )
    });
    c.case("forward ids 1-D", || {
        err(
            m.forward(&ids(d, &[0, 1], &[2]), false),
            "Shape",
            &["(B, T)"],
        )
    });
    c.case("forward ids f32", || {
        err(
            m.forward(&t(d, &[0.0; 2], &[1, 2]), false),
            "DType",
            &["u32"],
        )
    });
    c.case("forward id past the vocabulary", || {
        err(
            m.forward(&ids(d, &[0, 5], &[1, 2]), false),
            "InvalidArgument",
            &["5"],
        )
    });
    c.case("forward longer than block_size", || {
        err(
            m.forward(&ids(d, &[0; 5], &[1, 5]), false),
            "Shape",
            &["1..=4"],
        )
    });
    c.case("forward of zero positions", || {
        err(m.forward(&ids(d, &[], &[1, 0]), false), "Shape", &[])
    });
    c.case("forward of zero sequences", || {
        match m.forward(&ids(d, &[], &[0, 2]), false) {
            Ok(l) => ensure(l.numel() == 0, || format!("{:?}", l.shape())),
            Err(e) => err::<()>(Err(e), "Shape", &[]),
        }
    });
    c.case(
        "generate_batch with one empty prompt among good ones",
        || {
            let mut s = ok(Sampler::batch(&SamplingConfig::default(), 2))?;
            err(
                m.generate_batch(
                    &[vec![1], vec![]],
                    &Default::default(),
                    &mut s,
                    &mut |_, _| Ok(true),
                )
                .map(|_| ()),
                "InvalidArgument",
                &["empty"],
            )
        },
    );
    c.case("loss targets of another shape", || {
        err(
            m.loss(
                &ids(d, &[0, 1], &[1, 2]),
                &ids(d, &[0, 1, 2], &[1, 3]),
                false,
            ),
            "Shape",
            &[],
        )
    });
    c.case("loss target past the vocabulary", || {
        err(
            m.loss(&ids(d, &[0, 1], &[1, 2]), &ids(d, &[0, 9], &[1, 2]), false),
            "InvalidArgument",
            &["9"],
        )
    });
    c.case("generate empty prompt", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(
            m.generate(&[], 2, &mut s, &mut |_| Ok(true)),
            "InvalidArgument",
            &["empty"],
        )
    });
    c.case("generate prompt id past the vocabulary", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(
            m.generate(&[1, 99], 2, &mut s, &mut |_| Ok(true)),
            "InvalidArgument",
            &["99"],
        )
    });
    c.case(
        "generate_full_context prompt id past the vocabulary",
        || {
            let mut s = ok(Sampler::new(SamplingConfig::default()))?;
            err(
                m.generate_full_context(&[99], 2, &mut s, &mut |_| Ok(true)),
                "InvalidArgument",
                &["99"],
            )
        },
    );
    c.case("generate_batch sampler count differs", || {
        let mut s = ok(Sampler::batch(&SamplingConfig::default(), 1))?;
        err(
            m.generate_batch(
                &[vec![0], vec![1]],
                &Default::default(),
                &mut s,
                &mut |_, _| Ok(true),
            )
            .map(|_| ()),
            "InvalidArgument",
            &["sampler"],
        )
    });
    c.case("generate_batch no prompts", || {
        err(
            m.generate_batch(&[], &Default::default(), &mut [], &mut |_, _| Ok(true))
                .map(|_| ()),
            "InvalidArgument",
            &[],
        )
    });
    c.case("generate max_new 0 gives nothing", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        let out = ok(m.generate(&[1], 0, &mut s, &mut |_| Ok(true)))?;
        ensure(out.is_empty(), || format!("{out:?}"))
    });
    c.case("generate with a prompt past the context is cropped", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        let out = ok(m.generate(&[1; 9], 3, &mut s, &mut |_| Ok(true)))?;
        ensure(out.len() == 3 && out.iter().all(|&i| i < 5), || {
            format!("{out:?}")
        })
    });
    c.case("generate callback error is passed on", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(
            m.generate(&[1], 3, &mut s, &mut |_| {
                Err(Error::InvalidArgument {
                    op: "callback",
                    message: "stop here".into(),
                })
            }),
            "InvalidArgument",
            &["stop here"],
        )
    });
    for keep in [Some(0), Some(1), Some(99), None] {
        c.case(
            &format!("generate past the context with context_keep {keep:?}"),
            || {
                let mut s = ok(Sampler::batch(&SamplingConfig::default(), 1))?;
                let opts = portagrad::models::GenerateOptions {
                    max_new_tokens: 7,
                    stop_token: Some(99),
                    context_keep: keep,
                };
                let g =
                    ok(m.generate_batch(&[vec![1, 2, 3]], &opts, &mut s, &mut |_, _| Ok(true)))?;
                let t = &g.tokens[0];
                ensure(t.len() == 7 && t.iter().all(|&i| i < 5), || {
                    format!("{t:?}")
                })
            },
        );
    }
    c.case(
        "generate with max_new usize::MAX stopped by the callback",
        || {
            let mut s = ok(Sampler::new(SamplingConfig::default()))?;
            let mut n = 0;
            let out = ok(m.generate(&[1], usize::MAX, &mut s, &mut |_| {
                n += 1;
                Ok(n < 3)
            }))?;
            ensure(out.len() == 3, || format!("{out:?}"))
        },
    );
    c.case("set_parameter unknown name", || {
        let mut g = ok(Gpt::new(d, tiny_cfg(), 1))?;
        err(
            g.set_parameter("nope", &t(d, &[0.0], &[1])),
            "InvalidArgument",
            &["nope"],
        )
    });
    c.case("set_parameter wrong shape", || {
        let mut g = ok(Gpt::new(d, tiny_cfg(), 1))?;
        err(
            g.set_parameter("transformer.wte.weight", &t(d, &[0.0; 4], &[1, 4])),
            "Shape",
            &["[1, 4]"],
        )
    });
    c.finish();
}

// ---------------------------------------------------------------------------------------------
// Files: safetensors, config.json, CSV.

/// A safetensors file from a raw header and data section.
fn raw_st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Hostile or broken safetensors bytes, each with the words its error must contain (all
/// loaders wrap them as InvalidArgument naming the file).
fn hostile_safetensors(valid: &[u8]) -> Vec<(String, Vec<u8>)> {
    let w = r#""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("empty file".into(), vec![]),
        ("7 bytes".into(), vec![1; 7]),
        (
            "header length u64::MAX".into(),
            u64::MAX.to_le_bytes().to_vec(),
        ),
        ("header length past the end".into(), {
            let mut b = 1000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        (
            "header length 2^40".into(),
            (1u64 << 40).to_le_bytes().to_vec(),
        ),
        ("header not JSON".into(), raw_st("{{{{", &[])),
        ("header JSON array".into(), raw_st("[1,2]", &[])),
        ("header not UTF-8".into(), {
            let mut b = 4u64.to_le_bytes().to_vec();
            b.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
            b
        }),
        (
            "data_offsets past the end".into(),
            raw_st(&format!("{{{w}}}"), &[0; 4]),
        ),
        (
            "data_offsets reversed".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                &[0; 8],
            ),
        ),
        (
            "overlapping offsets".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
        ),
        (
            "offsets leave a gap".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "shape disagrees with the byte count".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "shape product overflows".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "unknown dtype".into(),
            raw_st(
                r#"{"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
        (
            "negative offsets".into(),
            raw_st(
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}"#,
                &[0; 8],
            ),
        ),
        (
            "metadata not strings".into(),
            raw_st(&format!(r#"{{"__metadata__":{{"step":5}},{w}}}"#), &[0; 8]),
        ),
        (
            "duplicate tensor name".into(),
            raw_st(&format!("{{{w},{w}}}"), &[0; 8]),
        ),
    ];
    // Every strict prefix of a valid file, at a few cut points (header and data).
    for cut in [8, 9, 20, valid.len() / 2, valid.len() - 4, valid.len() - 1] {
        v.push((format!("truncated to {cut} bytes"), valid[..cut].to_vec()));
    }
    v
}

#[test]
fn hostile_checkpoints() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("checkpoint");
    let dir = tmp_dir("ckpt");
    let path = dir.join("c.safetensors");
    let model = nn::mlp(d, &[3, 4, 2], Activation::Relu, 0).unwrap();
    let mut opt = Optimizer::adam(model.parameters(), 0.01).unwrap();
    checkpoint::save(&path, &model, Some(&opt)).unwrap();
    let valid = std::fs::read(&path).unwrap();
    let before: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|(_, p)| p.to_vec().unwrap())
        .collect();
    let unchanged = || -> Check {
        let now: Vec<Vec<f32>> = model
            .parameters()
            .iter()
            .map(|(_, p)| p.to_vec().unwrap())
            .collect();
        ensure(now == before, || {
            "a failed load changed the parameters".into()
        })
    };
    for (name, bytes) in hostile_safetensors(&valid) {
        c.case(&format!("checkpoint: {name}"), || {
            std::fs::write(&path, &bytes).unwrap();
            err(
                checkpoint::load_params(&path, &model.parameters(), Some(&mut opt)),
                "InvalidArgument",
                &["c.safetensors"],
            )?;
            unchanged()
        });
    }
    // Well-formed safetensors that do not fit the model.
    let params = model.parameters();
    let named = |f: &dyn Fn(&str, &Tensor) -> (Vec<u8>, Vec<usize>, safetensors::Dtype)| {
        let host: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = params
            .iter()
            .map(|(n, p)| {
                let (b, s, dt) = f(n, p);
                (n.clone(), b, s, dt)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = host
            .iter()
            .map(|(n, b, s, dt)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let as_f32 = |p: &Tensor| bytemuck::cast_slice::<f32, u8>(&p.to_vec().unwrap()).to_vec();
    c.case("checkpoint: every tensor I32", || {
        let b = named(&|_, p| (as_f32(p), p.shape().to_vec(), safetensors::Dtype::I32));
        std::fs::write(&path, b).unwrap();
        err(
            checkpoint::load_params(&path, &params, None),
            "InvalidArgument",
            &["I32", "F32"],
        )?;
        unchanged()
    });
    c.case("checkpoint: F16 where F32 is expected", || {
        let b = named(&|_, p| {
            (
                vec![0u8; 2 * p.numel()],
                p.shape().to_vec(),
                safetensors::Dtype::F16,
            )
        });
        std::fs::write(&path, b).unwrap();
        err(
            checkpoint::load_params(&path, &params, None),
            "InvalidArgument",
            &["F16"],
        )?;
        unchanged()
    });
    c.case("checkpoint: transposed shapes", || {
        let b = named(&|_, p| {
            let mut s = p.shape().to_vec();
            s.reverse();
            (as_f32(p), s, safetensors::Dtype::F32)
        });
        std::fs::write(&path, b).unwrap();
        err(
            checkpoint::load_params(&path, &params, None),
            "InvalidArgument",
            &["shape"],
        )?;
        unchanged()
    });
    c.case(
        "checkpoint: NaN values load as NaN (no check on values)",
        || {
            let b = named(&|_, p| {
                (
                    bytemuck::cast_slice::<f32, u8>(&vec![f32::NAN; p.numel()]).to_vec(),
                    p.shape().to_vec(),
                    safetensors::Dtype::F32,
                )
            });
            std::fs::write(&path, b).unwrap();
            let scratch = ok(nn::mlp(d, &[3, 4, 2], Activation::Relu, 9))?;
            ok(checkpoint::load(&path, &scratch, None))?;
            let v = ok(scratch.parameters()[0].1.to_vec())?;
            ensure(v.iter().all(|x| x.is_nan()), || format!("{v:?}"))
        },
    );
    for (name, meta, word) in [
        ("step not a number", ("step", "many"), "step"),
        ("step negative", ("step", "-1"), "step"),
        ("format of another tool", ("format", "pt"), "format"),
    ] {
        c.case(&format!("checkpoint: metadata {name}"), || {
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = vec![];
            let mut m = std::collections::HashMap::new();
            m.insert(meta.0.to_string(), meta.1.to_string());
            std::fs::write(&path, safetensors::serialize(views, Some(m)).unwrap()).unwrap();
            err(
                checkpoint::load_params(&path, &[], None),
                "InvalidArgument",
                &[word],
            )
        });
    }
    c.case("checkpoint: the path is a directory", || {
        err(checkpoint::load(&dir, &model, None), "Io", &[])
    });
    c.case("checkpoint: save into a missing directory", || {
        err(
            checkpoint::save(dir.join("no/such/dir/c.safetensors"), &model, None),
            "Io",
            &["no/such/dir"],
        )
    });
    c.case("checkpoint: save to a path that is a directory", || {
        err(checkpoint::save(&dir, &model, None), "Io", &[])
    });
    c.case("checkpoint: save to an empty path", || {
        err(
            checkpoint::save("", &model, None),
            "InvalidArgument",
            &["not a file path"],
        )
        .or_else(|_| err(checkpoint::save("", &model, None), "Io", &[]))
    });
    c.case("checkpoint: save repeated names", || {
        let p = model.parameters();
        let twice = vec![p[0].clone(), p[0].clone()];
        err(
            checkpoint::save_params(&path, &twice, None),
            "InvalidArgument",
            &["repeated"],
        )
    });
    c.case("checkpoint: save a name in the optim. namespace", || {
        let p = model.parameters();
        err(
            checkpoint::save_params(&path, &[("optim.x".into(), p[0].1.clone())], None),
            "InvalidArgument",
            &["reserved"],
        )
    });
    c.case("checkpoint: save a u32 tensor", || {
        err(
            checkpoint::save_params(&path, &[("ids".into(), ids(d, &[1], &[1]))], None),
            "DType",
            &["u32"],
        )
    });
    c.case("checkpoint: a good file still loads after all that", || {
        std::fs::write(&path, &valid).unwrap();
        ok(checkpoint::load_params(
            &path,
            &model.parameters(),
            Some(&mut opt),
        ))
        .map(|_| ())
    });
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}

#[test]
fn hostile_pretrained_directories() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained");
    let dir = tmp_dir("pretrained");
    let model = Gpt::new(d, tiny_cfg(), 0).unwrap();
    save_pretrained(&model, &dir).unwrap();
    let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let st_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let restore = || {
        std::fs::write(dir.join("config.json"), &cfg_text).unwrap();
        std::fs::write(dir.join("model.safetensors"), &st_bytes).unwrap();
    };
    c.case("pretrained: the good directory loads", || {
        ok(load_pretrained(d, &dir)).map(|_| ())
    });
    c.case("pretrained: missing directory", || {
        err(
            load_pretrained(d, &dir.join("nope")),
            "Io",
            &["config.json"],
        )
    });
    c.case("pretrained: missing model.safetensors", || {
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let r = err(load_pretrained(d, &dir), "Io", &["model.safetensors"]);
        restore();
        r
    });
    for (name, bytes) in hostile_safetensors(&st_bytes) {
        c.case(&format!("pretrained: {name}"), || {
            std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
            let r = err(
                load_pretrained(d, &dir),
                "InvalidArgument",
                &["model.safetensors"],
            );
            restore();
            r
        });
    }
    let v: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    let with = |key: &str, val: serde_json::Value| {
        let mut v = v.clone();
        v[key] = val;
        v.to_string()
    };
    let without = |key: &str| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };
    use serde_json::json;
    let configs: Vec<(&str, String, Vec<&str>)> = vec![
        ("empty config.json", String::new(), vec!["JSON"]),
        (
            "config.json not JSON",
            "{\"n_layer\": ".into(),
            vec!["JSON"],
        ),
        ("config.json an array", "[]".into(), vec!["missing"]),
        ("config.json null", "null".into(), vec!["missing"]),
        ("n_layer missing", without("n_layer"), vec!["n_layer"]),
        (
            "n_layer a string",
            with("n_layer", json!("1")),
            vec!["n_layer", "positive integer"],
        ),
        (
            "n_layer negative",
            with("n_layer", json!(-1)),
            vec!["n_layer"],
        ),
        ("n_layer 1.5", with("n_layer", json!(1.5)), vec!["n_layer"]),
        ("n_head 0", with("n_head", json!(0)), vec!["n_head"]),
        (
            "n_head not dividing n_embd",
            with("n_head", json!(3)),
            vec!["multiple"],
        ),
        (
            "vocab_size 1e30",
            with("vocab_size", json!(1e30)),
            vec!["vocab_size"],
        ),
        (
            "n_positions and n_ctx missing",
            without("n_positions").replace("\"n_ctx\"", "\"n_cx\""),
            vec!["n_positions"],
        ),
        (
            "activation relu",
            with("activation_function", json!("relu")),
            vec!["activation_function"],
        ),
        (
            "layer_norm_epsilon negative",
            with("layer_norm_epsilon", json!(-1.0)),
            vec!["epsilon"],
        ),
        (
            "resid_pdrop 1.5",
            with("resid_pdrop", json!(1.5)),
            vec!["dropout"],
        ),
        // Sizes that disagree with the tensors: caught when shapes are compared, before the
        // host builds anything of the config's size.
        (
            "vocab_size u64-sized",
            with("vocab_size", json!(1u64 << 62)),
            vec!["out of range"],
        ),
        (
            "n_embd larger than the tensors",
            with("n_embd", json!(8)),
            vec!["shape"],
        ),
        (
            "n_layer larger than the tensors",
            with("n_layer", json!(2)),
            vec!["missing"],
        ),
        (
            "n_layer smaller than the tensors",
            with("n_layer", json!(0)),
            vec!["n_layer"],
        ),
    ];
    for (name, text, words) in configs {
        c.case(&format!("pretrained: {name}"), || {
            std::fs::write(dir.join("config.json"), &text).unwrap();
            let r = err(
                load_pretrained(d, &dir).map(|_| ()),
                "InvalidArgument",
                &words,
            );
            restore();
            r
        });
    }
    c.case("load_config of a missing file", || {
        err(load_config(&dir.join("none.json")), "Io", &["none.json"])
    });
    // Tensors that do not fit the config.
    let cfgd = tiny_cfg();
    let shapes = Gpt::parameter_shapes(&cfgd);
    let write_tensors =
        |f: &dyn Fn(&str, &[usize]) -> Option<(safetensors::Dtype, Vec<usize>, usize)>| {
            let host: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = shapes
                .iter()
                .filter_map(|(n, s)| {
                    f(n, s).map(|(dt, shape, bytes_per)| {
                        let n_el: usize = shape.iter().product();
                        (n.clone(), dt, shape, vec![0u8; n_el * bytes_per])
                    })
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = host
                .iter()
                .map(|(n, dt, s, b)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
                    )
                })
                .collect();
            std::fs::write(
                dir.join("model.safetensors"),
                safetensors::serialize(views, None).unwrap(),
            )
            .unwrap();
        };
    use safetensors::Dtype;
    for (name, dtype, bpe, words) in [
        (
            "I64 tensors",
            Dtype::I64,
            8,
            vec!["I64", "F32, F16 or BF16"],
        ),
        ("U8 tensors", Dtype::U8, 1, vec!["U8"]),
        ("F64 tensors", Dtype::F64, 8, vec!["F64"]),
        ("BOOL tensors", Dtype::BOOL, 1, vec!["BOOL"]),
    ] {
        c.case(&format!("pretrained: {name}"), || {
            write_tensors(&|_, s| Some((dtype, s.to_vec(), bpe)));
            let r = err(
                load_pretrained(d, &dir).map(|_| ()),
                "InvalidArgument",
                &words,
            );
            restore();
            r
        });
    }
    c.case("pretrained: F16 and BF16 tensors load", || {
        write_tensors(&|n, s| {
            Some((
                if n.contains("wte") {
                    Dtype::BF16
                } else {
                    Dtype::F16
                },
                s.to_vec(),
                2,
            ))
        });
        let r = ok(load_pretrained(d, &dir)).map(|_| ());
        restore();
        r
    });
    c.case("pretrained: a tensor missing", || {
        write_tensors(&|n, s| (!n.contains("c_fc.bias")).then(|| (Dtype::F32, s.to_vec(), 4)));
        let r = err(
            load_pretrained(d, &dir).map(|_| ()),
            "InvalidArgument",
            &["c_fc.bias", "missing"],
        );
        restore();
        r
    });
    c.case("pretrained: a tensor of the wrong shape", || {
        write_tensors(&|n, s| {
            let mut s = s.to_vec();
            if n.contains("wpe") {
                s[0] += 1;
            }
            Some((Dtype::F32, s, 4))
        });
        let r = err(
            load_pretrained(d, &dir).map(|_| ()),
            "InvalidArgument",
            &["wpe", "config.json"],
        );
        restore();
        r
    });
    c.case("pretrained: an extra tensor", || {
        let data = vec![0u8; 16];
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = vec![];
        let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
        for (n, v) in st.tensors() {
            views.push((n, v));
        }
        views.push((
            "transformer.h.7.mlp.c_fc.weight".into(),
            safetensors::tensor::TensorView::new(Dtype::F32, vec![4], &data).unwrap(),
        ));
        std::fs::write(
            dir.join("model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        let r = err(
            load_pretrained(d, &dir).map(|_| ()),
            "InvalidArgument",
            &["h.7"],
        );
        restore();
        r
    });
    c.case("pretrained: lm_head of the wrong shape", || {
        let data = vec![0u8; 16];
        let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
        views.push((
            "lm_head.weight".into(),
            safetensors::tensor::TensorView::new(Dtype::F32, vec![4], &data).unwrap(),
        ));
        std::fs::write(
            dir.join("model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        let r = err(
            load_pretrained(d, &dir).map(|_| ()),
            "InvalidArgument",
            &["lm_head"],
        );
        restore();
        r
    });
    c.case("save_tensors to a missing directory", || {
        err(
            save_tensors(&dir.join("no/dir/x.safetensors"), &model.parameters()),
            "Io",
            &["no/dir"],
        )
    });
    c.case("save_pretrained to a file path", || {
        let f = dir.join("config.json");
        err(save_pretrained(&model, &f), "Io", &[])
    });
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}

#[test]
fn bad_csv_files() {
    let mut c = Corpus::new("csv");
    let p = Path::new("bad.csv");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "header only with one column",
            "y\n0\n1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "NaN feature",
            "a,y\nNaN,0\n1,1\n".into(),
            vec!["line 2", "column 1"],
        ),
        ("-inf feature", "a,y\n-inf,0\n1,1\n".into(), vec!["line 2"]),
        (
            "1e39 overflows f32",
            "a,y\n1e39,0\n1,1\n".into(),
            vec!["line 2"],
        ),
        (
            "empty feature cell",
            "a,b,y\n1,,0\n1,2,1\n".into(),
            vec!["line 2", "column 2"],
        ),
        ("empty label cell", "a,y\n1,\n2,1\n".into(), vec!["line 2"]),
        (
            "too many fields",
            "a,y\n1,0,5\n2,1\n".into(),
            vec!["line 2", "3 fields"],
        ),
        (
            "quote inside a number",
            "a,y\n\"1\"2,0\n2,1\n".into(),
            vec!["line 2"],
        ),
        ("NUL byte", "a,y\n1\0,0\n2,1\n".into(), vec!["line 2"]),
        (
            "sklearn header negative count",
            "-2,2,a,b\n1,2,0\n3,4,1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn header zero features",
            "2,0,a,b\n0\n1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn header with 10^10 features",
            "5,9999999999,a,b\n1,2,0\n".into(),
            vec!["line 1", "9999999999 features"],
        ),
        (
            "sklearn header huge count",
            "99999999999999999999,2,a,b\n1,2,0\n3,4,1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn header one class",
            "2,2,a\n1,2,0\n3,4,0\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn non-integer label",
            "2,2,a,b\n1,2,0.5\n3,4,1\n".into(),
            vec!["line 2"],
        ),
        (
            "a single line of garbage",
            "\u{feff}\u{feff}\r\r".into(),
            vec!["bad.csv"],
        ),
        ("only quotes", "\"\"\"\n\"\"\"\n".into(), vec!["bad.csv"]),
        (
            "unnamed class id u32::MAX",
            "2,2\n1,2,0\n3,4,4294967295\n".into(),
            vec!["line 3", "not a class id in 0..65536"],
        ),
        (
            "text after a closing quote",
            "a,y\n\"1\" x,0\n2,1\n".into(),
            vec!["line 2", "closing quote"],
        ),
        (
            "a 100k-column header and one short row",
            format!("{}y\n1,0\n", "a,".repeat(100_000)),
            vec!["line 2"],
        ),
    ];
    for (name, text, words) in cases {
        c.case(&format!("csv: {name}"), || {
            err(parse_csv(p, &text), "InvalidArgument", &words)
        });
    }
    c.case("csv: 40k distinct labels parse in linear-ish time", || {
        let mut text = String::from("a,y\n");
        for i in 0..40_000 {
            text.push_str(&format!("{i},l{i}\n"));
        }
        let t0 = std::time::Instant::now();
        let tb = ok(parse_csv(p, &text))?;
        let secs = t0.elapsed().as_secs_f64();
        let want = tb.class_names.iter().position(|n| n == "l123").unwrap() as u32;
        ensure(tb.n_classes() == 40_000 && tb.labels[123] == want, || {
            "labels wrong".into()
        })?;
        ensure(secs < 5.0, || format!("took {secs:.1} s"))
    });
    c.case("csv: numeric labels 0, -0 and 0.0 are one class", || {
        let tb = ok(parse_csv(p, "a,y\n1,0\n2,-0\n3,0.0\n4,1\n"))?;
        ensure(tb.n_classes() == 2 && tb.labels == [0, 0, 0, 1], || {
            format!("{tb:?}")
        })
    });
    let dir = tmp_dir("csv");
    c.case("csv: not UTF-8", || {
        let f = dir.join("latin1.csv");
        std::fs::write(&f, b"a,y\n\xe9,0\n").unwrap();
        err(read_csv(&f), "InvalidArgument", &["UTF-8", "latin1.csv"])
    });
    c.case("csv: a directory", || err(read_csv(&dir), "Io", &[]));
    c.case("csv: Dataset from a table with bad labels", || {
        let mut tb = ok(parse_csv(p, "a,y\n1,0\n2,1\n"))?;
        tb.labels[0] = 9;
        err(Dataset::from_table(&tb), "InvalidArgument", &[])
    });
    c.case("csv: Dataset from a table with ragged features", || {
        let mut tb = ok(parse_csv(p, "a,y\n1,0\n2,1\n"))?;
        tb.features.pop();
        err(Dataset::from_table(&tb), "InvalidArgument", &[])
            .or_else(|_| err(Dataset::from_table(&tb), "Shape", &[]))
    });
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}

/// `GptConfig::validate` bounds the sizes (n_layer <= 4096, widths <= 2^24), so a huge
/// `n_layer` is an error before anything is allocated, from `Gpt::new` and from config.json.
#[test]
fn huge_n_layer_is_an_error_not_a_panic() {
    let dev = shared_device();
    let cfg = GptConfig {
        n_layer: 1 << 60,
        ..tiny_cfg()
    };
    let r = catch_unwind(AssertUnwindSafe(|| Gpt::new(&dev, cfg, 0).map(|_| ())));
    match r {
        Ok(r) => assert!(r.is_err(), "a 2^60-layer GPT was built"),
        Err(_) => panic!("Gpt::new panicked on n_layer = 2^60"),
    }
}
