//! Optimizers against the textbook updates computed on the CPU in f64, and Adam/AdamW against
//! numbers produced by PyTorch (`scripts/make_optim_golden.py`, output committed under
//! `tests/golden/`).
//!
//! Every case minimises `L = sum_t sum(0.5 * c_t * p_t^2 + d_t * p_t)`, whose gradient
//! `c * p + d` depends on the parameters, so each step's update feeds the next.

use portagrad::optim::{LossScaling, LrSchedule, OptimConfig, Optimizer, ParamGroup, decay_groups};
use portagrad::testing::reference::optim as optim_ref;
use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Device, Result, Tensor};

/// One parameter tensor of a case with its loss constants.
struct Param {
    name: String,
    shape: Vec<usize>,
    init: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    group: usize,
}

fn params(shapes: &[&[usize]], seed: u64) -> Vec<Param> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            let k = seed + 10 * i as u64;
            Param {
                name: format!("p{i}"),
                shape: s.to_vec(),
                init: random_vec(n, -1.0, 1.0, k),
                c: random_vec(n, 0.5, 2.0, k + 1),
                d: random_vec(n, -1.0, 1.0, k + 2),
                group: 0,
            }
        })
        .collect()
}

/// The loss on the GPU; `ts` are the parameter tensors.
fn gpu_loss(dev: &Device, ps: &[Param], ts: &[Tensor]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (p, t) in ps.iter().zip(ts) {
        let half_c: Vec<f32> = p.c.iter().map(|c| 0.5 * c).collect();
        let hc = Tensor::from_slice(dev, &half_c, &p.shape)?;
        let d = Tensor::from_slice(dev, &p.d, &p.shape)?;
        let term = t.mul(t)?.mul(&hc)?.add(&t.mul(&d)?)?.sum()?;
        total = Some(match total {
            None => term,
            Some(s) => s.add(&term)?,
        });
    }
    Ok(total.expect("at least one parameter"))
}

/// Group settings of the CPU reference: (weight decay, lr scale) per group.
type Groups = Vec<(f64, f64)>;

