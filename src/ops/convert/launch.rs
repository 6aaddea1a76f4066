//! Launcher for `shaders/convert.wgsl`: f32 <-> f16 / bf16 and f16 <-> bf16.

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("convert", include_str!("../../../shaders/convert.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    src: u32,
    dst: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// The kernel's code for a 16-bit type (0 f16, 1 bf16; unused for f32).
fn kind(d: DType) -> u32 {
    u32::from(d == DType::BF16)
}

/// `x` as a new `to` tensor; both float types, different (the caller checks).
pub(crate) fn convert(x: &Tensor, to: DType) -> Result<Tensor> {
    let out = Tensor::empty(&x.dev, "to_dtype", &x.shape, to)?;
    let n = x.numel();
    let p = Params {
        n: n as u32,
        src: kind(x.dtype),
        dst: kind(to),
        _pad: 0,
    };
    let entry = match (x.dtype, to) {
        // x: (n) f32 -> out: (ceil(n / 2)) half pairs
        (DType::F32, _) => "f32_to_half",
        // x: (ceil(n / 2)) half pairs -> out: (n) f32
        (_, DType::F32) => "half_to_f32",
        // x, out: (ceil(n / 2)) half pairs
        _ => "half_to_half",
    };
    // One invocation per 16-bit word pair in every direction.
    let grid = elems_grid(n.div_ceil(2))?;
    x.dev.dispatch(
        &SHADER,
        entry,
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        grid,
    )?;
    Ok(out)
}
