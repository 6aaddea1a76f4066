//! The GPT model: config, sizes, forward, loss, generation, parameters.

use std::panic::{AssertUnwindSafe, catch_unwind};

use portagrad::Error;
use portagrad::generate::{Sampler, SamplingConfig};
use portagrad::models::{Gpt, GptConfig};
use portagrad::testing::shared_device;

use crate::{Corpus, ensure, err, ids, limit, ok, t, tiny_cfg};

#[test]
fn config_fields_out_of_range() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt/config");
    for (name, cfg, word) in [
        (
            "n_layer 0",
            GptConfig {
                n_layer: 0,
                ..tiny_cfg()
            },
            "positive",
        ),
        (
            "n_head 0",
            GptConfig {
                n_head: 0,
                ..tiny_cfg()
            },
            "positive",
        ),
        (
            "n_embd not a multiple of n_head",
            GptConfig {
                n_head: 3,
                ..tiny_cfg()
            },
            "multiple",
        ),
        (
            "ln_eps NaN",
            GptConfig {
                ln_eps: f32::NAN,
                ..tiny_cfg()
            },
            "epsilon",
        ),
        (
            "dropout 1",
            GptConfig {
                dropout: 1.0,
                ..tiny_cfg()
            },
            "dropout",
        ),
        (
            "dropout NaN",
            GptConfig {
                dropout: f32::NAN,
                ..tiny_cfg()
            },
            "dropout",
        ),
    ] {
        c.case(&format!("GptConfig {name}"), || {
            err(Gpt::new(d, cfg, 0).map(|_| ()), "InvalidArgument", &[word])
        });
    }
    c.finish();
}

#[test]
fn sizes_past_the_limit_or_overflowing() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt/sizes");
    // A vocabulary past one binding is held in row chunks; what cannot be split is a layer's
    // matrix. Here c_fc (C, 4C) passes the adapter's limit next to a wte of three bindings'
    // worth: TooLarge naming that matrix, found before anything is allocated (on any adapter:
    // the sizes follow its limit and stay inside GptConfig's bounds).
    c.case(
        "Gpt with a matrix past the adapter limit next to a split vocabulary",
        || {
            let lim = limit(d);
            let c = ((lim / 16) as f64).sqrt() as usize + 1;
            let cfg = GptConfig {
                n_embd: c,
                vocab_size: (3 * lim / (4 * c as u64)) as usize,
                ..tiny_cfg()
            };
            let shape = format!("[{c}, {}]", 4 * c);
            err(
                Gpt::new(d, cfg, 0).map(|_| ()),
                "TooLarge",
                &["Gpt", &shape, "bytes"],
            )
        },
    );
    c.case("Gpt with sizes whose product overflows", || {
        let cfg = GptConfig {
            vocab_size: usize::MAX / 2,
            ..tiny_cfg()
        };
        err(
            Gpt::new(d, cfg, 0).map(|_| ()),
            "InvalidArgument",
            &["out of range"],
        )
    });
    c.finish();
}

#[test]
fn forward_and_loss_ids() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt/forward");
    let model = Gpt::new(d, tiny_cfg(), 0).unwrap();
    let m = &model;
    c.case("forward ids 1-D", || {
        err(
            m.forward(&ids(d, &[0, 1], &[2]), false),
            "Shape",
            &["(B, T)"],
        )
    });
    c.case("forward ids f32", || {
        err(
            m.forward(&t(d, &[0.0; 2], &[1, 2]), false),
            "DType",
            &["u32"],
        )
    });
    c.case("forward id past the vocabulary", || {
        err(
            m.forward(&ids(d, &[0, 5], &[1, 2]), false),
            "InvalidArgument",
            &["5"],
        )
    });
    c.case("forward longer than block_size", || {
        err(
            m.forward(&ids(d, &[0; 5], &[1, 5]), false),
            "Shape",
            &["1..=4"],
        )
    });
    c.case("forward of zero positions", || {
        err(m.forward(&ids(d, &[], &[1, 0]), false), "Shape", &[])
    });
    c.case("forward of zero sequences", || {
        match m.forward(&ids(d, &[], &[0, 2]), false) {
            Ok(l) => ensure(l.numel() == 0, || format!("{:?}", l.shape())),
            Err(e) => err::<()>(Err(e), "Shape", &[]),
        }
    });
    c.case("loss targets of another shape", || {
        err(
            m.loss(
                &ids(d, &[0, 1], &[1, 2]),
                &ids(d, &[0, 1, 2], &[1, 3]),
                false,
            ),
            "Shape",
            &[],
        )
    });
    c.case("loss target past the vocabulary", || {
        err(
            m.loss(&ids(d, &[0, 1], &[1, 2]), &ids(d, &[0, 9], &[1, 2]), false),
            "InvalidArgument",
            &["9"],
        )
    });
    c.finish();
}

