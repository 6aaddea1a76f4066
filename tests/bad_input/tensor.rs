//! Tensor construction, random init, readback, zero-sized operands, reshape and broadcast.

use portagrad::testing::shared_device;
use portagrad::{Error, Tensor};

use crate::{Check, Corpus, ensure, err, ids, limit, ok, t};

#[test]
fn construction_with_wrong_lengths_or_overflowing_shapes() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/construction");
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
    c.finish();
}

#[test]
fn construction_past_the_adapter_limit() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/limit");
    let d = &dev;
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
    c.finish();
}

#[test]
fn random_init_with_bad_bounds() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/random");
    let d = &dev;
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
    c.finish();
}

#[test]
fn readback_of_the_wrong_dtype_or_count() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/readback");
    let d = &dev;
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
    c.finish();
}

#[test]
fn zero_sized_operands() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/zero-sized");
    let d = &dev;
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
    c.finish();
}

#[test]
fn zero_rows_and_no_ids() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/zero rows");
    let d = &dev;
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
    c.finish();
}

#[test]
fn reshape_to_impossible_shapes() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/reshape");
    let d = &dev;
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
    c.finish();
}

#[test]
fn broadcast_and_dtype_mismatches() {
    let dev = shared_device();
    let mut c = Corpus::new("tensor/broadcast");
    let d = &dev;
    let lim = limit(d);
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
    c.finish();
}
