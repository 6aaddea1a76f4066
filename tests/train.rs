//! Modules, the data loader, fit / evaluate / predict (binary and multi-class), NaN detection
//! and early stopping.

use portagrad::io::csv::read_csv;
use portagrad::nn::{self, Dropout, Embedding, LayerNorm, Linear, Module, Sequential};
use portagrad::optim::{OptimConfig, Optimizer};
use portagrad::testing::{random_vec, shared_device};
use portagrad::train::{
    DataLoader, Dataset, EarlyStopping, FitConfig, Progress, Targets, classes_from_outputs,
    evaluate, fit, predict,
};
use portagrad::{Activation, Error, Tensor};

fn quiet(epochs: usize, batch: usize) -> FitConfig {
    FitConfig {
        epochs,
        batch_size: batch,
        progress: Progress::Never,
        ..FitConfig::default()
    }
}

/// Two Gaussian-ish classes separated along a random direction.
fn binary_data(n: usize, d: usize, seed: u64) -> Dataset {
    let x = random_vec(n * d, -1.0, 1.0, seed);
    let w = random_vec(d, -1.0, 1.0, seed + 1);
    let y = x
        .chunks(d)
        .map(|r| {
            f32::from(u8::from(
                r.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() > 0.0,
            ))
        })
        .collect();
    Dataset::new(x, d, Targets::Binary(y)).unwrap()
}

#[test]
fn parameter_names_follow_the_state_dict_convention() {
    let dev = shared_device();
    let m = nn::mlp(&dev, &[3, 4, 2], Activation::Relu, 0).unwrap();
    let names: Vec<String> = m.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias"
        ]
    );
    assert_eq!(m.num_parameters(), 3 * 4 + 4 + 4 * 2 + 2);
    let s = Sequential::new()
        .layer(Embedding::new(&dev, 10, 4, 1).unwrap())
        .layer(LayerNorm::new(&dev, 4).unwrap())
        .layer(Dropout::new(0.1, 3).unwrap())
        .layer(Linear::new(&dev, 4, 2, 2).unwrap());
    let names: Vec<String> = s.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "layers.0.weight",
            "layers.1.weight",
            "layers.1.bias",
            "layers.3.weight",
            "layers.3.bias"
        ]
    );
    let ids = Tensor::from_u32(&dev, &[1, 2, 9], &[3]).unwrap();
    let y = s.forward(&ids).unwrap();
    assert_eq!(y.shape(), [3, 2]);
    for (n, p) in s.parameters() {
        assert!(p.requires_grad(), "{n} is a parameter");
    }
}

#[test]
fn initialisation_is_seeded_and_scaled() {
    let dev = shared_device();
    let a = Linear::new(&dev, 30, 64, 7).unwrap();
    let b = Linear::new(&dev, 30, 64, 7).unwrap();
    let c = Linear::new(&dev, 30, 64, 8).unwrap();
    let (wa, wb, wc) = (
        a.weight().to_vec().unwrap(),
        b.weight().to_vec().unwrap(),
        c.weight().to_vec().unwrap(),
    );
    assert_eq!(wa, wb, "same seed, same weights");
    assert_ne!(wa, wc);
    let limit = (6.0f32 / 94.0).sqrt();
    assert!(wa.iter().all(|w| w.abs() <= limit), "Glorot bound {limit}");
    assert!(
        wa.iter().any(|w| w.abs() > 0.8 * limit),
        "spread over the range"
    );
    assert!(
        a.bias()
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .all(|&b| b == 0.0)
    );
    let e = Embedding::new(&dev, 500, 40, 1)
        .unwrap()
        .weight()
        .to_vec()
        .unwrap();
    let mean = e.iter().sum::<f32>() / e.len() as f32;
    let std = (e.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / e.len() as f32).sqrt();
    assert!(
        mean.abs() < 0.002 && (std - 0.02).abs() < 0.002,
        "N(0, 0.02): mean {mean}, std {std}"
    );
}

