//! Ops: matmul and linear, gather_rows, layer_norm and dropout, losses, backward.

use portagrad::testing::shared_device;
use portagrad::{Activation, Tensor};

use crate::{Corpus, err, ids, limit, ok, t};

#[test]
fn matmul_and_linear_shapes() {
    let dev = shared_device();
    let mut c = Corpus::new("ops/matmul");
    let d = &dev;
    let lim = limit(d);
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
    c.finish();
}

#[test]
fn gather_rows_ids_and_tables() {
    let dev = shared_device();
    let mut c = Corpus::new("ops/gather_rows");
    let d = &dev;
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
    c.finish();
}

#[test]
fn layer_norm_and_dropout_arguments() {
    let dev = shared_device();
    let mut c = Corpus::new("ops/norm");
    let d = &dev;
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
    c.finish();
}

#[test]
fn loss_targets() {
    let dev = shared_device();
    let mut c = Corpus::new("ops/loss");
    let d = &dev;
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
    c.finish();
}

#[test]
fn backward_of_the_wrong_output() {
    let dev = shared_device();
    let mut c = Corpus::new("ops/backward");
    let d = &dev;
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