/// The textbook update in f64 (`testing::reference::optim`) of the case's loss. Returns the loss before each step and the parameters after the last.
fn cpu_run(
    cfg: &OptimConfig,
    groups: &Groups,
    ps: &[Param],
    steps: usize,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut p: Vec<Vec<f64>> = ps
        .iter()
        .map(|p| p.init.iter().map(|&x| x as f64).collect())
        .collect();
    let c: Vec<Vec<f64>> = ps
        .iter()
        .map(|p| p.c.iter().map(|&x| x as f64).collect())
        .collect();
    let d: Vec<Vec<f64>> = ps
        .iter()
        .map(|p| p.d.iter().map(|&x| x as f64).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut v2 = m.clone();
    let mut losses = Vec::new();
    for step in 0..steps {
        let mut loss = 0.0;
        let mut g: Vec<Vec<f64>> = Vec::new();
        for i in 0..p.len() {
            let mut gi = Vec::new();
            for j in 0..p[i].len() {
                loss += 0.5 * c[i][j] * p[i][j] * p[i][j] + d[i][j] * p[i][j];
                gi.push(c[i][j] * p[i][j] + d[i][j]);
            }
            g.push(gi);
        }
        losses.push(loss);
        if let Some(max) = cfg.max_grad_norm {
            optim_ref::clip_grad_norm(&mut g, max);
        }
        let lr0 = cfg.schedule.lr_at(cfg.lr, step as u64);
        for i in 0..p.len() {
            let (wd, scale) = groups[ps[i].group];
            let lr = lr0 * scale;
            optim_ref::step(
                &cfg.algorithm,
                &mut p[i],
                &g[i],
                &mut m[i],
                &mut v2[i],
                lr,
                wd,
                step,
            );
        }
    }
    (losses, p)
}

/// Build the GPU parameters and optimizer for a case.
fn gpu_setup(
    dev: &Device,
    cfg: OptimConfig,
    groups: &Groups,
    ps: &[Param],
) -> (Vec<Tensor>, Optimizer) {
    let ts: Vec<Tensor> = ps
        .iter()
        .map(|p| {
            Tensor::from_slice(dev, &p.init, &p.shape)
                .unwrap()
                .with_grad()
        })
        .collect();
    let pg: Vec<ParamGroup> = groups
        .iter()
        .enumerate()
        .map(|(gi, &(wd, scale))| {
            ParamGroup::new(
                ps.iter()
                    .zip(&ts)
                    .filter(|(p, _)| p.group == gi)
                    .map(|(p, t)| (p.name.clone(), t.clone()))
                    .collect(),
            )
            .weight_decay(wd)
            .lr_scale(scale)
        })
        .collect();
    let opt = Optimizer::with_groups(cfg, pg).unwrap();
    (ts, opt)
}

fn check_against_cpu(
    what: &str,
    cfg: OptimConfig,
    groups: Groups,
    ps: Vec<Param>,
    steps: usize,
    rtol: f64,
) {
    let dev = shared_device();
    let (want_losses, want_p) = cpu_run(&cfg, &groups, &ps, steps);
    let (ts, mut opt) = gpu_setup(&dev, cfg, &groups, &ps);
    // A second handle on each parameter, as a model would hold: it must see every update.
    let held: Vec<Tensor> = ts.iter().map(Tensor::clone).collect();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = gpu_loss(&dev, &ps, &ts).unwrap();
        losses.push(loss.item().unwrap());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    assert_eq!(opt.step_count(), steps as u64);
    assert_close(
        &format!("{what}: losses"),
        &losses,
        &want_losses,
        rtol,
        1e-5,
    );
    for (i, t) in held.iter().enumerate() {
        assert_close(
            &format!("{what}: {} after {steps} steps", ps[i].name),
            &t.to_vec().unwrap(),
            &want_p[i],
            rtol,
            1e-6,
        );
    }
}

const SMALL: &[&[usize]] = &[&[5, 7], &[7], &[300]];

#[test]
fn sgd_matches_textbook() {
    check_against_cpu(
        "sgd",
        OptimConfig::sgd(0.1),
        vec![(0.0, 1.0)],
        params(SMALL, 1),
        5,
        1e-5,
    );
}

#[test]
fn sgd_momentum_dampening_weight_decay_matches_textbook() {
    let cfg = OptimConfig::sgd(0.05).momentum(0.9).dampening(0.1);
    check_against_cpu(
        "sgd momentum",
        cfg,
        vec![(0.01, 1.0)],
        params(SMALL, 2),
        6,
        1e-5,
    );
}

#[test]
fn sgd_nesterov_matches_textbook() {
    let cfg = OptimConfig::sgd(0.05).momentum(0.9).nesterov(true);
    check_against_cpu(
        "sgd nesterov",
        cfg,
        vec![(0.05, 1.0)],
        params(SMALL, 3),
        6,
        1e-5,
    );
}

#[test]
fn adam_matches_textbook() {
    let cfg = OptimConfig::adam(0.01);
    check_against_cpu("adam", cfg, vec![(0.02, 1.0)], params(SMALL, 4), 6, 1e-5);
}

#[test]
fn adamw_matches_textbook() {
    let cfg = OptimConfig::adamw(0.01).betas(0.8, 0.99);
    check_against_cpu("adamw", cfg, vec![(0.1, 1.0)], params(SMALL, 5), 6, 1e-5);
}

/// More tensors than one dispatch takes, odd sizes, two groups with their own decay and rate,
/// clipping and the warm-up/cosine schedule together.
#[test]
fn many_tensors_groups_clipping_schedule_match_textbook() {
    let shapes: &[&[usize]] = &[
        &[1],
        &[3],
        &[7, 1],
        &[256],
        &[257],
        &[10, 100],
        &[2],
        &[5],
        &[8, 8],
        &[31],
        &[9],
        &[3, 3, 3],
    ];
    let mut ps = params(shapes, 6);
    for (i, p) in ps.iter_mut().enumerate() {
        p.group = i % 2;
    }
    let cfg = OptimConfig::adamw(0.05)
        .clip_grad_norm(2.0)
        .schedule(LrSchedule::warmup_cosine(2, 6, 0.001));
    check_against_cpu(
        "adamw groups",
        cfg,
        vec![(0.1, 1.0), (0.0, 0.5)],
        ps,
        7,
        2e-5,
    );
    let mut ps = params(shapes, 7);
    for (i, p) in ps.iter_mut().enumerate() {
        p.group = i % 3 / 2;
    }
    let cfg = OptimConfig::sgd(0.1).momentum(0.5).clip_grad_norm(1.0);
    check_against_cpu(
        "sgd clip groups",
        cfg,
        vec![(0.0, 1.0), (0.2, 2.0)],
        ps,
        5,
        1e-5,
    );
}

#[test]
fn clipping_leaves_small_gradients_alone_and_reports_the_norm() {
    let dev = shared_device();
    let ps = params(SMALL, 8);
    let cfg = OptimConfig::sgd(0.01).clip_grad_norm(1e6);
    let (ts, mut opt) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
    let loss = gpu_loss(&dev, &ps, &ts).unwrap();
    opt.step(&loss.backward().unwrap()).unwrap();
    let norm: f64 = ps
        .iter()
        .flat_map(|p| {
            (0..p.init.len())
                .map(move |j| (p.c[j] as f64 * p.init[j] as f64 + p.d[j] as f64).powi(2))
        })
        .sum::<f64>()
        .sqrt();
    let got = opt.last_grad_norm().unwrap().expect("clipping is on");
    assert_close("global gradient norm", &[got], &[norm], 1e-5, 0.0);
    let cfg = OptimConfig::sgd(0.1).clip_grad_norm(1e6);
    check_against_cpu(
        "sgd, clip above the norm",
        cfg,
        vec![(0.0, 1.0)],
        params(SMALL, 8),
        3,
        1e-5,
    );
}

#[test]
fn one_fused_dispatch_per_step() {
    // Its own device: the counters of the shared one see the other tests' work.
    let dev = portagrad::testing::device().unwrap();
    let ps = params(SMALL, 9);
    let (ts, mut opt) = gpu_setup(&dev, OptimConfig::adam(0.01), &vec![(0.0, 1.0)], &ps);
    let loss = gpu_loss(&dev, &ps, &ts).unwrap();
    let grads = loss.backward().unwrap();
    opt.step(&grads).unwrap(); // warm-up: pipeline compile
    dev.sync().unwrap();
    dev.reset_stats();
    opt.step(&grads).unwrap();
    let per = portagrad::optim::tensors_per_dispatch(&dev);
    assert_eq!(
        dev.stats().dispatches as usize,
        3usize.div_ceil(per),
        "Adam over 3 tensors, {per} per dispatch"
    );
    assert_eq!(dev.stats().submits, 0, "a step records, it does not submit");

    let shapes: Vec<&[usize]> = vec![&[4]; 20];
    let ps = params(&shapes, 10);
    let cfg = OptimConfig::adamw(0.01).clip_grad_norm(1.0);
    let (ts, mut opt) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
    let grads = gpu_loss(&dev, &ps, &ts).unwrap().backward().unwrap();
    opt.step(&grads).unwrap();
    dev.sync().unwrap();
    dev.reset_stats();
    opt.step(&grads).unwrap();
    // 20 tensors, 8 per dispatch: 3 sum-of-squares passes, 1 finalize, 3 updates; no readback.
    let st = dev.stats();
    let passes = 20usize.div_ceil(per);
    assert_eq!(
        (st.dispatches as usize, st.readbacks),
        (2 * passes + 1, 0),
        "{st:?}"
    );
}

#[test]
fn parameters_without_gradient_are_left_alone() {
    let dev = shared_device();
    let a = Tensor::from_slice(&dev, &[1.0, 2.0], &[2])
        .unwrap()
        .with_grad();
    let b = Tensor::from_slice(&dev, &[3.0, 4.0], &[2])
        .unwrap()
        .with_grad();
    let mut opt =
        Optimizer::adam(vec![("a".into(), a.clone()), ("b".into(), b.clone())], 0.1).unwrap();
    let loss = a.mul(&a).unwrap().sum().unwrap();
    opt.step(&loss.backward().unwrap()).unwrap();
    assert_eq!(b.to_vec().unwrap(), vec![3.0, 4.0]);
    let av = a.to_vec().unwrap();
    assert_close("a after one Adam step", &av, &[0.9, 1.9], 1e-5, 1e-6);
}

#[test]
fn bad_configurations_are_errors() {
    let dev = shared_device();
    let p = Tensor::zeros(&dev, &[3]).unwrap();
    let e = Optimizer::adam(vec![("w".into(), p.clone())], 0.1).unwrap_err();
    assert!(e.to_string().contains("with_grad"), "{e}");
    let p = p.with_grad();
    let e = Optimizer::new(OptimConfig::adam(f64::NAN), vec![("w".into(), p.clone())]).unwrap_err();
    assert!(e.to_string().contains("learning rate"), "{e}");
    let e = Optimizer::new(
        OptimConfig::sgd(0.1).nesterov(true),
        vec![("w".into(), p.clone())],
    )
    .unwrap_err();
    assert!(e.to_string().contains("Nesterov"), "{e}");
    assert!(Optimizer::adam(vec![], 0.1).is_err());
    let mut opt = Optimizer::adam(vec![("w".into(), p.clone())], 0.1).unwrap();
    let other = Tensor::zeros(&dev, &[3]).unwrap().with_grad();
    let grads = other.sum().unwrap().backward().unwrap();
    let e = opt.step(&grads).unwrap_err();
    assert!(e.to_string().contains("has a gradient"), "{e}");
}

#[test]
fn warmup_cosine_schedule() {
    let s = LrSchedule::warmup_cosine(4, 14, 0.1);
    let lr: Vec<f64> = (0..16).map(|t| s.lr_at(1.0, t)).collect();
    assert_close(
        "warm-up",
        &lr[..4].iter().map(|&x| x as f32).collect::<Vec<_>>(),
        &[0.25, 0.5, 0.75, 1.0],
        1e-7,
        0.0,
    );
    assert!(
        (lr[4] - 1.0).abs() < 1e-12,
        "cosine starts at the base rate"
    );
    assert!(
        (lr[9] - 0.55).abs() < 1e-12,
        "half way: mean of base and min"
    );
    assert!(
        lr[4..14].windows(2).all(|w| w[1] < w[0]),
        "decreasing: {lr:?}"
    );
    assert_eq!((lr[14], lr[15]), (0.1, 0.1));
    assert_eq!(LrSchedule::Constant.lr_at(0.3, 1000), 0.3);
}

#[test]
fn decay_groups_split_matrices_from_vectors() {
    let dev = shared_device();
    let w = Tensor::zeros(&dev, &[3, 2]).unwrap().with_grad();
    let b = Tensor::zeros(&dev, &[2]).unwrap().with_grad();
    let g = decay_groups(vec![("w".into(), w), ("b".into(), b)], 0.1);
    assert_eq!(g[0].params[0].0, "w");
    assert_eq!(g[0].weight_decay, Some(0.1));
    assert_eq!(g[1].params[0].0, "b");
    assert_eq!(g[1].weight_decay, Some(0.0));
}

// ---- PyTorch golden numbers ----

fn golden() -> safetensors::SafeTensors<'static> {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/optim_adam.safetensors"
    ))
    .expect("tests/golden/optim_adam.safetensors (made by scripts/make_optim_golden.py)");
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    safetensors::SafeTensors::deserialize(bytes).expect("golden file parses")
}

