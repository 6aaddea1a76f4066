//! Checkpoints (`io::checkpoint`): hostile files, well-formed files that do not fit the model,
//! bad metadata, bad paths, and what cannot be saved.

use std::path::PathBuf;

use portagrad::io::checkpoint;
use portagrad::nn::{self, Module, Sequential};
use portagrad::optim::Optimizer;
use portagrad::testing::shared_device;
use portagrad::{Activation, Device, Tensor};

use crate::hostile::hostile_safetensors;
use crate::{Check, Corpus, ensure, err, ids, ok, safetensors_bytes, tmp_dir};

/// A small MLP and its Adam state saved to `c.safetensors` in a directory of its own, with the
/// file's bytes and the parameters' values as saved.
struct Saved {
    dir: PathBuf,
    path: PathBuf,
    model: Sequential,
    opt: Optimizer,
    valid: Vec<u8>,
    before: Vec<Vec<f32>>,
}

impl Saved {
    fn new(d: &Device, name: &str) -> Saved {
        let dir = tmp_dir(name);
        let path = dir.join("c.safetensors");
        let model = nn::mlp(d, &[3, 4, 2], Activation::Relu, 0).unwrap();
        let opt = Optimizer::adam(model.parameters(), 0.01).unwrap();
        checkpoint::save(&path, &model, Some(&opt)).unwrap();
        let valid = std::fs::read(&path).unwrap();
        let before: Vec<Vec<f32>> = model
            .parameters()
            .iter()
            .map(|(_, p)| p.to_vec().unwrap())
            .collect();
        Saved {
            dir,
            path,
            model,
            opt,
            valid,
            before,
        }
    }
}

/// A failed load must leave the parameters as they were.
fn unchanged_params(model: &Sequential, before: &[Vec<f32>]) -> Check {
    let now: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|(_, p)| p.to_vec().unwrap())
        .collect();
    ensure(now == before, || {
        "a failed load changed the parameters".into()
    })
}

/// A well-formed safetensors file with one tensor per parameter, its bytes, shape and dtype
/// made by `f`.
fn named_file(
    params: &[(String, Tensor)],
    f: &dyn Fn(&str, &Tensor) -> (Vec<u8>, Vec<usize>, safetensors::Dtype),
) -> Vec<u8> {
    let host: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|(n, p)| {
            let (b, s, dt) = f(n, p);
            (n.clone(), dt, s, b)
        })
        .collect();
    safetensors_bytes(&host)
}

fn as_f32(p: &Tensor) -> Vec<u8> {
    bytemuck::cast_slice::<f32, u8>(&p.to_vec().unwrap()).to_vec()
}

#[test]
fn hostile_bytes_fail_and_change_nothing() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("checkpoint/hostile");
    let Saved {
        dir,
        path,
        model,
        mut opt,
        valid,
        before,
    } = Saved::new(d, "ckpt-hostile");
    let unchanged = || unchanged_params(&model, &before);
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
fn well_formed_files_that_do_not_fit() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("checkpoint/mismatch");
    let Saved {
        dir,
        path,
        model,
        before,
        ..
    } = Saved::new(d, "ckpt-mismatch");
    let unchanged = || unchanged_params(&model, &before);
    // Well-formed safetensors that do not fit the model.
    let params = model.parameters();
    let named = |f: &dyn Fn(&str, &Tensor) -> (Vec<u8>, Vec<usize>, safetensors::Dtype)| {
        named_file(&params, f)
    };
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
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}

#[test]
fn bad_metadata_and_paths() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("checkpoint/paths");
    let Saved {
        dir, path, model, ..
    } = Saved::new(d, "ckpt-paths");
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
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}

#[test]
fn what_cannot_be_saved() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("checkpoint/save");
    let Saved {
        dir, path, model, ..
    } = Saved::new(d, "ckpt-save");
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
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}
