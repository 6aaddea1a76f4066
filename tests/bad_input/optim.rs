//! Optimizer settings and parameters.

use portagrad::nn::{self, Module};
use portagrad::optim::{LrSchedule, OptimConfig, Optimizer};
use portagrad::testing::shared_device;
use portagrad::{Activation, Device, Error};

use crate::{Corpus, Probe, err, ids, ok, probes, t};

/// The parameters of a small model.
fn params(d: &Device) -> Result<Vec<(String, portagrad::Tensor)>, String> {
    ok(nn::mlp(d, &[2, 1], Activation::None, 0)).map(|m| m.parameters())
}

#[test]
fn optimizer_settings_out_of_range() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("optim/settings");
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
            err(Optimizer::new(cfg, params(d)?), "InvalidArgument", &[word])
        });
    }
    c.case("optimizer set_lr NaN", || {
        let mut o = ok(Optimizer::sgd(params(d)?, 0.1))?;
        err(o.set_lr(f64::NAN), "InvalidArgument", &["learning rate"])
    });
    c.finish();
}

#[test]
fn optimizer_parameters() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("optim/parameters");
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
    let degenerate: Vec<(&str, Probe, &str)> = vec![
        (
            "optimizer over the same parameter twice (tied: updated once)",
            Box::new(|| {
                let p = params(d).map_err(Error::Gpu)?;
                let n = p[0].1.numel();
                let o = Optimizer::sgd(vec![p[0].clone(), p[0].clone()], 0.1)?;
                Ok(format!("{}", o.num_elements() == n))
            }),
            "Ok true",
        ),
        (
            "optimizer step with another model's gradients",
            Box::new(|| {
                let mut o = Optimizer::sgd(params(d).map_err(Error::Gpu)?, 0.1)?;
                let other = t(d, &[1.0; 2], &[2]).with_grad();
                let g = other.mul(&other)?.sum()?.backward()?;
                o.step(&g).map(|_| String::new())
            }),
            "InvalidArgument Optimizer::step: none of the optimizer's 2 parameters",
        ),
    ];
    probes(&mut c, degenerate);
    c.finish();
}