#[test]
fn dropout_is_off_outside_training() {
    let dev = shared_device();
    let d = Dropout::new(0.5, 1).unwrap();
    let x = Tensor::ones(&dev, &[1000]).unwrap().with_grad();
    let y = d.forward(&x).unwrap().to_vec().unwrap();
    let zeros = y.iter().filter(|&&v| v == 0.0).count();
    assert!((350..650).contains(&zeros), "about half dropped: {zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    d.set_training(false);
    assert_eq!(d.forward(&x).unwrap().to_vec().unwrap(), vec![1.0; 1000]);
    assert!(Dropout::new(1.0, 0).is_err());
}

#[test]
fn loader_shuffles_by_seed_and_keeps_the_last_partial_batch() {
    let dev = shared_device();
    let data = binary_data(10, 2, 1);
    let l = DataLoader::new(&dev, &data, 4, Some(5)).unwrap();
    assert_eq!(l.num_batches(), 3);
    let order: Vec<Vec<usize>> = l.batch_indices().map(<[usize]>::to_vec).collect();
    assert_eq!(order.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    let mut all: Vec<usize> = order.concat();
    assert_ne!(all, (0..10).collect::<Vec<_>>(), "shuffled");
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "every row once");
    let again: Vec<Vec<usize>> = DataLoader::new(&dev, &data, 4, Some(5))
        .unwrap()
        .batch_indices()
        .map(<[usize]>::to_vec)
        .collect();
    assert_eq!(order, again, "same seed, same order");
    let other: Vec<Vec<usize>> = DataLoader::new(&dev, &data, 4, Some(6))
        .unwrap()
        .batch_indices()
        .map(<[usize]>::to_vec)
        .collect();
    assert_ne!(order, other);
    let batches: Vec<_> = DataLoader::new(&dev, &data, 4, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches[2].rows, 2);
    assert_eq!(batches[2].x.shape(), [2, 2]);
    assert_eq!(batches[2].y.shape(), [2, 1]);
    assert_eq!(batches[2].x.to_vec().unwrap(), data.features()[16..20]);
    assert!(DataLoader::new(&dev, &data, 0, None).is_err());
}

#[test]
fn fit_learns_a_binary_problem_with_history_and_validation() {
    let dev = shared_device();
    let data = binary_data(200, 6, 11);
    let model = nn::mlp(&dev, &[6, 16, 1], Activation::Relu, 3).unwrap();
    let mut opt = Optimizer::adam(model.parameters(), 0.02).unwrap();
    let cfg = FitConfig {
        validation_split: 0.25,
        ..quiet(8, 16)
    };
    let h = fit(&model, &mut opt, &data, &cfg).unwrap();
    assert_eq!(h.epochs.len(), 8);
    assert_eq!(h.metric_name, "accuracy");
    assert_eq!(
        opt.step_count(),
        8 * 150usize.div_ceil(16) as u64,
        "150 training rows, partial last batch"
    );
    let (first, last) = (&h.epochs[0], &h.epochs[7]);
    assert!(last.loss < first.loss, "{h:?}");
    assert!(last.metric > 0.9, "train accuracy {}", last.metric);
    assert!(
        last.val_metric.unwrap() > 0.85,
        "val accuracy {:?}",
        last.val_metric
    );
    let (loss, acc) = evaluate(&model, &data, 64).unwrap();
    assert!(loss.is_finite() && acc > 0.85, "{loss} {acc}");
    // predict agrees with evaluate's accuracy.
    let out = predict(&model, &dev, data.features(), 6, 64).unwrap();
    assert_eq!(out.len(), 200);
    let Targets::Binary(y) = data.targets() else {
        unreachable!()
    };
    let hits = classes_from_outputs(&out, 1)
        .iter()
        .zip(y)
        .filter(|(p, t)| **p as f32 == **t)
        .count();
    assert!((hits as f32 / 200.0 - acc).abs() < 1e-5, "{hits} vs {acc}");
}

#[test]
fn fit_learns_a_multiclass_csv() {
    let dev = shared_device();
    let t = read_csv(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/blobs3.csv"
    ))
    .unwrap();
    let data = Dataset::from_table(&t).unwrap();
    assert!(matches!(
        data.targets(),
        Targets::Classes { n_classes: 3, .. }
    ));
    let (mut train, mut test) = data.split(0.2, 1).unwrap();
    let s = train.standardizer().unwrap();
    train.standardize(&s).unwrap();
    test.standardize(&s).unwrap();
    let model = nn::mlp(&dev, &[4, 16, 3], Activation::Relu, 1).unwrap();
    let mut opt = Optimizer::adam(model.parameters(), 0.01).unwrap();
    let h = fit(&model, &mut opt, &train, &quiet(15, 16)).unwrap();
    assert!(h.epochs[14].loss < h.epochs[0].loss);
    let (_, acc) = evaluate(&model, &test, 32).unwrap();
    assert!(acc >= 0.9, "3-class test accuracy {acc}");
    let out = predict(&model, &dev, test.features(), 4, 7).unwrap();
    assert_eq!(out.len(), test.len() * 3);
}

