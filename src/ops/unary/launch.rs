//! Launcher for `shaders/unary.wgsl`: elementwise maps and scalar ops.

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("unary", include_str!("../../../shaders/unary.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: u32,
    s: f32,
    _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// The unary ops; each is its own entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    AddScalar,
    MulScalar,
    Neg,
    Exp,
    Log,
    Sqrt,
    PowScalar,
    Relu,
    Gelu,
    Sigmoid,
    Tanh,
}

/// Each op's entry points: scalar and vec4 forward, scalar and vec4 backward. One table of
/// literals, so no entry name is built at dispatch time.
macro_rules! entries {
    ($($op:ident => $fwd:literal, $back:literal;)*) => {
        impl Op {
            pub(crate) fn entry(self) -> &'static str {
                match self { $(Op::$op => $fwd,)* }
            }
            /// The vec4 form, for element counts that are a multiple of 4.
            pub(crate) fn entry4(self) -> &'static str {
                match self { $(Op::$op => concat!($fwd, "4"),)* }
            }
            pub(crate) fn backward_entry(self) -> &'static str {
                match self { $(Op::$op => concat!($back, "_backward"),)* }
            }
            pub(crate) fn backward_entry4(self) -> &'static str {
                match self { $(Op::$op => concat!($back, "_backward4"),)* }
            }
        }
    };
}

// Forward names that clash with WGSL built-ins end in `_`; their backward names do not.
entries! {
    AddScalar => "add_scalar", "add_scalar";
    MulScalar => "mul_scalar", "mul_scalar";
    Neg => "neg", "neg";
    Exp => "exp_", "exp";
    Log => "log_", "log";
    Sqrt => "sqrt_", "sqrt";
    PowScalar => "pow_scalar", "pow_scalar";
    Relu => "relu", "relu";
    Gelu => "gelu", "gelu";
    Sigmoid => "sigmoid", "sigmoid";
    Tanh => "tanh_", "tanh";
}

pub(crate) fn unary(x: &Tensor, op: Op, s: f32) -> Result<Tensor> {
    x.expect_dtype(op.entry(), DType::F32)?;
    let out = Tensor::empty(&x.dev, op.entry(), &x.shape, DType::F32)?;
    let n = x.numel();
    let p = Params {
        n: n as u32,
        _pad: 0,
        s,
        _pad2: 0,
    };
    let bindings = [
        (&*x.storage, Access::Read),
        (&*out.storage, Access::ReadWrite),
    ];
    if n.is_multiple_of(4) {
        // x, out: (n / 4) vec4
        x.dev
            .dispatch(&SHADER, op.entry4(), &[], &p, &bindings, elems_grid(n / 4)?)?;
    } else {
        // x: (n) -> out: (n)
        x.dev
            .dispatch(&SHADER, op.entry(), &[], &p, &bindings, elems_grid(n)?)?;
    }
    Ok(out)
}

/// Gradient of a unary op: `g * f'(saved)`, where `saved` is the forward input or output
/// (as the op's formula needs: see `dapply` in the shader).
pub(crate) fn backward(op: Op, saved: &Tensor, g: &Tensor, s: f32) -> Result<Tensor> {
    let out = Tensor::empty(&g.dev, "backward", &g.shape, DType::F32)?;
    let n = g.numel();
    let p = Params {
        n: n as u32,
        _pad: 0,
        s,
        _pad2: 0,
    };
    let bindings = [
        (&*saved.storage, Access::Read),
        (&*g.storage, Access::Read),
        (&*out.storage, Access::ReadWrite),
    ];
    if n.is_multiple_of(4) {
        // saved, g, out: (n / 4) vec4 (on lavapipe a quarter of the storage accesses)
        g.dev.dispatch(
            &SHADER,
            op.backward_entry4(),
            &[],
            &p,
            &bindings,
            elems_grid(n / 4)?,
        )?;
    } else {
        // saved, g: (n) -> out: (n)
        g.dev.dispatch(
            &SHADER,
            op.backward_entry(),
            &[],
            &p,
            &bindings,
            elems_grid(n)?,
        )?;
    }
    Ok(out)
}
