//! Launcher for `shaders/elementwise.wgsl`: broadcasting binary ops.

use crate::error::{Error, Result};
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor, numel};

pub(crate) const SHADER: Shader = shader(
    "elementwise",
    include_str!("../../../shaders/elementwise.wgsl"),
);

/// Highest rank the strided kernel indexes (`array<vec4<u32>, 2>` in WGSL).
pub(crate) const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    mode: u32,
    nb: u32,
    shape: [u32; MAX_RANK],
    sa: [u32; MAX_RANK],
    sb: [u32; MAX_RANK],
}
const _: () = assert!(std::mem::size_of::<Params>() == 112);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Same4 {
    n4: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Same4>() == 16);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub(crate) fn entry(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
        }
    }
    /// The vec4 form, for same-shape operands whose length is a multiple of 4.
    pub(crate) fn entry4(self) -> &'static str {
        match self {
            Op::Add => "add4",
            Op::Sub => "sub4",
            Op::Mul => "mul4",
            Op::Div => "div4",
        }
    }
}

/// NumPy broadcasting: align trailing dims; each pair must match or one must be 1.
pub(crate) fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::Shape {
                    op,
                    message: format!(
                        "shapes {a:?} and {b:?} do not broadcast (dim {i}: {da} vs {db})"
                    ),
                });
            }
        };
    }
    Ok(out)
}

/// Strides of `shape` (row-major) seen from the broadcast `out` shape: 0 on broadcast dims.
fn strides_in(shape: &[usize], out: &[usize]) -> [u32; MAX_RANK] {
    let mut s = [0u32; MAX_RANK];
    let off = out.len() - shape.len();
    let mut stride = 1usize;
    for d in (0..shape.len()).rev() {
        if shape[d] != 1 {
            s[d + off] = stride as u32;
        }
        stride *= shape[d];
    }
    s
}

/// True when `small` repeats whole over `out`: `out == lead ++ small` after dropping leading 1s.
fn is_suffix(small: &[usize], out: &[usize]) -> bool {
    let s: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
    s.len() <= out.len() && out[out.len() - s.len()..] == s[..]
}

pub(crate) fn binary(a: &Tensor, b: &Tensor, op: Op) -> Result<Tensor> {
    let name = op.entry();
    a.expect_dtype(name, DType::F32)?;
    b.expect_dtype(name, DType::F32)?;
    a.same_device(name, b)?;
    let out_shape = broadcast_shape(name, &a.shape, &b.shape)?;
    if out_shape.len() > MAX_RANK {
        return Err(Error::Shape {
            op: name,
            message: format!("rank {} exceeds the maximum of {MAX_RANK}", out_shape.len()),
        });
    }
    let out = Tensor::empty(&a.dev, name, &out_shape, DType::F32)?;
    let n = numel(&out_shape);
    let bindings = [
        (&*a.storage, Access::Read),
        (&*b.storage, Access::Read),
        (&*out.storage, Access::ReadWrite),
    ];
    if a.numel() == n && b.numel() == n && n.is_multiple_of(4) {
        let p = Same4 {
            n4: (n / 4) as u32,
            _pad: [0; 3],
        };
        // a, b, out: (n / 4) vec4
        a.dev
            .dispatch(&SHADER, op.entry4(), &[], &p, &bindings, elems_grid(n / 4)?)?;
        return Ok(out);
    }
    let mut p = Params {
        n: n as u32,
        rank: out_shape.len() as u32,
        mode: 0,
        nb: 0,
        shape: [1; MAX_RANK],
        sa: strides_in(&a.shape, &out_shape),
        sb: strides_in(&b.shape, &out_shape),
    };
    for (i, &d) in out_shape.iter().enumerate() {
        p.shape[i] = d as u32;
    }
    // Cheaper index math for the common layouts.
    if a.numel() == n && b.numel() == n {
        p.mode = 1;
    } else if a.numel() == n && is_suffix(&b.shape, &out_shape) {
        p.mode = 2;
        p.nb = b.numel() as u32;
    } else if b.numel() == n && is_suffix(&a.shape, &out_shape) {
        p.mode = 3;
        p.nb = a.numel() as u32;
    }
    // a, b: broadcastable to out -> out: (out_shape); the mode is also a pipeline constant
    a.dev.dispatch(
        &SHADER,
        name,
        &[("MODE", f64::from(p.mode))],
        &p,
        &bindings,
        elems_grid(n)?,
    )?;
    Ok(out)
}

/// Broadcast `x` to `shape` (NumPy rules), multiplying by `scale`.
pub(crate) fn expand(x: &Tensor, shape: &[usize], scale: f32) -> Result<Tensor> {
    let out_shape = broadcast_shape("broadcast_to", &x.shape, shape)?;
    if out_shape != shape {
        return Err(Error::Shape {
            op: "broadcast_to",
            message: format!("{:?} does not broadcast to {shape:?}", x.shape),
        });
    }
    if shape.len() > MAX_RANK {
        return Err(Error::Shape {
            op: "broadcast_to",
            message: format!("rank {} exceeds the maximum of {MAX_RANK}", shape.len()),
        });
    }
    let out = Tensor::empty(&x.dev, "broadcast_to", shape, DType::F32)?;
    let n = numel(shape);
    let mut p = Params {
        n: n as u32,
        rank: shape.len() as u32,
        mode: 0,
        nb: scale.to_bits(),
        shape: [1; MAX_RANK],
        sa: strides_in(&x.shape, shape),
        sb: [0; MAX_RANK],
    };
    for (i, &d) in shape.iter().enumerate() {
        p.shape[i] = d as u32;
    }
    // Cheaper index math for the common layouts (see `expand` in the shader).
    let nx = x.numel();
    let lead = shape.len() - x.shape.len();
    let padded: Vec<usize> = std::iter::repeat_n(1, lead)
        .chain(x.shape.iter().copied())
        .collect();
    // Dims of `x` kept before the first broadcast one; all broadcast after it?
    let k = padded
        .iter()
        .zip(shape)
        .position(|(a, b)| a != b)
        .unwrap_or(shape.len());
    if nx == 0 {
        // Nothing to read (and nothing to write: n == 0 too).
    } else if nx == 1 {
        p.mode = 4;
    } else if padded[k..].iter().all(|&d| d == 1) {
        p.mode = 5;
        p.sb[0] = (n / nx) as u32;
    } else if is_suffix(&x.shape, shape) {
        p.mode = 2;
        p.sb[0] = nx as u32;
    }
    // x: broadcastable -> out: (shape); b is bound to x as an unused placeholder
    x.dev.dispatch(
        &SHADER,
        "expand",
        &[("MODE", f64::from(p.mode))],
        &p,
        &[
            (&x.storage, Access::Read),
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    Ok(out)
}