#[test]
fn nan_loss_stops_with_the_step() {
    let dev = shared_device();
    let mut data = binary_data(40, 3, 2).features().to_vec();
    data[3 * 21] = f32::NAN; // row 21: batch 3 of 10 rows, unshuffled
    let Targets::Binary(y) = binary_data(40, 3, 2).targets().clone() else {
        unreachable!()
    };
    let data = Dataset::new(data, 3, Targets::Binary(y)).unwrap();
    // No hidden ReLU: max(NaN, 0) may be 0 on a GPU, which would hide the NaN.
    let model = nn::mlp(&dev, &[3, 1], Activation::Relu, 0).unwrap();
    let mut opt = Optimizer::sgd(model.parameters(), 0.1).unwrap();
    let cfg = FitConfig {
        shuffle_seed: None,
        ..quiet(2, 10)
    };
    let e = fit(&model, &mut opt, &data, &cfg).unwrap_err();
    match &e {
        Error::NonFiniteLoss {
            epoch,
            batch,
            step,
            value,
            ..
        } => {
            assert_eq!((*epoch, *batch, *step), (1, 3, 3), "{e}");
            assert!(value.is_nan());
        }
        other => panic!("expected NonFiniteLoss, got {other:?}"),
    }
    assert!(e.to_string().contains("batch 3"), "{e}");
}

#[test]
fn early_stopping_stops_and_restores_the_best() {
    let dev = shared_device();
    let data = binary_data(64, 4, 3);
    let model = nn::mlp(&dev, &[4, 8, 1], Activation::Relu, 0).unwrap();
    // A learning rate of zero never improves: stops after `patience` further epochs.
    let mut opt = Optimizer::new(OptimConfig::sgd(0.0), model.parameters()).unwrap();
    let cfg = FitConfig {
        early_stopping: Some(EarlyStopping::new(2)),
        validation_split: 0.25,
        ..quiet(10, 16)
    };
    let h = fit(&model, &mut opt, &data, &cfg).unwrap();
    assert!(h.stopped_early);
    assert_eq!(h.epochs.len(), 3);

    // With a learning rate that overshoots, the best epoch's parameters come back.
    let model = nn::mlp(&dev, &[4, 8, 1], Activation::Relu, 0).unwrap();
    let mut opt = Optimizer::sgd(model.parameters(), 0.05).unwrap();
    let cfg = FitConfig {
        early_stopping: Some(EarlyStopping::new(1)),
        ..quiet(6, 16)
    };
    let h = fit(&model, &mut opt, &data, &cfg).unwrap();
    if let Some(best) = h.best_epoch {
        let (loss, _) = evaluate(&model, &data, 64).unwrap();
        let best_loss = h.epochs[best - 1].loss;
        assert!(
            loss <= h.epochs.last().unwrap().loss + 1e-3 || (loss - best_loss).abs() < 0.2,
            "{loss} {h:?}"
        );
    }
}

