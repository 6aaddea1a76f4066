//! CSV reading (both layouts, every error case), standardisation, and checkpoints (exact
//! resume, atomic writes, checks on load).

use std::path::{Path, PathBuf};

use portagrad::io::checkpoint;
use portagrad::io::csv::{Standardizer, parse_csv, read_csv};
use portagrad::nn::{self, Module};
use portagrad::optim::{LrSchedule, OptimConfig, Optimizer};
use portagrad::testing::{random_vec, shared_device};
use portagrad::train::{Batch, Dataset, Targets, train_step};
use portagrad::{Activation, Error, Tensor};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portagrad-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn csv_err(text: &str) -> String {
    parse_csv(Path::new("bad.csv"), text)
        .unwrap_err()
        .to_string()
}

#[test]
fn reads_the_sklearn_form() {
    let t = read_csv(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/breast_cancer.csv"
    ))
    .unwrap();
    assert_eq!((t.len(), t.n_features, t.n_classes()), (569, 30, 2));
    assert_eq!(t.class_names, ["malignant", "benign"]);
    assert_eq!(t.features[0], 17.99);
    assert_eq!(t.labels[0], 0);
    assert_eq!(t.labels.iter().filter(|&&l| l == 1).count(), 357);
}

#[test]
fn reads_a_plain_csv_with_text_labels() {
    let t = read_csv(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/blobs3.csv"
    ))
    .unwrap();
    assert_eq!((t.len(), t.n_features, t.n_classes()), (120, 4, 3));
    assert_eq!(t.feature_names, ["a", "b", "c", "d"]);
    assert_eq!(t.class_names, ["blue", "green", "red"]);
    let t = parse_csv(
        Path::new("x.csv"),
        "f1, \"f,2\",y\r\n1,2,10\n\n3,4.5,2\n5,6,10\n",
    )
    .unwrap();
    assert_eq!(t.feature_names, ["f1", "f,2"]);
    assert_eq!(t.class_names, ["2", "10"], "numeric labels sort as numbers");
    assert_eq!(t.labels, [1, 0, 1]);
    assert_eq!(t.features, [1.0, 2.0, 3.0, 4.5, 5.0, 6.0]);
}

#[test]
fn csv_errors_name_file_line_and_column() {
    let e = csv_err("a,b,y\n1,2,0\n3,oops,1\n");
    assert!(
        e.contains("bad.csv")
            && e.contains("line 3")
            && e.contains("column 2 (b)")
            && e.contains("\"oops\""),
        "{e}"
    );
    let e = csv_err("a,b,y\n1,2,0\n3,4\n");
    assert!(
        e.contains("bad.csv") && e.contains("line 3") && e.contains("2 fields, expected 3"),
        "{e}"
    );
    let e = csv_err("");
    assert!(e.contains("bad.csv") && e.contains("empty"), "{e}");
    let e = csv_err("\n  \n");
    assert!(e.contains("empty"), "{e}");
    let e = csv_err("a,b,y\n");
    assert!(e.contains("no data rows"), "{e}");
    let e = csv_err("a,b,y\n1,2,1\n3,4,1\n");
    assert!(
        e.contains("bad.csv") && e.contains("two classes") && e.contains("\"1\""),
        "{e}"
    );
    let e = csv_err("2,2,no,yes\n1,2,0\n3,4,7\n");
    assert!(
        e.contains("line 3, column 3 (label)") && e.contains("0..2"),
        "{e}"
    );
    let e = csv_err("3,2,no,yes\n1,2,0\n3,4,1\n");
    assert!(
        e.contains("declares 3 samples") && e.contains("2 rows"),
        "{e}"
    );
    let e = csv_err("a,b,y\n1,inf,0\n3,4,1\n");
    assert!(e.contains("line 2, column 2"), "{e}");
    let e = csv_err("a,b,y\n1,\"2,0\n");
    assert!(e.contains("line 2") && e.contains("quoted"), "{e}");
    let missing = read_csv("/definitely/not/here.csv").unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
    assert!(
        missing.to_string().contains("/definitely/not/here.csv"),
        "{missing}"
    );
}

