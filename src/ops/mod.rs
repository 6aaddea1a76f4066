//! The op families. Each `ops/<family>/` holds `mod.rs` (the `Tensor` methods and their
//! backward), `launch.rs` (buffers in, dispatch out) and its WGSL in `shaders/<family>*.wgsl`.

pub(crate) mod attention;
pub(crate) mod codegen;
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
pub(crate) mod rows;
pub(crate) mod softmax;
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
    ("matmul", matmul::launch::SHADER.source),
    ("matmul_subgroup", matmul::launch::SUBGROUP_SHADER.source),
    ("norm", norm::launch::SHADER.source),
    ("norm_subgroup", norm::launch::SUBGROUP_SHADER.source),
    ("loss", loss::launch::SHADER.source),
    ("loss_subgroup", loss::launch::SUBGROUP_SHADER.source),
];

/// Invocations per workgroup of the 1-D elementwise kernels (`WG` in their WGSL).
pub(crate) const WG: u64 = 256;

/// Grid for one invocation per element.
pub(crate) fn elems_grid(n: usize) -> Result<[u32; 3]> {
    grid_1d((n as u64).div_ceil(WG))
}

pub(crate) const fn shader(name: &'static str, source: &'static str) -> Shader {
    Shader { name, source }
}

/// A module whose source is generated at run time (per head size, per slot count, ...), built
/// once per (`family`, `key`) and kept for the process: the runtime caches pipelines by
/// `&'static` shader. At most a few dozen per process, so leaking them is bounded. Looked up
/// on every dispatch that uses one, so the lookup allocates nothing.
pub(crate) fn generated_shader(
    family: &'static str,
    key: usize,
    source: impl FnOnce() -> String,
) -> &'static Shader {
    type Entry = (&'static str, usize, &'static Shader);
    static CACHE: std::sync::Mutex<Vec<Entry>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, _, sh)) = cache.iter().find(|(f, k, _)| *f == family && *k == key) {
        return sh;
    }
    let name: &'static str = Box::leak(format!("{family}_{key}").into_boxed_str());
    let source: &'static str = Box::leak(source().into_boxed_str());
    let sh: &'static Shader = Box::leak(Box::new(shader(name, source)));
    cache.push((family, key, sh));
    sh
}
