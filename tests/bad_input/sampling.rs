//! Sampling settings and non-finite logits.

use portagrad::Error;
use portagrad::generate::{Sampler, SamplingConfig};

use crate::{Corpus, ensure, err, ok};

#[test]
fn sampler_settings_out_of_range() {
    let mut c = Corpus::new("sampling/settings");
    for (name, cfg, word) in [
        (
            "temperature NaN",
            SamplingConfig {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        ),
        (
            "temperature -1",
            SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            "top_k 0",
            SamplingConfig {
                top_k: Some(0),
                ..Default::default()
            },
            "top_k",
        ),
        (
            "top_p 0",
            SamplingConfig {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
        ),
        (
            "top_p NaN",
            SamplingConfig {
                top_p: Some(f32::NAN),
                ..Default::default()
            },
            "top_p",
        ),
        (
            "repetition_penalty 0",
            SamplingConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
    ] {
        c.case(&format!("sampler {name}"), || {
            err(Sampler::new(cfg).map(|_| ()), "InvalidArgument", &[word])
        });
    }
    c.case("sampler on no logits", || {
        let mut s = ok(Sampler::new(SamplingConfig::default()))?;
        err(s.sample(&[], &[]), "InvalidArgument", &["no logits"])
    });
    c.finish();
}

#[test]
fn sampler_on_non_finite_logits() {
    let mut c = Corpus::new("sampling/logits");
    for (name, logits) in [
        ("all NaN", vec![f32::NAN; 4]),
        ("one inf", vec![0.0, f32::INFINITY, 0.0]),
        ("all -inf", vec![f32::NEG_INFINITY; 3]),
    ] {
        for temperature in [0.0, 1.0] {
            c.case(
                &format!("sampler logits {name} at temperature {temperature}"),
                || {
                    let mut s = ok(Sampler::new(SamplingConfig {
                        temperature,
                        top_k: Some(2),
                        top_p: Some(0.9),
                        ..Default::default()
                    }))?;
                    // A token or an error, never a panic; a token must be in range.
                    match s.sample(&logits, &[0, 7]) {
                        Ok(id) => ensure((id as usize) < logits.len(), || {
                            format!("token {id} out of range")
                        }),
                        Err(e) => ensure(matches!(e, Error::InvalidArgument { .. }), || {
                            format!("{e:?}")
                        }),
                    }
                },
            );
        }
    }
    c.finish();
}
