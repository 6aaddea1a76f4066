//! The op families. Each `ops/<family>/` holds `mod.rs` (the `Tensor` methods and their
//! backward), `launch.rs` (buffers in, dispatch out) and its WGSL in `shaders/<family>*.wgsl`.

pub(crate) mod attention;
pub(crate) mod codegen;
pub(crate) mod convert;
pub(crate) mod copy;
pub(crate) mod elementwise;
pub(crate) mod init;
pub(crate) mod layout;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod overrides;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod rows;
pub(crate) mod softmax;
pub(crate) mod swiglu;
pub(crate) mod unary;

use crate::error::Result;
use crate::runtime::{Shader, grid_1d};

/// Every shader of the crate, for the naga validation test.
pub const SHADERS: &[(&str, &str)] = &[
    ("elementwise", elementwise::launch::SHADER.source),
    ("unary", unary::launch::SHADER.source),
    ("init", init::launch::SHADER.source),
    ("reduce", reduce::launch::SHADER.source),
    ("reduce_subgroup", reduce::launch::SUBGROUP_SHADER.source),
    ("softmax", softmax::launch::SHADER.source),
    ("softmax_subgroup", softmax::launch::SUBGROUP_SHADER.source),
    ("layout", layout::launch::SHADER.source),
    ("attention", attention::launch::SHADER.source),
    ("attention_tiled", attention::launch::TILED_SHADER.source),
    ("optim", optim::launch::SHADER.source),
    ("copy", copy::launch::SHADER.source),
    ("convert", convert::launch::SHADER.source),
    ("matmul", matmul::launch::SHADER.source),
    ("matmul_subgroup", matmul::launch::SUBGROUP_SHADER.source),
    ("norm", norm::launch::SHADER.source),
    ("norm_subgroup", norm::launch::SUBGROUP_SHADER.source),
    ("loss", loss::launch::SHADER.source),
    ("loss_subgroup", loss::launch::SUBGROUP_SHADER.source),
    ("norm_rms", norm::launch::RMS_SHADER.source),
    (
        "norm_rms_subgroup",
        norm::launch::RMS_SUBGROUP_SHADER.source,
    ),
    ("rope", rope::launch::SHADER.source),
    ("swiglu", swiglu::launch::SHADER.source),
];

/// The override constants of one dispatch, at most `N`, without a heap allocation (they are
/// built on every dispatch). Derefs to the slice `Device::dispatch` takes.
pub(crate) struct Constants<const N: usize> {
    c: [(&'static str, f64); N],
    n: usize,
}

impl<const N: usize> Constants<N> {
    pub(crate) fn new() -> Self {
        Constants {
            c: [("", 0.0); N],
            n: 0,
        }
    }

    /// Add `name = value` (a launcher sets at most `N`: more is a bug in the launcher).
    pub(crate) fn push(&mut self, name: &'static str, value: f64) {
        debug_assert!(self.n < N, "more than {N} override constants");
        if self.n < N {
            self.c[self.n] = (name, value);
            self.n += 1;
        }
    }
}

impl<const N: usize> std::ops::Deref for Constants<N> {
    type Target = [(&'static str, f64)];
    fn deref(&self) -> &Self::Target {
        &self.c[..self.n]
    }
}

/// Invocations per workgroup of the 1-D elementwise kernels (`WG` in their WGSL).
pub(crate) const WG: u64 = 256;

/// Grid for one invocation per element.
pub(crate) fn elems_grid(n: usize) -> Result<[u32; 3]> {
    grid_1d((n as u64).div_ceil(WG))
}

/// A WGSL file of the crate, registered under its name.
pub(crate) const fn shader(name: &'static str, source: &'static str) -> Shader {
    Shader::fixed(name, source)
}

/// A module whose source is generated at run time (per head size, per slot count, ...),
/// built once per (`family`, `key`) in the runtime's one shader registry and kept for the
/// process. Looked up on every dispatch that uses one, so the lookup allocates nothing.
pub(crate) fn generated_shader(
    family: &'static str,
    key: usize,
    source: impl FnOnce() -> String,
) -> &'static Shader {
    crate::runtime::generated_shader(family, key, source)
}
