//! dtype conversion (`to_dtype`, `from_slice_as`, the f16/bf16 bit constructors, `to_vec` of
//! half tensors): bit-exact against `testing::reference::convert` on every 16-bit pattern, on
//! rounding ties, subnormals, overflow, infinities and NaN, on random f32 bit patterns and on
//! odd sizes (the packed tail); the gradient through a cast; and every op that does not take
//! 16-bit inputs refusing them with a dtype error instead of reading the words as f32.

use portagrad::testing::reference::convert as r;
use portagrad::testing::shared_device;
use portagrad::{DType, Error, Tensor};

fn f32_bits(v: &[u32]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&b| f32::from_bits(b)).collect();
    Tensor::from_slice(&shared_device(), &f, &[f.len()]).unwrap()
}

fn bits_of(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn first_diff<T: PartialEq + std::fmt::LowerHex>(what: &str, input: &[u32], got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: element {i} (input {:#x}): got {:#x}, want {:#x}",
            input[i], got[i], want[i]
        );
    }
}

/// Values around every hard case of narrowing.
fn special_f32() -> Vec<u32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45, // the smallest f32 subnormal
        65504.0,
        65519.99,
        65520.0, // halfway to f16's next binade: rounds to infinity
        -65520.0,
        5.960_464_5e-8, // 2^-24, the smallest f16 subnormal
        2.980_232_2e-8, // 2^-25: a tie, rounds to even (0)
        4.470_348_4e-8, // 3 * 2^-26: rounds up to 2^-24
        6.097_555e-5,   // just below f16's smallest normal
        6.103_515_6e-5, // 2^-14, the smallest normal
        1.000_488_3,    // 1 + 2^-11: a tie, rounds to 1
        1.001_464_8,    // 1 + 3 * 2^-11: a tie, rounds up to 1 + 2^-9
        3.389_531_4e38, // near f32::MAX: bf16 rounds to infinity
        std::f32::consts::PI,
    ];
    v.extend((0..40).map(|i| (i as f32 - 20.0) * 0.37));
    let mut bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    // NaNs: quiet, signalling, with payloads, negative.
    bits.extend([
        0x7fc0_0000,
        0x7f80_0001,
        0x7fa0_1234,
        0xffc0_0000,
        0xff80_2000,
    ]);
    // bf16 ties: the low 16 bits exactly 0x8000, with even and odd kept parts.
    bits.extend([0x3f80_8000, 0x3f81_8000, 0x3f80_8001, 0x3f80_7fff]);
    bits
}

/// A fixed pseudo-random sample of the whole f32 bit space.
fn random_bits(n: usize) -> Vec<u32> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 16) as u32
        })
        .collect()
}

#[test]
fn f32_to_half_is_bit_exact() {
    for input in [special_f32(), random_bits(100_001)] {
        let t = f32_bits(&input);
        let f16 = t.to_dtype(DType::F16).unwrap();
        assert_eq!(f16.dtype(), DType::F16);
        let want: Vec<u16> = input
            .iter()
            .map(|&b| r::to_f16_bits(f32::from_bits(b)))
            .collect();
        first_diff("f32 -> f16", &input, &f16.to_half_bits().unwrap(), &want);
        let bf16 = t.to_dtype(DType::BF16).unwrap();
        let want: Vec<u16> = input
            .iter()
            .map(|&b| r::to_bf16_bits(f32::from_bits(b)))
            .collect();
        first_diff("f32 -> bf16", &input, &bf16.to_half_bits().unwrap(), &want);
    }
}

/// Every one of the 65,536 patterns of each 16-bit type, widened and converted to the other.
#[test]
fn every_half_pattern_widens_and_crosses_exactly() {
    let dev = shared_device();
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let input: Vec<u32> = all.iter().map(|&b| u32::from(b)).collect();
    let f16 = Tensor::from_f16_bits(&dev, &all, &[256, 256]).unwrap();
    let bf16 = Tensor::from_bf16_bits(&dev, &all, &[256, 256]).unwrap();
    assert_eq!(f16.to_half_bits().unwrap(), all, "f16 bits round trip");

    let want: Vec<u32> = all.iter().map(|&b| r::from_f16_bits(b).to_bits()).collect();
    first_diff(
        "f16 -> f32 (GPU)",
        &input,
        &bits_of(&f16.to_dtype(DType::F32).unwrap()),
        &want,
    );
    first_diff("f16 to_vec (host)", &input, &bits_of(&f16), &want);
    let want: Vec<u32> = all
        .iter()
        .map(|&b| r::from_bf16_bits(b).to_bits())
        .collect();
    first_diff(
        "bf16 -> f32 (GPU)",
        &input,
        &bits_of(&bf16.to_dtype(DType::F32).unwrap()),
        &want,
    );
    first_diff("bf16 to_vec (host)", &input, &bits_of(&bf16), &want);

    let want: Vec<u16> = all
        .iter()
        .map(|&b| r::to_bf16_bits(r::from_f16_bits(b)))
        .collect();
    let got = f16.to_dtype(DType::BF16).unwrap().to_half_bits().unwrap();
    first_diff("f16 -> bf16", &input, &got, &want);
    let want: Vec<u16> = all
        .iter()
        .map(|&b| r::to_f16_bits(r::from_bf16_bits(b)))
        .collect();
    let got = bf16.to_dtype(DType::F16).unwrap().to_half_bits().unwrap();
    first_diff("bf16 -> f16", &input, &got, &want);
}

