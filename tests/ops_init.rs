//! The init family: seeded uniform and normal random tensors (reproducible, well distributed,
//! bad parameters rejected).

use portagrad::testing::shared_device;
use portagrad::{Error, Tensor};

#[test]
fn seeded_random_is_reproducible_and_well_distributed() {
    let dev = shared_device();
    let n = 1 << 20;
    let a = Tensor::rand_uniform(&dev, &[n], -2.0, 3.0, 42)
        .unwrap()
        .to_vec()
        .unwrap();
    let b = Tensor::rand_uniform(&dev, &[n], -2.0, 3.0, 42)
        .unwrap()
        .to_vec()
        .unwrap();
    let c = Tensor::rand_uniform(&dev, &[n], -2.0, 3.0, 43)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(a, b, "same seed, same values");
    assert_ne!(a, c, "different seed, different values");
    assert!(a.iter().all(|&v| (-2.0..3.0).contains(&v)));
    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
    let z = Tensor::rand_normal(&dev, &[n], 1.0, 2.0, 7)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(z.iter().all(|v| v.is_finite()));
    let m = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = z.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n as f64;
    assert!(
        (m - 1.0).abs() < 0.01 && (var.sqrt() - 2.0).abs() < 0.01,
        "normal mean {m} std {}",
        var.sqrt()
    );
    assert!(matches!(
        Tensor::rand_normal(&dev, &[2], 0.0, -1.0, 0),
        Err(Error::InvalidArgument { .. })
    ));
}