#[test]
fn generate_prompts_and_samplers() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt/generate");
    let model = Gpt::new(d, tiny_cfg(), 0).unwrap();
    let m = &model;
    c.case(
        "generate_batch with one empty prompt among good ones",
        || {
            let mut s = ok(Sampler::batch(&SamplingConfig::default(), 2))?;
            err(
                m.generate_batch(
                    &[vec![1], vec![]],
                    &Default::default(),
                    &mut s,
                    &mut |_, _| Ok(true),
                )
                .map(|_| ()),
                "InvalidArgument",
                &["empty"],
            )
        },
    );
    c.case("generate empty prompt", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(
            m.generate(&[], 2, &mut s, &mut |_| Ok(true)),
            "InvalidArgument",
            &["empty"],
        )
    });
    c.case("generate prompt id past the vocabulary", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(
            m.generate(&[1, 99], 2, &mut s, &mut |_| Ok(true)),
            "InvalidArgument",
            &["99"],
        )
    });
    c.case(
        "generate_full_context prompt id past the vocabulary",
        || {
            let mut s = ok(Sampler::new(SamplingConfig::default()))?;
            err(
                m.generate_full_context(&[99], 2, &mut s, &mut |_| Ok(true)),
                "InvalidArgument",
                &["99"],
            )
        },
    );
    c.case("generate_batch sampler count differs", || {
        let mut s = ok(Sampler::batch(&SamplingConfig::default(), 1))?;
        err(
            m.generate_batch(
                &[vec![0], vec![1]],
                &Default::default(),
                &mut s,
                &mut |_, _| Ok(true),
            )
            .map(|_| ()),
            "InvalidArgument",
            &["sampler"],
        )
    });
    c.case("generate_batch no prompts", || {
        err(
            m.generate_batch(&[], &Default::default(), &mut [], &mut |_, _| Ok(true))
                .map(|_| ()),
            "InvalidArgument",
            &[],
        )
    });
    c.finish();
}

#[test]
fn generate_lengths_context_and_callbacks() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt/generate edges");
    let model = Gpt::new(d, tiny_cfg(), 0).unwrap();
    let m = &model;
    c.case("generate max_new 0 gives nothing", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        let out = ok(m.generate(&[1], 0, &mut s, &mut |_| Ok(true)))?;
        ensure(out.is_empty(), || format!("{out:?}"))
    });
    c.case("generate with a prompt past the context is cropped", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        let out = ok(m.generate(&[1; 9], 3, &mut s, &mut |_| Ok(true)))?;
        ensure(out.len() == 3 && out.iter().all(|&i| i < 5), || {
            format!("{out:?}")
        })
    });
    c.case("generate callback error is passed on", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(
            m.generate(&[1], 3, &mut s, &mut |_| {
                Err(Error::InvalidArgument {
                    op: "callback",
                    message: "stop here".into(),
                })
            }),
            "InvalidArgument",
            &["stop here"],
        )
    });
    for keep in [Some(0), Some(1), Some(99), None] {
        c.case(
            &format!("generate past the context with context_keep {keep:?}"),
            || {
                let mut s = ok(Sampler::batch(&SamplingConfig::default(), 1))?;
                let opts = portagrad::models::GenerateOptions {
                    max_new_tokens: 7,
                    stop_token: Some(99),
                    context_keep: keep,
                };
                let g =
                    ok(m.generate_batch(&[vec![1, 2, 3]], &opts, &mut s, &mut |_, _| Ok(true)))?;
                let t = &g.tokens[0];
                ensure(t.len() == 7 && t.iter().all(|&i| i < 5), || {
                    format!("{t:?}")
                })
            },
        );
    }
    c.case(
        "generate with max_new usize::MAX stopped by the callback",
        || {
            let mut s = ok(Sampler::new(SamplingConfig::default()))?;
            let mut n = 0;
            let out = ok(m.generate(&[1], usize::MAX, &mut s, &mut |_| {
                n += 1;
                Ok(n < 3)
            }))?;
            ensure(out.len() == 3, || format!("{out:?}"))
        },
    );
    c.finish();
}

#[test]
fn set_parameter_name_and_shape() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("gpt/set_parameter");
    c.case("set_parameter unknown name", || {
        let mut g = ok(Gpt::new(d, tiny_cfg(), 1))?;
        err(
            g.set_parameter("nope", &t(d, &[0.0], &[1])),
            "InvalidArgument",
            &["nope"],
        )
    });
    c.case("set_parameter wrong shape", || {
        let mut g = ok(Gpt::new(d, tiny_cfg(), 1))?;
        err(
            g.set_parameter("transformer.wte.weight", &t(d, &[0.0; 4], &[1, 4])),
            "Shape",
            &["[1, 4]"],
        )
    });
    c.finish();
}

/// `GptConfig::validate` bounds the sizes (n_layer <= 4096, widths <= 2^24), so a huge
/// `n_layer` is an error before anything is allocated, from `Gpt::new` and from config.json.
#[test]
fn huge_n_layer_is_an_error_not_a_panic() {
    let dev = shared_device();
    let cfg = GptConfig {
        n_layer: 1 << 60,
        ..tiny_cfg()
    };
    let r = catch_unwind(AssertUnwindSafe(|| Gpt::new(&dev, cfg, 0).map(|_| ())));
    match r {
        Ok(r) => assert!(r.is_err(), "a 2^60-layer GPT was built"),
        Err(_) => panic!("Gpt::new panicked on n_layer = 2^60"),
    }
}
