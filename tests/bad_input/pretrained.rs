//! Pretrained directories (`models::load_pretrained`): missing files, hostile safetensors,
//! malformed config.json, tensors that do not fit the config, and what cannot be saved.

use std::path::{Path, PathBuf};

use portagrad::Device;
use portagrad::models::{Gpt, load_config, load_pretrained, save_pretrained, save_tensors};
use portagrad::testing::shared_device;
use safetensors::Dtype;

use crate::hostile::hostile_safetensors;
use crate::{Corpus, err, ok, safetensors_bytes, tiny_cfg, tmp_dir};

/// A tiny GPT saved with `save_pretrained` to a directory of its own, with the text and bytes
/// of its two files (each case that breaks them restores them).
struct Saved {
    dir: PathBuf,
    model: Gpt,
    cfg_text: String,
    st_bytes: Vec<u8>,
}

impl Saved {
    fn new(d: &Device, name: &str) -> Saved {
        let dir = tmp_dir(name);
        let model = Gpt::new(d, tiny_cfg(), 0).unwrap();
        save_pretrained(&model, &dir).unwrap();
        let cfg_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let st_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        Saved {
            dir,
            model,
            cfg_text,
            st_bytes,
        }
    }

    /// Put both files back as saved.
    fn restore(&self) {
        std::fs::write(self.dir.join("config.json"), &self.cfg_text).unwrap();
        std::fs::write(self.dir.join("model.safetensors"), &self.st_bytes).unwrap();
    }

    /// model.safetensors as saved, plus a tensor `name` of 4 f32 zeros.
    fn write_with_extra(&self, name: &str) {
        let data = vec![0u8; 16];
        let st = safetensors::SafeTensors::deserialize(&self.st_bytes).unwrap();
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
        views.push((
            name.into(),
            safetensors::tensor::TensorView::new(Dtype::F32, vec![4], &data).unwrap(),
        ));
        std::fs::write(
            self.dir.join("model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Malformed or disagreeing config.json texts, each with the words its error must contain.
fn bad_configs(cfg_text: &str) -> Vec<(&'static str, String, Vec<&'static str>)> {
    let v: serde_json::Value = serde_json::from_str(cfg_text).unwrap();
    let with = |key: &str, val: serde_json::Value| {
        let mut v = v.clone();
        v[key] = val;
        v.to_string()
    };
    let without = |key: &str| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };
    use serde_json::json;
    vec![
        ("empty config.json", String::new(), vec!["JSON"]),
        (
            "config.json not JSON",
            "{\"n_layer\": ".into(),
            vec!["JSON"],
        ),
        ("config.json an array", "[]".into(), vec!["missing"]),
        ("config.json null", "null".into(), vec!["missing"]),
        ("n_layer missing", without("n_layer"), vec!["n_layer"]),
        (
            "n_layer a string",
            with("n_layer", json!("1")),
            vec!["n_layer", "positive integer"],
        ),
        (
            "n_layer negative",
            with("n_layer", json!(-1)),
            vec!["n_layer"],
        ),
        ("n_layer 1.5", with("n_layer", json!(1.5)), vec!["n_layer"]),
        ("n_head 0", with("n_head", json!(0)), vec!["n_head"]),
        (
            "n_head not dividing n_embd",
            with("n_head", json!(3)),
            vec!["multiple"],
        ),
        (
            "vocab_size 1e30",
            with("vocab_size", json!(1e30)),
            vec!["vocab_size"],
        ),
        (
            "n_positions and n_ctx missing",
            without("n_positions").replace("\"n_ctx\"", "\"n_cx\""),
            vec!["n_positions"],
        ),
        (
            "activation relu",
            with("activation_function", json!("relu")),
            vec!["activation_function"],
        ),
        (
            "layer_norm_epsilon negative",
            with("layer_norm_epsilon", json!(-1.0)),
            vec!["epsilon"],
        ),
        (
            "resid_pdrop 1.5",
            with("resid_pdrop", json!(1.5)),
            vec!["dropout"],
        ),
        // Sizes that disagree with the tensors: caught when shapes are compared, before the
        // host builds anything of the config's size.
        (
            "vocab_size u64-sized",
            with("vocab_size", json!(1u64 << 62)),
            vec!["out of range"],
        ),
        (
            "n_embd larger than the tensors",
            with("n_embd", json!(8)),
            vec!["shape"],
        ),
        (
            "n_layer larger than the tensors",
            with("n_layer", json!(2)),
            vec!["missing"],
        ),
        (
            "n_layer smaller than the tensors",
            with("n_layer", json!(0)),
            vec!["n_layer"],
        ),
    ]
}

/// Writes `model.safetensors` with one tensor per parameter of `tiny_cfg`, its dtype, shape and
/// bytes per element made by `f` (`None` leaves the tensor out).
fn write_tensors_to(dir: &Path, f: &dyn Fn(&str, &[usize]) -> Option<(Dtype, Vec<usize>, usize)>) {
    let cfgd = tiny_cfg();
    let shapes = Gpt::parameter_shapes(&cfgd);
    let host: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = shapes
        .iter()
        .filter_map(|(n, s)| {
            f(n, s).map(|(dt, shape, bytes_per)| {
                let n_el: usize = shape.iter().product();
                (n.clone(), dt, shape, vec![0u8; n_el * bytes_per])
            })
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(&host)).unwrap();
}

#[test]
fn missing_files() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/missing");
    let s = Saved::new(d, "pretrained-missing");
    let dir = &s.dir;
    let restore = || s.restore();
    c.case("pretrained: the good directory loads", || {
        ok(load_pretrained(d, dir)).map(|_| ())
    });
    c.case("pretrained: missing directory", || {
        err(
            load_pretrained(d, &dir.join("nope")),
            "Io",
            &["config.json"],
        )
    });
    c.case("pretrained: missing model.safetensors", || {
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let r = err(load_pretrained(d, dir), "Io", &["model.safetensors"]);
        restore();
        r
    });
    c.case("load_config of a missing file", || {
        err(load_config(&dir.join("none.json")), "Io", &["none.json"])
    });
    c.finish();
}

#[test]
fn hostile_safetensors_bytes() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/hostile");
    let s = Saved::new(d, "pretrained-hostile");
    let dir = &s.dir;
    let restore = || s.restore();
    for (name, bytes) in hostile_safetensors(&s.st_bytes) {
        c.case(&format!("pretrained: {name}"), || {
            std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
            let r = err(
                load_pretrained(d, dir),
                "InvalidArgument",
                &["model.safetensors"],
            );
            restore();
            r
        });
    }
    c.finish();
}

#[test]
fn malformed_config_json() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/config");
    let s = Saved::new(d, "pretrained-config");
    let dir = &s.dir;
    let restore = || s.restore();
    for (name, text, words) in bad_configs(&s.cfg_text) {
        c.case(&format!("pretrained: {name}"), || {
            std::fs::write(dir.join("config.json"), &text).unwrap();
            let r = err(
                load_pretrained(d, dir).map(|_| ()),
                "InvalidArgument",
                &words,
            );
            restore();
            r
        });
    }
    c.finish();
}

#[test]
fn tensor_dtypes() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/dtypes");
    let s = Saved::new(d, "pretrained-dtypes");
    let dir = &s.dir;
    let restore = || s.restore();
    let write_tensors =
        |f: &dyn Fn(&str, &[usize]) -> Option<(Dtype, Vec<usize>, usize)>| write_tensors_to(dir, f);
    for (name, dtype, bpe, words) in [
        (
            "I64 tensors",
            Dtype::I64,
            8,
            vec!["I64", "F32, F16 or BF16"],
        ),
        ("U8 tensors", Dtype::U8, 1, vec!["U8"]),
        ("F64 tensors", Dtype::F64, 8, vec!["F64"]),
        ("BOOL tensors", Dtype::BOOL, 1, vec!["BOOL"]),
    ] {
        c.case(&format!("pretrained: {name}"), || {
            write_tensors(&|_, s| Some((dtype, s.to_vec(), bpe)));
            let r = err(
                load_pretrained(d, dir).map(|_| ()),
                "InvalidArgument",
                &words,
            );
            restore();
            r
        });
    }
    c.case("pretrained: F16 and BF16 tensors load", || {
        write_tensors(&|n, s| {
            Some((
                if n.contains("wte") {
                    Dtype::BF16
                } else {
                    Dtype::F16
                },
                s.to_vec(),
                2,
            ))
        });
        let r = ok(load_pretrained(d, dir)).map(|_| ());
        restore();
        r
    });
    c.finish();
}