/// Sizes around the packing: an odd count leaves half a word, which must not leak.
#[test]
fn odd_sizes_and_shapes_round_trip() {
    let dev = shared_device();
    for shape in [
        &[1usize][..],
        &[2],
        &[3],
        &[7],
        &[3, 5],
        &[2, 3, 37],
        &[1001],
    ] {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 3.0).collect();
        for dtype in [DType::F16, DType::BF16] {
            let t = Tensor::from_slice_as(&dev, &v, shape, dtype).unwrap();
            assert_eq!((t.shape(), t.dtype()), (shape, dtype));
            let round = |x: f32| match dtype {
                DType::F16 => r::from_f16_bits(r::to_f16_bits(x)),
                _ => r::from_bf16_bits(r::to_bf16_bits(x)),
            };
            let want: Vec<f32> = v.iter().map(|&x| round(x)).collect();
            assert_eq!(
                t.to_vec().unwrap(),
                want,
                "{dtype:?} {shape:?} from_slice_as"
            );
            let gpu = Tensor::from_slice(&dev, &v, shape)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            assert_eq!(
                gpu.to_vec().unwrap(),
                want,
                "{dtype:?} {shape:?} on the GPU"
            );
            let back = gpu.to_dtype(DType::F32).unwrap();
            assert_eq!(back.to_vec().unwrap(), want, "{dtype:?} {shape:?} widened");
            // A reshaped view keeps the dtype and the values.
            let flat = gpu.reshape(&[n]).unwrap();
            assert_eq!(flat.to_vec().unwrap(), want);
        }
        assert_eq!(
            Tensor::from_slice_as(&dev, &v, shape, DType::F32)
                .unwrap()
                .to_vec()
                .unwrap(),
            v
        );
    }
}

/// The gradient of a cast is the output gradient cast back: through f16 and back to f32, the
/// gradient of `sum(w * cast(x))` is `w` rounded to f16.
#[test]
fn gradient_flows_through_casts() {
    let dev = shared_device();
    let xv: Vec<f32> = (0..9).map(|i| i as f32 * 0.1 - 0.4).collect();
    let wv: Vec<f32> = (0..9).map(|i| 1.0 + i as f32 * 0.123_456).collect();
    let x = Tensor::from_slice(&dev, &xv, &[3, 3]).unwrap().with_grad();
    let w = Tensor::from_slice(&dev, &wv, &[3, 3]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let y = x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
        let g = y.mul(&w).unwrap().sum().unwrap().backward().unwrap();
        let gx = g.get(&x).unwrap();
        assert_eq!(gx.dtype(), DType::F32);
        let want: Vec<f32> = wv
            .iter()
            .map(|&v| match dtype {
                DType::F16 => r::from_f16_bits(r::to_f16_bits(v)),
                _ => r::from_bf16_bits(r::to_bf16_bits(v)),
            })
            .collect();
        assert_eq!(gx.to_vec().unwrap(), want, "{dtype:?}");
    }
    // Same dtype: the same tensor, no dispatch.
    let before = dev.stats().dispatches;
    let same = x.to_dtype(DType::F32).unwrap();
    assert_eq!(dev.stats().dispatches, before);
    assert_eq!(same.to_vec().unwrap(), xv);
}

fn dtype_error(what: &str, r: portagrad::Result<Tensor>, got: &str) {
    match r {
        Err(Error::DType { got: g, .. }) if g == got => {}
        Err(e) => panic!("{what}: expected a dtype error naming {got}, got {e}"),
        Ok(t) => panic!("{what}: accepted a {got} input (gave {t:?})"),
    }
}

#[test]
fn conversions_to_and_from_ids_are_errors() {
    let dev = shared_device();
    let ids = Tensor::from_u32(&dev, &[1, 2, 3], &[3]).unwrap();
    dtype_error("u32 to_dtype", ids.to_dtype(DType::F16), "u32");
    let x = Tensor::from_slice(&dev, &[1.0], &[1]).unwrap();
    dtype_error("to_dtype(U32)", x.to_dtype(DType::U32), "u32");
    dtype_error(
        "from_slice_as U32",
        Tensor::from_slice_as(&dev, &[1.0], &[1], DType::U32),
        "u32",
    );
    assert!(matches!(ids.to_half_bits(), Err(Error::DType { .. })));
    assert!(matches!(x.to_half_bits(), Err(Error::DType { .. })));
    let h = x.to_dtype(DType::F16).unwrap();
    assert!(matches!(h.to_vec_u32(), Err(Error::DType { .. })));
    assert!(matches!(ids.to_vec(), Err(Error::DType { .. })));
    // Wrong lengths are shape errors, as for from_slice.
    assert!(matches!(
        Tensor::from_f16_bits(&dev, &[0, 0, 0], &[2, 2]),
        Err(Error::Shape { .. })
    ));
}