fn get(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v, t.shape().to_vec())
}

fn golden_case(case: &str, cfg: OptimConfig, groups: Groups, group_of: &dyn Fn(&str) -> usize) {
    let st = golden();
    let dev = shared_device();
    let names = ["w1", "b1", "w2"];
    let ps: Vec<Param> = names
        .iter()
        .map(|n| {
            let (init, shape) = get(&st, &format!("init.{n}"));
            Param {
                name: n.to_string(),
                shape,
                init,
                c: get(&st, &format!("c.{n}")).0,
                d: get(&st, &format!("d.{n}")).0,
                group: group_of(n),
            }
        })
        .collect();
    let (want_loss, _) = get(&st, &format!("{case}.loss"));
    let (ts, mut opt) = gpu_setup(&dev, cfg, &groups, &ps);
    for (s, &wl) in want_loss.iter().enumerate() {
        let loss = gpu_loss(&dev, &ps, &ts).unwrap();
        assert_close(
            &format!("{case}: loss before step {}", s + 1),
            &[loss.item().unwrap()],
            &[wl as f64],
            1e-5,
            1e-6,
        );
        opt.step(&loss.backward().unwrap()).unwrap();
        for (p, t) in ps.iter().zip(&ts) {
            let (want, _) = get(&st, &format!("{case}.after.{}.{}", s + 1, p.name));
            let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
            assert_close(
                &format!("{case}: {} after step {}", p.name, s + 1),
                &t.to_vec().unwrap(),
                &want,
                1e-5,
                1e-6,
            );
        }
    }
}