#[test]
fn shape_and_argument_errors() {
    let dev = shared_device();
    let data = binary_data(8, 3, 4);
    let model = nn::mlp(&dev, &[3, 4, 2], Activation::Relu, 0).unwrap();
    let mut opt = Optimizer::adam(model.parameters(), 0.01).unwrap();
    let e = fit(&model, &mut opt, &data, &quiet(1, 4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("one logit"), "{e}");
    assert!(fit(&model, &mut opt, &data, &quiet(0, 4)).is_err());
    assert!(Dataset::new(vec![1.0; 5], 2, Targets::Binary(vec![0.0; 2])).is_err());
    assert!(Dataset::new(vec![1.0; 4], 2, Targets::Binary(vec![0.0; 3])).is_err());
    assert!(
        Dataset::new(
            vec![1.0; 4],
            2,
            Targets::Classes {
                ids: vec![0, 3],
                n_classes: 3
            }
        )
        .is_err()
    );
    assert!(Dataset::new(vec![1.0; 4], 2, Targets::Binary(vec![0.0, 2.0])).is_err());
    assert!(data.split(0.0001, 0).is_err());
    assert!(predict(&model, &dev, &[1.0; 5], 3, 4).is_err());
}

/// The dense layer's gradients (fused forward; backward by transposed matmuls) against the
/// CPU in f64, for each fused activation and a 3-D input.
#[test]
fn linear_gradients_match_cpu() {
    use portagrad::testing::assert_close;
    let dev = shared_device();
    let (rows, k, n) = (6, 5, 7);
    let xv = random_vec(rows * k, -1.0, 1.0, 1);
    let wv = random_vec(k * n, -1.0, 1.0, 2);
    let bv = random_vec(n, -0.5, 0.5, 3);
    let gv = random_vec(rows * n, -1.0, 1.0, 4);
    for act in [Activation::None, Activation::Relu, Activation::Gelu] {
        let x = Tensor::from_slice(&dev, &xv, &[2, 3, k])
            .unwrap()
            .with_grad();
        let w = Tensor::from_slice(&dev, &wv, &[k, n]).unwrap().with_grad();
        let b = Tensor::from_slice(&dev, &bv, &[n]).unwrap().with_grad();
        let lin = Linear::from_parts(w.clone(), Some(b.clone()))
            .unwrap()
            .activation(act);
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.shape(), [2, 3, n]);
        let g = Tensor::from_slice(&dev, &gv, &[2, 3, n]).unwrap();
        let grads = y.mul(&g).unwrap().sum().unwrap().backward().unwrap();
        // CPU: z = x·W + b, y = act(z), dz = g * act'(z).
        let f = |z: f64| match act {
            Activation::None => (z, 1.0),
            Activation::Relu => (z.max(0.0), if z > 0.0 { 1.0 } else { 0.0 }),
            Activation::Gelu => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let t = (c * (z + 0.044715 * z.powi(3))).tanh();
                (
                    0.5 * z * (1.0 + t),
                    0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * z * z),
                )
            }
        };
        let (mut yw, mut dx, mut dw, mut db) = (
            vec![0.0; rows * n],
            vec![0.0; rows * k],
            vec![0.0; k * n],
            vec![0.0; n],
        );
        for r in 0..rows {
            for j in 0..n {
                let z = bv[j] as f64
                    + (0..k)
                        .map(|i| xv[r * k + i] as f64 * wv[i * n + j] as f64)
                        .sum::<f64>();
                let (a, da) = f(z);
                yw[r * n + j] = a;
                let dz = gv[r * n + j] as f64 * da;
                db[j] += dz;
                for i in 0..k {
                    dw[i * n + j] += xv[r * k + i] as f64 * dz;
                    dx[r * k + i] += wv[i * n + j] as f64 * dz;
                }
            }
        }
        assert_close(
            &format!("{act:?} forward"),
            &y.to_vec().unwrap(),
            &yw,
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("{act:?} dx"),
            &grads.get(&x).unwrap().to_vec().unwrap(),
            &dx,
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("{act:?} dW"),
            &grads.get(&w).unwrap().to_vec().unwrap(),
            &dw,
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("{act:?} db"),
            &grads.get(&b).unwrap().to_vec().unwrap(),
            &db,
            1e-4,
            1e-5,
        );
    }
}