type Op = (
    &'static str,
    fn(&Tensor, &Tensor) -> portagrad::Result<Tensor>,
);

/// Ops that compute in f32 only: each refuses a 16-bit operand with a dtype error naming it,
/// never reading its packed words as f32 values. (matmul, linear and gather_rows take 16-bit
/// operands: tests/ops_matmul.rs and `gather_rows_from_half_tables`.)
const F32_ONLY: &[Op] = &[
    ("add", |h, f| h.add(f)),
    ("add (f32 first)", |h, f| f.add(h)),
    ("sub", |h, f| h.sub(f)),
    ("mul", |h, f| f.mul(h)),
    ("div", |h, f| h.div(f)),
    ("add_scalar", |h, _| h.add_scalar(1.0)),
    ("mul_scalar", |h, _| h.mul_scalar(2.0)),
    ("neg", |h, _| h.neg()),
    ("exp", |h, _| h.exp()),
    ("log", |h, _| h.log()),
    ("sqrt", |h, _| h.sqrt()),
    ("powf", |h, _| h.powf(2.0)),
    ("relu", |h, _| h.relu()),
    ("gelu", |h, _| h.gelu()),
    ("sigmoid", |h, _| h.sigmoid()),
    ("tanh", |h, _| h.tanh()),
    ("abs", |h, _| h.abs()),
    ("sum", |h, _| h.sum()),
    ("mean", |h, _| h.mean()),
    ("max", |h, _| h.max()),
    ("sum_last", |h, _| h.sum_last()),
    ("mean_last", |h, _| h.mean_last()),
    ("max_last", |h, _| h.max_last()),
    ("softmax", |h, _| h.softmax()),
    ("log_softmax", |h, _| h.log_softmax()),
    ("transpose", |h, _| h.transpose()),
    ("broadcast_to", |h, _| h.broadcast_to(&[3, 4, 6])),
    ("concat_last", |h, f| {
        Tensor::concat_last(&[h.clone(), f.clone()])
    }),
    ("mse_loss", |h, f| h.mse_loss(f)),
    ("bce_with_logits", |h, f| h.bce_with_logits(f)),
    ("layer_norm", |h, f| {
        let g = Tensor::ones(f.device(), &[6])?;
        h.layer_norm(&g, &g, 1e-5)
    }),
    ("layer_norm (f16 gamma)", |h, f| {
        let g = h.reshape(&[24])?;
        f.reshape(&[1, 24])?.layer_norm(&g, &g, 1e-5)
    }),
    ("dropout", |h, _| h.dropout(0.5, 1)),
    ("cross_entropy", |h, _| {
        let t = Tensor::from_u32(h.device(), &[0, 1, 2, 3], &[4])?;
        h.cross_entropy(&t, None)
    }),
];

/// A 16-bit embedding table gives f32 rows, the stored values exactly; its gradient comes
/// back in its dtype.
#[test]
fn gather_rows_from_half_tables() {
    let dev = shared_device();
    let v: Vec<f32> = (0..35).map(|i| (i as f32 * 0.77).cos() * 2.0).collect();
    let ids = Tensor::from_u32(&dev, &[4, 0, 3, 3, 6], &[5]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        // (7, 5): odd row length, so rows straddle words.
        let table = Tensor::from_slice_as(&dev, &v, &[7, 5], dtype)
            .unwrap()
            .with_grad();
        let stored = table.to_vec().unwrap();
        let want: Vec<f32> = [4, 0, 3, 3, 6]
            .iter()
            .flat_map(|&r| stored[r * 5..r * 5 + 5].to_vec())
            .collect();
        for masked in [false, true] {
            let rows = if masked {
                table.gather_rows_masked(&ids, 0).unwrap()
            } else {
                table.gather_rows(&ids).unwrap()
            };
            assert_eq!((rows.shape(), rows.dtype()), (&[5usize, 5][..], DType::F32));
            assert_eq!(rows.to_vec().unwrap(), want, "{dtype:?} masked {masked}");
        }
        let grads = table
            .gather_rows(&ids)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads.get(&table).unwrap();
        assert_eq!(g.dtype(), dtype);
        let counts = [1.0, 0.0, 0.0, 2.0, 1.0, 0.0, 1.0];
        let want: Vec<f32> = counts.iter().flat_map(|&c| [c; 5]).collect();
        assert_eq!(g.to_vec().unwrap(), want);
    }
}

#[test]
fn f32_only_ops_refuse_half_inputs() {
    let dev = shared_device();
    let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    let f = Tensor::from_slice(&dev, &v, &[4, 6]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let h = f.to_dtype(dtype).unwrap();
        for (name, op) in F32_ONLY {
            dtype_error(&format!("{name} on {dtype:?}"), op(&h, &f), dtype.name());
        }
    }
}