#[test]
fn adam_matches_pytorch() {
    golden_case("adam", OptimConfig::adam(1e-2), vec![(0.0, 1.0)], &|_| 0);
    golden_case(
        "adam_l2",
        OptimConfig::adam(1e-2).weight_decay(0.1),
        vec![(0.1, 1.0)],
        &|_| 0,
    );
}

#[test]
fn adamw_matches_pytorch() {
    let cfg = OptimConfig::adamw(1e-2).betas(0.8, 0.99).eps(1e-6);
    golden_case("adamw", cfg, vec![(0.1, 1.0), (0.0, 1.0)], &|n| {
        usize::from(n == "b1")
    });
    let cfg = OptimConfig::adamw(3e-2)
        .weight_decay(0.05)
        .clip_grad_norm(0.5)
        .schedule(LrSchedule::warmup_cosine(2, 5, 1e-3));
    golden_case("adamw_clip", cfg, vec![(0.05, 1.0)], &|_| 0);
}

/// Gradients that share a buffer (both operands of an add get the same one) are bound side by
/// side; a gradient that is a parameter's own buffer is copied first.
#[test]
fn shared_and_aliased_gradient_buffers() {
    let dev = shared_device();
    let a = Tensor::from_slice(&dev, &[1.0, 2.0], &[2])
        .unwrap()
        .with_grad();
    let b = Tensor::from_slice(&dev, &[3.0, 4.0], &[2])
        .unwrap()
        .with_grad();
    let mut opt =
        Optimizer::sgd(vec![("a".into(), a.clone()), ("b".into(), b.clone())], 0.5).unwrap();
    let grads = a.add(&b).unwrap().sum().unwrap().backward().unwrap();
    opt.step(&grads).unwrap();
    assert_eq!(a.to_vec().unwrap(), [0.5, 1.5]);
    assert_eq!(b.to_vec().unwrap(), [2.5, 3.5]);
}

fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
    ts.iter()
        .map(|t| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// `steps` steps of `cfg` on the case, with loss scaling `scaling` when given; returns the
/// parameters' bits after each step and the optimizer.
fn scaled_run(
    dev: &Device,
    cfg: OptimConfig,
    ps: &[Param],
    scaling: Option<LossScaling>,
    steps: usize,
) -> (Vec<Vec<Vec<u32>>>, Optimizer) {
    let (ts, mut opt) = gpu_setup(dev, cfg, &vec![(0.0, 1.0)], ps);
    if let Some(s) = scaling {
        opt.enable_loss_scaling(s).unwrap();
    }
    let mut after = Vec::new();
    for _ in 0..steps {
        let loss = gpu_loss(dev, ps, &ts).unwrap();
        let grads = opt.scale_loss(&loss).unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
        after.push(bits(&ts));
    }
    (after, opt)
}

/// Scaling by a power of two is exact: with or without clipping, Adam and SGD give the same
/// bits as the unscaled run, and the scale grows by its factor every `growth_interval` steps.
#[test]
fn loss_scaling_by_a_power_of_two_is_exact() {
    let dev = shared_device();
    let ps = params(&[&[5, 7], &[13]], 900);
    let scaling = LossScaling {
        init_scale: 1024.0,
        growth_interval: 3,
        ..LossScaling::default()
    };
    for cfg in [
        OptimConfig::adam(0.01),
        OptimConfig::adamw(0.01).clip_grad_norm(0.5),
        OptimConfig::sgd(0.05).momentum(0.9),
    ] {
        let (plain, _) = scaled_run(&dev, cfg, &ps, None, 7);
        let (scaled, opt) = scaled_run(&dev, cfg, &ps, Some(scaling), 7);
        assert_eq!(plain, scaled, "{cfg:?}");
        // 7 clean steps: grown at steps 3 and 6.
        assert_eq!(opt.loss_scale().unwrap(), Some((4096.0, 0)), "{cfg:?}");
    }
}

/// On overflow the step is skipped (the parameters untouched) and the scale backs off,
/// until it is small enough; nothing is read back to decide.
#[test]
fn loss_scaling_skips_overflowing_steps_and_backs_off() {
    // Its own device: the readback count below must not see other tests' work.
    let dev = portagrad::testing::device().expect("device");
    let ps = params(&[&[8]], 901);
    // Gradients c·p + d of size about 1: their squares times 2^140 overflow f32 (the sum of
    // squares of the scaled gradients passes 3.4e38), down to about 2^62.
    let scaling = LossScaling {
        init_scale: 2f32.powi(70),
        ..LossScaling::default()
    };
    let (ts, mut opt) = gpu_setup(&dev, OptimConfig::adam(0.01), &vec![(0.0, 1.0)], &ps);
    opt.enable_loss_scaling(scaling).unwrap();
    let before = bits(&ts);
    let loss = gpu_loss(&dev, &ps, &ts).unwrap();
    let grads = opt.scale_loss(&loss).unwrap().backward().unwrap();
    dev.reset_stats();
    opt.step(&grads).unwrap();
    assert_eq!(
        dev.stats().readbacks,
        0,
        "the overflow is handled on the device"
    );
    assert_eq!(
        bits(&ts),
        before,
        "an overflowing step changes no parameter"
    );
    assert_eq!(opt.loss_scale().unwrap(), Some((2f32.powi(69), 1)));
    let mut updated = 0;
    for _ in 0..12 {
        let loss = gpu_loss(&dev, &ps, &ts).unwrap();
        let grads = opt.scale_loss(&loss).unwrap().backward().unwrap();
        let prev = bits(&ts);
        opt.step(&grads).unwrap();
        if bits(&ts) != prev {
            updated += 1;
        }
    }
    let (scale, skipped) = opt.loss_scale().unwrap().unwrap();
    assert!(
        scale < 2f32.powi(64) && scale >= 2f32.powi(60),
        "scale {scale}"
    );
    assert_eq!(
        updated + skipped as usize,
        13,
        "every step is either applied or skipped"
    );
    assert!(
        updated >= 4 && skipped >= 5,
        "{updated} applied, {skipped} skipped"
    );
    assert!(
        bits(&ts)
            .iter()
            .flatten()
            .all(|&b| f32::from_bits(b).is_finite())
    );
    // Bad settings are errors.
    let bad = LossScaling {
        backoff_factor: 1.5,
        ..LossScaling::default()
    };
    assert!(opt.enable_loss_scaling(bad).is_err());
}

/// One loss-scaled step; an overflowing one when `overflow` (the loss times f32::MAX: every
/// scaled gradient is infinite).
fn scaled_step(dev: &Device, ps: &[Param], ts: &[Tensor], opt: &mut Optimizer, overflow: bool) {
    let mut loss = gpu_loss(dev, ps, ts).unwrap();
    if overflow {
        loss = loss.mul_scalar(f32::MAX).unwrap();
    }
    let grads = opt.scale_loss(&loss).unwrap().backward().unwrap();
    opt.step(&grads).unwrap();
}

/// A skipped (overflowing) step does not advance Adam's bias correction nor SGD's first
/// momentum step (PyTorch's GradScaler with fused Adam): `skips` overflows followed by clean
/// steps give exactly the clean steps alone, started at the scale the overflows backed off to.
/// Past the 8 skip counts whose constants the host passes, the kernel's f32 bias corrections
/// keep the parameters within a few ulps of them.
#[test]
fn skipped_steps_do_not_advance_the_step_count() {
    let dev = shared_device();
    let ps = params(&[&[5, 7], &[13]], 902);
    for cfg in [
        OptimConfig::adam(0.01),
        OptimConfig::adamw(0.01)
            .weight_decay(0.1)
            .clip_grad_norm(0.5),
        OptimConfig::sgd(0.05).momentum(0.9),
    ] {
        for skips in [1usize, 3, 11] {
            let scaling = LossScaling {
                init_scale: 2f32.powi(20),
                growth_interval: 2,
                ..LossScaling::default()
            };
            let (ts, mut opt) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
            opt.enable_loss_scaling(scaling).unwrap();
            for _ in 0..skips {
                scaled_step(&dev, &ps, &ts, &mut opt, true);
            }
            let clean = LossScaling {
                init_scale: 2f32.powi(20 - skips as i32),
                ..scaling
            };
            let (ts2, mut opt2) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
            opt2.enable_loss_scaling(clean).unwrap();
            for step in 0..5 {
                scaled_step(&dev, &ps, &ts, &mut opt, false);
                scaled_step(&dev, &ps, &ts2, &mut opt2, false);
                let (a, b) = (bits(&ts), bits(&ts2));
                if skips <= 8 || matches!(cfg.algorithm, portagrad::optim::Algorithm::Sgd { .. }) {
                    assert_eq!(a, b, "{cfg:?}, {skips} skipped, clean step {step}");
                } else {
                    // The kernel's f32 bias corrections (a few ulps from the host's f64
                    // ones) carried through 5 steps of size ~lr: a few ulps of the parameters.
                    let mut worst = 0f32;
                    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                        let (x, y) = (f32::from_bits(*x), f32::from_bits(*y));
                        assert!(
                            (x - y).abs() <= 4.0 * f32::EPSILON * x.abs().max(1.0),
                            "{cfg:?}, {skips} skipped: {x} vs {y}"
                        );
                        worst = worst.max((x - y).abs());
                    }
                    eprintln!("{skips} skipped, clean step {step}: worst difference {worst:.2e}");
                }
            }
            let (s1, k1) = opt.loss_scale().unwrap().unwrap();
            let (s2, k2) = opt2.loss_scale().unwrap().unwrap();
            assert_eq!((s1, k1), (s2, k2 + skips as u64), "{cfg:?}");
        }
    }
}

