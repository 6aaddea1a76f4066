//! The runtime's promises: recorded batches, cached pipelines, pooled buffers, limits and errors.

use portagrad::testing::{device, random_vec};
use portagrad::{Device, DeviceOptions, Error, Tensor};

fn own_device(opts: DeviceOptions) -> Device {
    Device::with_options(opts).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn device_is_send_and_sync_and_reports_info() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Device>();
    assert_send_sync::<Tensor>();
    let dev = device().unwrap_or_else(|e| panic!("{e}"));
    let info = dev.info();
    assert!(!info.name.is_empty());
    assert!(
        info.max_storage_binding >= 128 << 20,
        "real limits requested: {info:?}"
    );
    assert!(info.to_string().contains(&info.name));
}

#[test]
fn ten_thousand_tiny_ops_cost_one_submit_and_one_readback() {
    let dev = own_device(DeviceOptions::new());
    let x = Tensor::zeros(&dev, &[3]).unwrap();
    drop(x.add_scalar(0.0).unwrap()); // warm-up: compile the pipeline
    dev.sync().unwrap();
    dev.reset_stats();
    let mut y = x;
    for _ in 0..10_000 {
        y = y.add_scalar(1.0).unwrap();
    }
    assert_eq!(dev.stats().submits, 0, "nothing submitted while recording");
    assert_eq!(y.to_vec().unwrap(), vec![10_000.0; 3]);
    let s = dev.stats();
    assert_eq!(
        (s.dispatches, s.submits, s.readbacks),
        (10_000, 1, 1),
        "{s:?}"
    );
    assert_eq!(
        s.pipelines_compiled, 0,
        "add_scalar was compiled during warm-up: {s:?}"
    );
}

#[test]
fn a_full_batch_is_submitted() {
    let dev = own_device(DeviceOptions::new().max_batch_dispatches(100));
    let mut y = Tensor::zeros(&dev, &[5]).unwrap();
    dev.sync().unwrap();
    dev.reset_stats();
    for _ in 0..1000 {
        y = y.add_scalar(0.5).unwrap();
    }
    assert_eq!(dev.stats().submits, 10);
    assert_eq!(y.to_vec().unwrap(), vec![500.0; 5]);
}

#[test]
fn pipelines_compile_once() {
    let dev = own_device(DeviceOptions::new());
    let a = Tensor::ones(&dev, &[10]).unwrap();
    let before = dev.stats().pipelines_compiled;
    let _ = a.exp().unwrap();
    let after_first = dev.stats().pipelines_compiled;
    for _ in 0..5 {
        let _ = a.exp().unwrap();
    }
    assert_eq!(after_first, before + 1);
    assert_eq!(dev.stats().pipelines_compiled, after_first);
}

#[test]
fn buffers_return_to_the_pool_and_peak_is_tracked() {
    let dev = own_device(DeviceOptions::new());
    dev.reset_stats();
    let base = dev.stats().live_bytes;
    {
        let a = Tensor::zeros(&dev, &[1 << 20]).unwrap();
        let b = a.add_scalar(1.0).unwrap();
        assert_eq!(dev.stats().live_bytes, base + 2 * (4 << 20));
        drop((a, b));
    }
    let s = dev.stats();
    assert_eq!(s.live_bytes, base);
    assert_eq!(s.peak_bytes, base + 2 * (4 << 20));
    assert!(s.pooled_bytes >= 2 * (4 << 20));
    // Reuse: a same-size tensor comes from the pool, the pool shrinks.
    let _c = Tensor::zeros(&dev, &[1 << 20]).unwrap();
    assert_eq!(dev.stats().pooled_bytes, s.pooled_bytes - (4 << 20));
    dev.empty_cache().unwrap();
    assert_eq!(dev.stats().pooled_bytes, 0);
}

#[test]
fn an_upload_never_overwrites_a_buffer_pending_work_still_reads() {
    // x's buffer goes back to the pool while a recorded op still reads it; the next upload of
    // the same size must not take it (the upload would land before the pending op runs).
    let dev = own_device(DeviceOptions::new());
    let n = 4096;
    let xs = random_vec(n, -1.0, 1.0, 1);
    for round in 0..20 {
        let x = Tensor::from_slice(&dev, &xs, &[n]).unwrap();
        let y = x.mul_scalar(2.0).unwrap();
        drop(x);
        let z = Tensor::from_slice(&dev, &vec![round as f32; n], &[n]).unwrap();
        let got = y.to_vec().unwrap();
        assert!(
            got.iter().zip(&xs).all(|(g, x)| *g == 2.0 * x),
            "round {round}: pending read saw a later upload"
        );
        assert_eq!(z.to_vec().unwrap()[0], round as f32);
    }
}

#[test]
fn a_tensor_beyond_the_adapter_limit_is_an_error_before_wgpu_sees_it() {
    let dev = own_device(DeviceOptions::new());
    let limit = dev
        .info()
        .max_storage_binding
        .min(dev.info().max_buffer_size);
    let n = (limit / 4 + 1) as usize;
    match Tensor::zeros(&dev, &[n]) {
        Err(Error::TooLarge {
            bytes, limit: l, ..
        }) => {
            assert!(bytes > l);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The device still works.
    assert_eq!(
        Tensor::ones(&dev, &[2]).unwrap().to_vec().unwrap(),
        vec![1.0, 1.0]
    );
}

#[test]
fn no_matching_adapter_says_what_to_install() {
    let err =
        Device::with_options(DeviceOptions::new().adapter("no-such-adapter-xyz")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoAdapter { .. }), "{msg}");
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("no-such-adapter-xyz"),
        "{msg}"
    );
    let err = Device::with_options(DeviceOptions::new().backend("cuda")).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn tensors_from_two_devices_do_not_mix() {
    let d1 = own_device(DeviceOptions::new());
    let d2 = own_device(DeviceOptions::new());
    let a = Tensor::ones(&d1, &[2]).unwrap();
    let b = Tensor::ones(&d2, &[2]).unwrap();
    assert!(matches!(a.add(&b), Err(Error::DeviceMismatch { .. })));
}