#[test]
fn tensors_that_do_not_fit_the_config() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/tensors");
    let s = Saved::new(d, "pretrained-tensors");
    let dir = &s.dir;
    let restore = || s.restore();
    let write_tensors =
        |f: &dyn Fn(&str, &[usize]) -> Option<(Dtype, Vec<usize>, usize)>| write_tensors_to(dir, f);
    c.case("pretrained: a tensor missing", || {
        write_tensors(&|n, s| (!n.contains("c_fc.bias")).then(|| (Dtype::F32, s.to_vec(), 4)));
        let r = err(
            load_pretrained(d, dir).map(|_| ()),
            "InvalidArgument",
            &["c_fc.bias", "missing"],
        );
        restore();
        r
    });
    c.case("pretrained: a tensor of the wrong shape", || {
        write_tensors(&|n, s| {
            let mut s = s.to_vec();
            if n.contains("wpe") {
                s[0] += 1;
            }
            Some((Dtype::F32, s, 4))
        });
        let r = err(
            load_pretrained(d, dir).map(|_| ()),
            "InvalidArgument",
            &["wpe", "config.json"],
        );
        restore();
        r
    });
    c.finish();
}

#[test]
fn extra_tensors() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/extra");
    let s = Saved::new(d, "pretrained-extra");
    let dir = &s.dir;
    let restore = || s.restore();
    c.case("pretrained: an extra tensor", || {
        s.write_with_extra("transformer.h.7.mlp.c_fc.weight");
        let r = err(
            load_pretrained(d, dir).map(|_| ()),
            "InvalidArgument",
            &["h.7"],
        );
        restore();
        r
    });
    c.case("pretrained: lm_head of the wrong shape", || {
        s.write_with_extra("lm_head.weight");
        let r = err(
            load_pretrained(d, dir).map(|_| ()),
            "InvalidArgument",
            &["lm_head"],
        );
        restore();
        r
    });
    c.finish();
}

#[test]
fn what_cannot_be_saved() {
    let dev = shared_device();
    let d = &dev;
    let mut c = Corpus::new("pretrained/save");
    let s = Saved::new(d, "pretrained-save");
    let (dir, model) = (&s.dir, &s.model);
    c.case("save_tensors to a missing directory", || {
        err(
            save_tensors(&dir.join("no/dir/x.safetensors"), &model.parameters()),
            "Io",
            &["no/dir"],
        )
    });
    c.case("save_pretrained to a file path", || {
        let f = dir.join("config.json");
        err(save_pretrained(model, &f), "Io", &[])
    });
    c.finish();
}