/// A checkpoint keeps the loss scale, its growth tracker and the skipped count: a run resumed
/// from it (after overflows) is bit-exact with the straight run. A file without them (from an
/// optimizer without loss scaling, as older files) still loads; a file with them does not load
/// into an optimizer without loss scaling.
#[test]
fn loss_scaling_state_survives_a_checkpoint() {
    use portagrad::io::checkpoint;
    let dev = shared_device();
    let ps = params(&[&[5, 7], &[13]], 903);
    let cfg = OptimConfig::adamw(0.01).weight_decay(0.1);
    let scaling = LossScaling {
        init_scale: 2f32.powi(20),
        growth_interval: 3,
        ..LossScaling::default()
    };
    // Overflow at steps 1, 2 and 6: the scale backs off, grows, backs off again.
    let overflow = |i: usize| [0, 1, 5].contains(&i);
    let named = |ts: &[Tensor]| -> Vec<(String, Tensor)> {
        ps.iter()
            .zip(ts)
            .map(|(p, t)| (p.name.clone(), t.clone()))
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("portagrad-optim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let (ts, mut opt) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
    opt.enable_loss_scaling(scaling).unwrap();
    for i in 0..10 {
        if i == 4 {
            checkpoint::save_params(&path, &named(&ts), Some(&opt)).unwrap();
        }
        scaled_step(&dev, &ps, &ts, &mut opt, overflow(i));
    }
    let straight = (bits(&ts), opt.loss_scale().unwrap());
    assert_eq!(straight.1.unwrap().1, 3, "three steps skipped");

    let (ts2, mut opt2) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
    opt2.enable_loss_scaling(scaling).unwrap();
    let info = checkpoint::load_params(&path, &named(&ts2), Some(&mut opt2)).unwrap();
    assert_eq!(info.step, 4);
    for i in 4..10 {
        scaled_step(&dev, &ps, &ts2, &mut opt2, overflow(i));
    }
    assert_eq!((bits(&ts2), opt2.loss_scale().unwrap()), straight);

    // Into an optimizer without loss scaling: an error, nothing changed.
    let (ts3, mut opt3) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
    let before = bits(&ts3);
    let e = checkpoint::load_params(&path, &named(&ts3), Some(&mut opt3)).unwrap_err();
    assert!(e.to_string().contains("loss scal"), "{e}");
    assert_eq!(bits(&ts3), before);

    // A file without loss-scaling state (written without it, like older files) loads into an
    // optimizer with loss scaling, which keeps its own state.
    let plain_path = dir.join("plain.safetensors");
    checkpoint::save_params(&plain_path, &named(&ts3), Some(&opt3)).unwrap();
    let (ts4, mut opt4) = gpu_setup(&dev, cfg, &vec![(0.0, 1.0)], &ps);
    opt4.enable_loss_scaling(scaling).unwrap();
    checkpoint::load_params(&plain_path, &named(&ts4), Some(&mut opt4)).unwrap();
    assert_eq!(opt4.loss_scale().unwrap(), Some((2f32.powi(20), 0)));
    std::fs::remove_dir_all(&dir).ok();
}

/// Multi-tensor apply: one dispatch over all 21 tensors gives the same bits as one dispatch
/// per tensor (and as 4 per dispatch), for AdamW with groups and clipping, Adam with loss
/// scaling (an overflow included) and SGD with momentum; and the step takes 1 update dispatch
/// (3 with the norm pass) where the adapter binds that many buffers.
#[test]
fn one_dispatch_over_all_tensors_matches_one_per_tensor() {
    let dev = shared_device();
    let shapes: Vec<Vec<usize>> = (0..21).map(|i| vec![1 + (i * 37) % 300]).collect();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
    let mut ps = params(&shape_refs, 904);
    for (i, p) in ps.iter_mut().enumerate() {
        p.group = i % 2;
    }
    let groups = vec![(0.1, 1.0), (0.0, 0.5)];
    let most = portagrad::optim::TENSORS_PER_DISPATCH; // clamped to the adapter's limit
    let run = |cfg: OptimConfig, scaling: Option<LossScaling>, per: usize| {
        let (ts, mut opt) = gpu_setup(&dev, cfg, &groups, &ps);
        opt.set_tensors_per_dispatch(per);
        if let Some(s) = scaling {
            opt.enable_loss_scaling(s).unwrap();
        }
        let mut out = Vec::new();
        for step in 0..4 {
            scaled_step(&dev, &ps, &ts, &mut opt, scaling.is_some() && step == 1);
            out.push(bits(&ts));
        }
        out
    };
    for (cfg, scaling) in [
        (OptimConfig::adamw(0.01).clip_grad_norm(0.5), None),
        (OptimConfig::adam(0.01), Some(LossScaling::default())),
        (OptimConfig::sgd(0.05).momentum(0.9).nesterov(true), None),
    ] {
        let one = run(cfg, scaling, 1);
        assert_eq!(run(cfg, scaling, 4), one, "{cfg:?}: 4 per dispatch");
        assert_eq!(run(cfg, scaling, most), one, "{cfg:?}: {most} per dispatch");
    }
    // Dispatches per step as wide as this adapter binds (its own device: the counters see
    // only this step).
    let own = portagrad::testing::device().unwrap();
    let ts: Vec<Tensor> = ps
        .iter()
        .map(|p| {
            Tensor::from_slice(&own, &p.init, &p.shape)
                .unwrap()
                .with_grad()
        })
        .collect();
    let named = ps
        .iter()
        .zip(&ts)
        .map(|(p, t)| (p.name.clone(), t.clone()))
        .collect();
    let mut opt = Optimizer::new(OptimConfig::adamw(0.01).clip_grad_norm(1.0), named).unwrap();
    opt.set_tensors_per_dispatch(most);
    let per = opt.tensors_per_dispatch();
    let grads = gpu_loss(&own, &ps, &ts).unwrap().backward().unwrap();
    opt.step(&grads).unwrap();
    own.sync().unwrap();
    own.reset_stats();
    opt.step(&grads).unwrap();
    let passes = 21usize.div_ceil(per);
    assert_eq!(
        own.stats().dispatches as usize,
        2 * passes + 1,
        "{per} per dispatch"
    );
    // 21 parameters, 21 gradients, m, v, aux.
    if own.info().max_storage_buffers_per_stage >= 45 {
        assert_eq!(
            own.stats().dispatches,
            3,
            "one sum-of-squares pass, finalize, one update"
        );
    }
}