/// A dense layer in mixed precision is the f32 layer of its operands rounded to 16 bits (the
/// matmul accumulates in f32, so only the order of the sums differs), and its gradients reach
/// the f32 master weight in f32.
#[test]
fn mixed_precision_linear_is_the_f32_layer_of_rounded_operands() {
    use portagrad::testing::assert_close;
    use portagrad::{DType, Precision};
    let dev = shared_device();
    let (rows, k, n) = (9, 13, 6);
    let xv = random_vec(rows * k, -2.0, 2.0, 21);
    let wv = random_vec(k * n, -1.0, 1.0, 22);
    let bv = random_vec(n, -0.5, 0.5, 23);
    for d in [DType::BF16, DType::F16] {
        let x = Tensor::from_slice(&dev, &xv, &[rows, k]).unwrap();
        let w = Tensor::from_slice(&dev, &wv, &[k, n]).unwrap().with_grad();
        let b = Tensor::from_slice(&dev, &bv, &[n]).unwrap().with_grad();
        let lin = Linear::from_parts(w.clone(), Some(b.clone()))
            .unwrap()
            .activation(Activation::Relu)
            .with_precision(Precision::Mixed(d))
            .unwrap();
        assert_eq!(lin.precision(), Precision::Mixed(d));
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        // The rounded operands (the conversion kernels are bit-exact: tests/ops_convert.rs).
        let round = |t: &Tensor| t.to_dtype(d).unwrap().to_vec().unwrap();
        let (xr, wr) = (round(&x), round(&w));
        let mut want = vec![0.0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let z = f64::from(bv[j])
                    + (0..k)
                        .map(|i| f64::from(xr[r * k + i]) * f64::from(wr[i * n + j]))
                        .sum::<f64>();
                want[r * n + j] = z.max(0.0);
            }
        }
        // f32 accumulation of 13 exact products of size <= 2: a few units of f32 roundoff.
        assert_close(&format!("{d:?}"), &y.to_vec().unwrap(), &want, 1e-5, 1e-5);
        let grads = y.sum().unwrap().backward().unwrap();
        let gw = grads.get(&w).unwrap();
        assert_eq!((gw.dtype(), gw.shape()), (DType::F32, &[k, n][..]));
        assert_eq!(grads.get(&b).unwrap().dtype(), DType::F32);
    }
    // Only 16-bit operand types, and only over f32 master weights.
    let w = Tensor::from_slice(&dev, &wv, &[k, n]).unwrap();
    let lin = Linear::from_parts(w.clone(), None).unwrap();
    assert!(lin.with_precision(Precision::Mixed(DType::F32)).is_err());
    let w16 = Linear::from_parts(w.to_dtype(DType::F16).unwrap(), None).unwrap();
    assert!(w16.with_precision(Precision::Mixed(DType::BF16)).is_err());
}

/// `fit` trains an MLP in mixed precision (bf16; f16 with dynamic loss scaling, the backward
/// on the scaled loss) as well as the f32 test above asks of f32.
#[test]
fn fit_learns_in_mixed_precision() {
    use portagrad::optim::LossScaling;
    use portagrad::{DType, Precision};
    let dev = shared_device();
    let data = binary_data(200, 6, 11);
    for d in [DType::BF16, DType::F16] {
        let model =
            nn::mlp_in(&dev, &[6, 16, 1], Activation::Relu, 3, Precision::Mixed(d)).unwrap();
        let mut opt = Optimizer::adam(model.parameters(), 0.02).unwrap();
        if d == DType::F16 {
            opt.enable_loss_scaling(LossScaling::default()).unwrap();
        }
        let cfg = FitConfig {
            validation_split: 0.25,
            ..quiet(8, 16)
        };
        let h = fit(&model, &mut opt, &data, &cfg).unwrap();
        let (first, last) = (&h.epochs[0], &h.epochs[7]);
        assert!(last.loss < first.loss, "{d:?}: {h:?}");
        assert!(last.metric > 0.9, "{d:?}: train accuracy {}", last.metric);
        assert!(
            last.val_metric.unwrap() > 0.85,
            "{d:?}: val accuracy {:?}",
            last.val_metric
        );
        if d == DType::F16 {
            // The loss is unscaled in the history; the scale never overflowed here.
            let (scale, skipped) = opt.loss_scale().unwrap().unwrap();
            assert_eq!((scale, skipped), (65536.0, 0));
        }
    }
}
