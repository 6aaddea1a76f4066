//! The layout ops (transpose of the last two axes, reshape / flatten, row gathers with and
//! without a chunk mask, concatenation along the last axis): the GPU against
//! `testing::reference::layout`, their gradients (repeated ids included, over more positions
//! than one shader loop may run, deterministic), and their errors.

mod common;

use common::{bits, check_grad, constant, ids, inp};
use portagrad::testing::reference::{layout as r, unary};
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Error, Tensor};

fn upload(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&shared_device(), v, shape).expect("upload")
}

#[test]
fn transpose_last_two_axes() {
    let shapes: &[&[usize]] = &[&[1, 1], &[7, 1], &[3, 7], &[2, 3, 333], &[4099, 4097]];
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = random_vec(n, -1.0, 1.0, 500 + k as u64);
        let r = shape.len();
        let want = r::transpose(&common::f64s(&x), shape);
        let y = upload(&x, shape).transpose().unwrap();
        let mut ws = shape.to_vec();
        ws.swap(r - 2, r - 1);
        assert_eq!(y.shape(), &ws[..]);
        assert_close(
            &format!("transpose {shape:?}"),
            &y.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
        );
    }
    assert!(matches!(
        upload(&[1.0], &[1]).transpose(),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn gather_rows_by_ids() {
    let dev = shared_device();
    for (k, &(v, d, n)) in [
        (1usize, 1usize, 1usize),
        (7, 5, 13),
        (50, 333, 7),
        (300, 64, 70_000),
    ]
    .iter()
    .enumerate()
    {
        let table = random_vec(v * d, -1.0, 1.0, 600 + k as u64);
        let ids: Vec<u32> = (0..n).map(|i| ((i * 7919 + k) % v) as u32).collect();
        let t = upload(&table, &[v, d]);
        let it = Tensor::from_u32(&dev, &ids, &[n]).unwrap();
        let y = t.gather_rows(&it).unwrap();
        assert_eq!(y.shape(), &[n, d]);
        assert_close(
            &format!("gather ({v},{d}) x {n}"),
            &y.to_vec().unwrap(),
            &r::gather_rows(&common::f64s(&table), d, &ids),
            0.0,
            0.0,
        );
    }
    // 2-D ids keep their shape.
    let t = upload(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[3, 2]);
    let ids = Tensor::from_u32(&dev, &[2, 0, 1, 2], &[2, 2]).unwrap();
    let y = t.gather_rows(&ids).unwrap();
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(
        y.to_vec().unwrap(),
        vec![4.0, 5.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
    // Out-of-range ids are an error, not a silent zero row.
    let bad = Tensor::from_u32(&dev, &[0, 3], &[2]).unwrap();
    let err = t.gather_rows(&bad).unwrap_err().to_string();
    assert!(err.contains("id 3") && err.contains("3 rows"), "{err}");
    assert!(matches!(t.gather_rows(&t), Err(Error::DType { .. })));
}

#[test]
fn creation_and_reshape() {
    let dev = shared_device();
    assert_eq!(
        Tensor::zeros(&dev, &[7]).unwrap().to_vec().unwrap(),
        vec![0.0; 7]
    );
    assert_eq!(
        Tensor::ones(&dev, &[2, 3]).unwrap().to_vec().unwrap(),
        vec![1.0; 6]
    );
    assert_eq!(Tensor::full(&dev, &[], 2.5).unwrap().item().unwrap(), 2.5);
    let x = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let y = x.reshape(&[3, usize::MAX]).unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(y.to_vec().unwrap(), x.to_vec().unwrap());
    assert!(matches!(x.reshape(&[4, 2]), Err(Error::Shape { .. })));
    assert!(matches!(
        Tensor::from_slice(&dev, &[1.0, 2.0], &[3]),
        Err(Error::Shape { .. })
    ));
    let ids = Tensor::from_u32(&dev, &[3, 1, 4], &[3]).unwrap();
    assert_eq!(ids.to_vec_u32().unwrap(), vec![3, 1, 4]);
    assert!(matches!(ids.to_vec(), Err(Error::DType { .. })));
    assert!(matches!(ids.relu(), Err(Error::DType { .. })));
}

#[test]
fn layout_gradients() {
    let (m, n) = (3usize, 7usize);
    check_grad(
        "transpose",
        &[inp(&[2, m, n], -1.0, 1.0)],
        &|t| t[0].transpose(),
        &|x| r::transpose(&x[0], &[2, m, n]),
        &|_, g| vec![r::transpose_backward(g, &[2, m, n])],
        0.0,
        1e-6,
    );
    check_grad(
        "reshape+exp",
        &[inp(&[4, 6], -1.0, 1.0)],
        &|t| t[0].reshape(&[2, 12])?.exp(),
        &|x| x[0].iter().map(|&v| unary::exp(v)).collect(),
        &|x, g| {
            vec![
                x[0].iter()
                    .zip(g)
                    .map(|(&v, g)| g * unary::exp(v))
                    .collect(),
            ]
        },
        1e-5,
        1e-4,
    );
}

// The row-chunk ops of a split embedding and lm_head, on awkward shapes: a masked gather whose
// ids fall below, inside and past the chunk (repeats included), and a concatenation of three
// uneven parts with a constant in the middle.
#[test]
fn row_chunk_op_gradients() {
    let dev = shared_device();
    let (rows, d, off) = (6usize, 5usize, 4usize);
    let id: Vec<u32> = vec![0, 4, 5, 9, 4, 11, 3, 6, 6, 10, 9, 2];
    check_grad(
        "gather_rows_masked",
        &[inp(&[rows, d], -1.0, 1.0)],
        &|t| {
            let ids = Tensor::from_u32(&shared_device(), &id, &[3, 4])?;
            t[0].gather_rows_masked(&ids, off)
        },
        &|x| r::gather_rows_masked(&x[0], rows, d, &id, off),
        &|_, g| vec![r::gather_rows_masked_backward(g, &id, off, rows, d)],
        1e-6,
        1e-4,
    );
    // An id past every chunk is no error here (the model checks ids against the vocabulary).
    let t = Tensor::ones(&dev, &[2, 3]).unwrap();
    let far = Tensor::from_u32(&dev, &[u32::MAX, 1], &[2]).unwrap();
    assert_eq!(
        t.gather_rows_masked(&far, 1).unwrap().to_vec().unwrap(),
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    );

    let widths = [4usize, 1, 7];
    let lead = 2 * 3;
    check_grad(
        "concat_last",
        &[
            inp(&[2, 3, widths[0]], -1.0, 1.0),
            constant(&[2, 3, widths[1]], -1.0, 1.0),
            inp(&[2, 3, widths[2]], -1.0, 1.0),
        ],
        &|t| Tensor::concat_last(t),
        &|x| r::concat_last(x, &widths, lead),
        &|_, g| r::concat_last_backward(g, &widths, lead),
        1e-6,
        1e-4,
    );
    let a = Tensor::zeros(&dev, &[2, 3]).unwrap();
    let b = Tensor::zeros(&dev, &[3, 3]).unwrap();
    assert!(matches!(
        Tensor::concat_last(&[a.clone(), b]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Tensor::concat_last(&[]),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(Tensor::concat_last(&[a]).unwrap().shape(), &[2, 3]);
}

#[test]
fn gather_rows_gradients_with_repeated_ids() {
    for (v, d, idshape) in [
        (11usize, 7usize, vec![3usize, 5]),
        (4, 333, vec![9]),
        (1, 1, vec![5]),
        (50, 3, vec![2, 2, 3]),
    ] {
        let n: usize = idshape.iter().product();
        let id = ids(n, v.min(6), v as u64 + 5); // few distinct ids: repeats; rows >= 6 unused
        check_grad(
            &format!("gather_rows ({v}, {d}) by {idshape:?}"),
            &[inp(&[v, d], -1.0, 1.0)],
            &|t| {
                let ids = Tensor::from_u32(t[0].device(), &id, &idshape)?;
                t[0].gather_rows(&ids)
            },
            &|x| r::gather_rows(&x[0], d, &id),
            &|_, g| vec![r::gather_rows_backward(g, &id, v, d)],
            0.0,
            1e-5,
        );
    }
}

#[test]
fn gather_rows_backward_is_deterministic() {
    let dev = shared_device();
    let (v, d, n) = (13usize, 33usize, 70_000usize);
    let table = Tensor::rand_normal(&dev, &[v, d], 0.0, 1.0, 21)
        .unwrap()
        .with_grad();
    // 70,000 positions over 3 ids, id 0 at more than 65,535 of them (lavapipe silently ends
    // a loop after 65,535 iterations, so long sums must be split).
    let id: Vec<u32> = ids(n, 3, 22)
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % 16 == 0 { x } else { 0 })
        .collect();
    assert!(id.iter().filter(|&&x| x == 0).count() > 65_535);
    let idt = Tensor::from_u32(&dev, &id, &[n]).unwrap();
    let w = Tensor::rand_normal(&dev, &[n, d], 0.0, 1.0, 23).unwrap();
    let run = || {
        let g = table
            .gather_rows(&idt)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        g.get(&table).unwrap().to_vec().unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(bits(&a), bits(&b), "same input, same bits");
    // Rows never referenced are exactly zero; the others match an f64 sum.
    let want = r::gather_rows_backward(&common::f64s(&w.to_vec().unwrap()), &id, v, d);
    assert!(a[3 * d..].iter().all(|&x| x == 0.0));
    assert_close("gather_rows backward sums", &a, &want, 1e-4, 1e-4);
}