#[test]
fn standardizer_uses_training_statistics() {
    let s = Standardizer::fit(&[1.0, 10.0, 3.0, 10.0], 2).unwrap();
    assert_eq!(s.mean, [2.0, 10.0]);
    assert_eq!(s.std, [1.0, 1.0], "constant column gets std 1");
    let mut x = vec![4.0, 12.0];
    s.transform(&mut x).unwrap();
    assert_eq!(x, [2.0, 2.0]);
    assert!(Standardizer::fit(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(s.transform(&mut [1.0, 2.0, 3.0]).is_err());
}

/// A small model, optimizer and fixed batches for the resume test.
fn setup(seed: u64) -> (nn::Sequential, Optimizer, Vec<Batch>, Targets) {
    let dev = shared_device();
    let model = nn::mlp(&dev, &[5, 8, 8, 1], Activation::Relu, seed).unwrap();
    let cfg = OptimConfig::adamw(0.02)
        .clip_grad_norm(1.0)
        .schedule(LrSchedule::warmup_cosine(3, 10, 0.001));
    let opt = Optimizer::with_groups(cfg, portagrad::optim::decay_groups(model.parameters(), 0.1))
        .unwrap();
    let x = random_vec(40 * 5, -1.0, 1.0, 3);
    let y: Vec<f32> = (0..40)
        .map(|i| f32::from(u8::from(x[i * 5] + x[i * 5 + 1] > 0.0)))
        .collect();
    let data = Dataset::new(x, 5, Targets::Binary(y)).unwrap();
    let batches: Vec<Batch> = portagrad::train::DataLoader::new(&dev, &data, 8, Some(1))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (model, opt, batches, data.targets().clone())
}

fn bits(model: &dyn Module) -> Vec<(String, Vec<u32>)> {
    model
        .parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

#[test]
fn resume_is_exact() {
    let dir = tmp_dir("resume");
    let path = dir.join("ckpt.safetensors");
    // 10 steps in one run.
    let (model, mut opt, batches, targets) = setup(1);
    for i in 0..10 {
        train_step(&model, &mut opt, &targets, &batches[i % batches.len()]).unwrap();
    }
    let want = bits(&model);
    // 5 steps, save, load into a differently initialised model and a fresh optimizer, 5 steps.
    let (model_a, mut opt_a, batches, targets) = setup(1);
    for i in 0..5 {
        train_step(&model_a, &mut opt_a, &targets, &batches[i % batches.len()]).unwrap();
    }
    checkpoint::save(&path, &model_a, Some(&opt_a)).unwrap();
    let (model_b, mut opt_b, _, _) = setup(99);
    assert_ne!(bits(&model_b), bits(&model_a));
    let info = checkpoint::load(&path, &model_b, Some(&mut opt_b)).unwrap();
    assert_eq!(info.step, 5);
    assert_eq!(info.optimizer.as_deref(), Some("adamw"));
    assert_eq!(info.dropout, None, "saved without dropout state");
    assert_eq!(opt_b.step_count(), 5);
    assert_eq!(bits(&model_b), bits(&model_a), "loaded parameters");
    for i in 5..10 {
        train_step(&model_b, &mut opt_b, &targets, &batches[i % batches.len()]).unwrap();
    }
    assert_eq!(
        bits(&model_b),
        want,
        "10 steps == 5 steps, save, load, 5 steps (bitwise)"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn checkpoint_file_is_a_plain_state_dict() {
    let dir = tmp_dir("layout");
    let path = dir.join("m.safetensors");
    let (model, mut opt, batches, targets) = setup(2);
    train_step(&model, &mut opt, &targets, &batches[0]).unwrap();
    checkpoint::save(&path, &model, Some(&opt)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    assert!(
        names.contains(&"layers.0.weight") && names.contains(&"layers.2.bias"),
        "{names:?}"
    );
    assert!(
        names.contains(&"optim.exp_avg.layers.1.weight")
            && names.contains(&"optim.exp_avg_sq.layers.2.bias"),
        "{names:?}"
    );
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), [5, 8]);
    // Parameters only: loads into a model without an optimizer.
    checkpoint::save(&path, &model, None).unwrap();
    let (other, ..) = setup(3);
    let info = checkpoint::load(&path, &other, None).unwrap();
    assert_eq!((info.step, info.optimizer), (0, None));
    assert_eq!(bits(&other), bits(&model));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failed_write_keeps_the_previous_checkpoint() {
    let dir = tmp_dir("atomic");
    let path = dir.join("keep.safetensors");
    let (model, opt, ..) = setup(4);
    checkpoint::save(&path, &model, Some(&opt)).unwrap();
    let before = std::fs::read(&path).unwrap();
    // Block the temporary file: a directory where the write would create it.
    let tmp = dir.join(format!(".keep.safetensors.tmp{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let (other, ..) = setup(5);
    let e = checkpoint::save(&path, &other, None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "previous checkpoint intact"
    );
    std::fs::remove_dir(&tmp).unwrap();
    // And nothing is left behind by a successful write.
    checkpoint::save(&path, &other, None).unwrap();
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("keep.safetensors")]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn load_checks_names_shapes_dtypes_and_optimizer() {
    let dev = shared_device();
    let dir = tmp_dir("checks");
    let path = dir.join("c.safetensors");
    let (model, opt, ..) = setup(6);
    checkpoint::save(&path, &model, Some(&opt)).unwrap();

    let wider = nn::mlp(&dev, &[5, 9, 8, 1], Activation::Relu, 0).unwrap();
    let e = checkpoint::load(&path, &wider, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.safetensors")
            && e.contains("layers.0.weight")
            && e.contains("[5, 8]")
            && e.contains("[5, 9]"),
        "{e}"
    );

    let mut more = model.parameters();
    more.push((
        "head.weight".into(),
        Tensor::zeros(&dev, &[2, 2]).unwrap().with_grad(),
    ));
    let e = checkpoint::load_params(&path, &more, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("head.weight") && e.contains("missing"), "{e}");

    let fewer: Vec<_> = model.parameters().into_iter().take(4).collect();
    let e = checkpoint::load_params(&path, &fewer, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not have") && e.contains("layers.2"), "{e}");

    let (same, ..) = setup(7);
    let mut sgd = Optimizer::new(OptimConfig::sgd(0.1).momentum(0.9), same.parameters()).unwrap();
    let e = checkpoint::load(&path, &same, Some(&mut sgd))
        .unwrap_err()
        .to_string();
    assert!(e.contains("adamw") && e.contains("sgd"), "{e}");
    checkpoint::save(&path, &model, None).unwrap();
    let mut adam = Optimizer::new(OptimConfig::adamw(0.1), same.parameters()).unwrap();
    let e = checkpoint::load(&path, &same, Some(&mut adam))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no optimizer state"), "{e}");

    // A tensor of the wrong dtype.
    let data = vec![0u8; 40];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![40], &data).unwrap();
    std::fs::write(&path, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
    let w = Tensor::zeros(&dev, &[40]).unwrap().with_grad();
    let e = checkpoint::load_params(&path, &[("w".into(), w)], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("U8") && e.contains("F32"), "{e}");

    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = checkpoint::load(&path, &model, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    let e = checkpoint::load(dir.join("none.safetensors"), &model, None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn write_atomic_writes_syncs_and_keeps_the_old_file_on_failure() {
    // `models::write_atomic` is the one `io::write_atomic` every saver uses.
    let dir = tmp_dir("write-atomic").join("fresh");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("a.bin");
    portagrad::models::write_atomic(&path, b"first").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    portagrad::io::write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    // A write that cannot create its temporary file fails and leaves the old file.
    let tmp = dir.join(format!(".a.bin.tmp{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let e = portagrad::models::write_atomic(&path, b"third").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"second",
        "previous file intact"
    );
    std::fs::remove_dir(&tmp).unwrap();
    // Into a missing directory: an error naming it, nothing written.
    let e = portagrad::io::write_atomic(&dir.join("no/such/b.bin"), b"x").unwrap_err();
    assert!(e.to_string().contains("no/such"), "{e}");
    // Not a file path.
    assert!(matches!(
        portagrad::io::write_atomic(Path::new(""), b"x"),
        Err(Error::InvalidArgument { .. })
    ));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("a.bin")],
        "no temporary left"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// Named tensors keep their dtypes through a safetensors file: f16 and bf16 are written and
/// read as 16-bit bits (no upcast), ids as u32; the file is what `safetensors` itself reads.
#[test]
fn safetensors_keep_each_dtype() {
    use portagrad::DType;
    use portagrad::io::{load_safetensors, save_safetensors};
    let dev = shared_device();
    let dir = tmp_dir("st-dtypes");
    let path = dir.join("t.safetensors");
    let v: Vec<f32> = (0..15).map(|i| i as f32 * 0.3 - 2.0).collect();
    let f32t = Tensor::from_slice(&dev, &v, &[3, 5]).unwrap();
    let tensors = vec![
        ("a.f32".to_string(), f32t.clone()),
        ("b.f16".to_string(), f32t.to_dtype(DType::F16).unwrap()),
        ("c.bf16".to_string(), f32t.to_dtype(DType::BF16).unwrap()),
        (
            "d.ids".to_string(),
            Tensor::from_u32(&dev, &[7, 0, 3], &[3]).unwrap(),
        ),
        (
            "e.odd".to_string(),
            Tensor::from_slice_as(&dev, &v[..7], &[7], DType::F16).unwrap(),
        ),
    ];
    save_safetensors(&path, &tensors).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("b.f16").unwrap().dtype(), safetensors::Dtype::F16);
    assert_eq!(
        st.tensor("b.f16").unwrap().data().len(),
        30,
        "2 bytes per element"
    );
    assert_eq!(
        st.tensor("e.odd").unwrap().data().len(),
        14,
        "no padding in the file"
    );
    assert_eq!(
        st.tensor("c.bf16").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    let back = load_safetensors(&dev, &path).unwrap();
    let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["a.f32", "b.f16", "c.bf16", "d.ids", "e.odd"],
        "file order"
    );
    for ((n, want), (_, got)) in tensors.iter().zip(&back) {
        assert_eq!(
            (got.dtype(), got.shape()),
            (want.dtype(), want.shape()),
            "{n}"
        );
        if want.dtype() == DType::U32 {
            assert_eq!(got.to_vec_u32().unwrap(), want.to_vec_u32().unwrap());
        } else {
            assert_eq!(got.to_vec().unwrap(), want.to_vec().unwrap(), "{n}");
        }
        if want.dtype().is_half() {
            assert_eq!(got.to_half_bits().unwrap(), want.to_half_bits().unwrap());
        }
    }
    // A dtype the library does not hold is an error naming the tensor; a missing file an Io.
    let data = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &data).unwrap();
    std::fs::write(&path, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
    let e = load_safetensors(&dev, &path).unwrap_err().to_string();
    assert!(e.contains("w") && e.contains("F64"), "{e}");
    assert!(matches!(
        load_safetensors(&dev, &dir.join("missing.safetensors")),
        Err(Error::Io { .. })
    ));
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(matches!(
        load_safetensors(&dev, &path),
        Err(Error::InvalidArgument { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
