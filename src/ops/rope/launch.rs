//! Launcher for `shaders/rope.wgsl`: rotary embeddings on (B, H, T, D) heads from host-built
//! cos / sin tables, forward (sign 1) and backward (sign -1, the inverse rotation).

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("rope", include_str!("../../../shaders/rope.wgsl"));

/// Matches `struct Rope` in `rope.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    t: u32,
    half: u32,
    offset: u32,
    sign: f32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Rotate `x` (B, H, T, D) by the angles of positions `offset ..`: `cos`, `sin` are
/// (max_positions, D/2). `sign` -1 rotates back (the gradient). Shapes checked by the caller.
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    offset: usize,
    sign: f32,
) -> Result<Tensor> {
    let (t, d) = (x.shape[2], x.shape[3]);
    let half = d / 2;
    let y = Tensor::empty(&x.dev, "rope", &x.shape, DType::F32)?;
    if x.numel() == 0 {
        return Ok(y);
    }
    // Four pairs to an invocation (vec4 loads) when D/2 % 4 == 0.
    let vec4 = half.is_multiple_of(4);
    let unit_half = if vec4 { half / 4 } else { half };
    let n = x.numel() / 2 / (half / unit_half);
    let p = Params {
        n: n as u32,
        t: t as u32,
        half: unit_half as u32,
        offset: offset as u32,
        sign,
        _pad: [0; 3],
    };
    // x: (B, H, T, D), cos, sin: (max_positions, D/2) -> y: (B, H, T, D)
    x.dev.dispatch(
        &SHADER,
        if vec4 { "rope4" } else { "rope" },
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&cos.storage, Access::Read),
            (&sin.storage, Access::Read),
            (&y.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    Ok(y)
}
