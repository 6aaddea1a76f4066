//! nn modules: mlp, Linear, Embedding, LayerNorm, Dropout, and degenerate sizes.

use portagrad::nn::{self, Embedding, LayerNorm, Linear, Module};
use portagrad::testing::shared_device;
use portagrad::{Activation, Device, Tensor, attention};

use crate::{Corpus, Probe, err, ids, ok, probes, t};

#[test]
fn module_construction_and_forward() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nn");
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
    c.finish();
}

#[test]
fn degenerate_sizes() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("nn/degenerate");
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
    probes(&mut c, degenerate);
    c.finish();
}
